"""Shapes of the events that start the functions and workflows (parsed with Powertools' parser)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from pydantic import BaseModel, ConfigDict, Field

from sip_trunk.workflows.failover import FailoverTrigger


class ScheduleEvent(BaseModel):
    """An EventBridge rule's "Scheduled Event", or an EventBridge Scheduler payload (often `{}`)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = None
    time: datetime | None = None
    source: str | None = None
    detail_type: str | None = Field(default=None, alias="detail-type")


class AlarmState(BaseModel):
    value: str
    reason: str = ""


class AlarmDetail(BaseModel):
    alarm_name: str = Field(alias="alarmName")
    state: AlarmState


class AlarmStateChange(EventBridgeModel):
    """EventBridge "CloudWatch Alarm State Change": the Failover rule passes it as the execution input."""

    detail_type: Literal["CloudWatch Alarm State Change"] = Field(alias="detail-type")
    detail: AlarmDetail


def failover_trigger(raw: Any) -> FailoverTrigger:
    """What started a Failover execution: an alarm event, the health check, or a person's JSON."""
    if isinstance(raw, dict) and raw.get("detail-type") == "CloudWatch Alarm State Change":
        alarm = parse(event=raw, model=AlarmStateChange)
        return FailoverTrigger(source="alarm", alarm_name=alarm.detail.alarm_name, reason=alarm.detail.state.reason)
    return FailoverTrigger.model_validate(raw if isinstance(raw, dict) else {})
