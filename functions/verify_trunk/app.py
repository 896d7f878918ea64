"""Provision · VerifyTrunk: hosts report the desired version with the endpoint loaded, and the Elastic IP
answers SIP OPTIONS (TrunkNotVerified until then, VerificationTimedOut after the deadline)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, tracer
from sip_trunk.workflows.provision import VerifyInput, verify_trunk


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = VerifyInput.model_validate(event)
    result = verify_trunk(default_deps(), request)
    metrics.add_metric(name="TrunkVerified", unit=MetricUnit.Count, value=1)
    if result.probe.rtt_ms is not None:
        metrics.add_metric(name="SipProbeLatencyMs", unit=MetricUnit.Milliseconds, value=result.probe.rtt_ms)
    logger.info("trunk verified", extra=result.model_dump(mode="json"))
    return result.model_dump(mode="json")
