"""Provision · ValidateSettings: parse the settings document and resolve every secret it references."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, tracer
from sip_trunk.workflows.common import StepInput
from sip_trunk.workflows.provision import validate_settings


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = StepInput.model_validate(event)
    result = validate_settings(default_deps())
    logger.info("settings valid", extra={"execution": request.execution.name, "settings": result.name})
    return result.model_dump(mode="json")
