"""Failover · MoveAddress: associate the Elastic IP with the standby (AllowReassociation), only while
holding the lock, at most once per execution and target."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, run_idempotent, tracer
from sip_trunk.workflows.failover import MoveInput, MoveResult, move_address


def move(request: MoveInput) -> MoveResult:
    return move_address(default_deps(), request)


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = MoveInput.model_validate(event)
    result = run_idempotent(move, request=request, returns=MoveResult, context=context)
    metrics.add_metric(name="ElasticIpMoved", unit=MetricUnit.Count, value=1 if result.moved else 0)
    logger.warning("Elastic IP on standby", extra=result.model_dump(mode="json"))
    return result.model_dump(mode="json")
