"""Provision · ApplyConfig: Run Command `sip-trunk-agent apply --version V` on every host that does not
already run V (nothing is sent when all do)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, tracer
from sip_trunk.workflows.provision import ApplyInput, apply_config


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = ApplyInput.model_validate(event)
    result = apply_config(default_deps(), request)
    logger.info("apply started", extra=result.model_dump(mode="json"))
    return result.model_dump(mode="json")
