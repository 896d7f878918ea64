"""Provision · RenderConfig: render the Asterisk configuration into the SSM config store and point
`desired-version` at it (the previous pointer is returned so a failure can restore it)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, tracer
from sip_trunk.workflows.common import StepInput
from sip_trunk.workflows.provision import render_config


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    StepInput.model_validate(event)
    result = render_config(default_deps())
    logger.info("config rendered", extra=result.model_dump(mode="json"))
    return result.model_dump(mode="json")
