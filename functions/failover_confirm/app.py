"""Failover · ConfirmPrimaryDown: re-probe the Elastic IP (PrimaryStillHealthy on a false alarm) and check
that the standby runs the desired version (StandbyNotReady otherwise)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.events import failover_trigger
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, tracer
from sip_trunk.workflows.common import StepInput
from sip_trunk.workflows.failover import ConfirmInput, confirm


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = StepInput.model_validate(event)
    request = ConfirmInput(execution=step.execution, trigger=failover_trigger(event.get("trigger")))
    plan = confirm(default_deps(), request)
    logger.warning("primary confirmed down; standby ready", extra=plan.model_dump(mode="json"))
    return plan.model_dump(mode="json")
