"""Failover · SwapRoles: the standby becomes the primary in the state table (conditional on the old primary)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, tracer
from sip_trunk.workflows.failover import MoveInput, swap_roles


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = MoveInput.model_validate(event)
    result = swap_roles(default_deps(), request)
    logger.info("roles swapped", extra=result.model_dump(mode="json"))
    return result.model_dump(mode="json")
