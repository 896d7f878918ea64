"""Provision · CheckApply: poll the apply command on every host (ApplyFailed on failure or deadline)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, tracer
from sip_trunk.workflows.provision import ApplyCheckInput, check_apply


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = ApplyCheckInput.model_validate(event)
    result = check_apply(default_deps(), request)
    logger.info("apply status", extra=result.model_dump(mode="json"))
    return result.model_dump(mode="json")
