"""Schedule · health check (every minute): probe the Elastic IP and each host, publish SipProbeSuccess,
SipProbeLatencyMs, TrunkVerified and ConfigDrift (and, with transport tls, GatewayCertificateDaysLeft once an
hour), and start Failover after K consecutive failures.
Before the first Provision it publishes nothing and logs "health check: not provisioned yet"."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.events import ScheduleEvent
from sip_trunk.observability import logger, metrics, tracer
from sip_trunk.workflows.health import health_check
from sip_trunk.workflows.health import metrics as health_metrics


@logger.inject_lambda_context(correlation_id_path="id")
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_parser(model=ScheduleEvent)
def handler(event: ScheduleEvent, context: LambdaContext) -> dict[str, Any]:
    invocation = event.id or context.aws_request_id
    report = health_check(default_deps(), invocation)
    for metric in health_metrics(report):
        if not metric.dimensions:
            metrics.add_metric(name=metric.name, unit=MetricUnit(metric.unit), value=metric.value)
            continue
        with single_metric(name=metric.name, unit=MetricUnit(metric.unit), value=metric.value) as one:
            for key, value in metric.dimensions.items():
                one.add_dimension(name=key, value=value)
    if report.status != "checked":
        logger.info(f"health check: {report.status}", extra=report.model_dump(mode="json"))
        return report.model_dump(mode="json")
    log = logger.info if report.answering else logger.warning
    log("health check", extra=report.model_dump(mode="json"))
    return report.model_dump(mode="json")
