"""Provision · LaunchHost: create or update the host stack from HOST_TEMPLATE_URL (idempotent per execution)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, run_idempotent, tracer
from sip_trunk.workflows.provision import LaunchInput, LaunchResult, launch_host


def launch(request: LaunchInput) -> LaunchResult:
    return launch_host(default_deps(), request)


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = LaunchInput.model_validate(event)
    result = run_idempotent(launch, request=request, returns=LaunchResult, context=context)
    logger.info("host stack launch", extra=result.model_dump(mode="json"))
    return result.model_dump(mode="json")
