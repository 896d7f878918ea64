"""Schedule · backup (daily): `sip-trunk-agent backup` on the primary plus a snapshot of the SSM config
tree to the backups bucket; publishes BackupSucceeded 0/1, or BackupSkipped 1 before the first Provision
(nothing to back up yet; the BackupMissing alarm counts it as a run)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws.wiring import default_deps
from sip_trunk.events import ScheduleEvent
from sip_trunk.observability import logger, metrics, tracer
from sip_trunk.workflows.backup import backup


@logger.inject_lambda_context(correlation_id_path="id")
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_parser(model=ScheduleEvent)
def handler(event: ScheduleEvent, context: LambdaContext) -> dict[str, Any]:
    try:
        result = backup(default_deps(), event.id or context.aws_request_id)
    except Exception:
        metrics.add_metric(name="BackupSucceeded", unit=MetricUnit.Count, value=0)
        logger.exception("backup failed")
        raise
    if result.status != "backed up":
        metrics.add_metric(name="BackupSkipped", unit=MetricUnit.Count, value=1)
        logger.info(f"backup skipped: {result.status}", extra=result.model_dump(mode="json"))
        return result.model_dump(mode="json")
    metrics.add_metric(name="BackupSucceeded", unit=MetricUnit.Count, value=1)
    logger.info("backup done", extra=result.model_dump(mode="json"))
    return result.model_dump(mode="json")
