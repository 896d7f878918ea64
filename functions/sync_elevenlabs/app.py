"""Provision · SyncElevenLabs: converge the ElevenLabs phone number's trunk onto our Elastic IP, then read it
back (idempotent per execution and version). Without a stored API key it is skipped, with the command that
stores one."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, run_idempotent, tracer
from sip_trunk.workflows.provision import SyncInput, SyncOutcome, sync_elevenlabs


def sync(request: SyncInput) -> SyncOutcome:
    return sync_elevenlabs(default_deps(), request)


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = SyncInput.model_validate(event)
    result = run_idempotent(sync, request=request, returns=SyncOutcome, context=context)
    logger.info(
        f"ElevenLabs number {result.action}" + (f": {result.note}" if result.note else ""),
        extra=result.model_dump(mode="json"),
    )
    return result.model_dump(mode="json")
