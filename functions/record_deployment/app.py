"""Provision · RecordDeployment: write the outcome to the state table and compose the notification; on
failure, restore the desired-version pointer and tell hosts to re-apply the previous version."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.observability import CORRELATION_PATH, logger, metrics, tracer
from sip_trunk.workflows.provision import RecordInput, record_deployment


@logger.inject_lambda_context(correlation_id_path=CORRELATION_PATH)
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = RecordInput.model_validate(event)
    result = record_deployment(default_deps(), request)
    succeeded = result.outcome == "succeeded"
    metrics.add_metric(name="ProvisionSucceeded", unit=MetricUnit.Count, value=1 if succeeded else 0)
    log = logger.info if succeeded else logger.error
    log("provision recorded", extra=result.model_dump(mode="json", exclude={"message"}))
    return result.model_dump(mode="json")
