"""Step Functions: start the Failover workflow, read an execution's history for step durations."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from sip_trunk.aws.clients import aws_call, client, error_code
from sip_trunk.limits import check_execution_name


class SfnExecutions:
    def __init__(self, sfn: Any | None = None) -> None:
        self._sfn = sfn

    @property
    def sfn(self) -> Any:
        return self._sfn or client("stepfunctions")

    def start(self, state_machine_arn: str, name: str, payload: Mapping[str, Any]) -> str:
        check_execution_name(name)
        try:
            with aws_call("StartExecution"):
                response = self.sfn.start_execution(
                    stateMachineArn=state_machine_arn, name=name, input=json.dumps(payload)
                )
        except ClientError as exc:
            if error_code(exc) == "ExecutionAlreadyExists":
                return f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
            raise
        return str(response["executionArn"])

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        """The execution's events; none for an execution Step Functions does not know."""
        events: list[dict[str, Any]] = []
        try:
            with aws_call("GetExecutionHistory"):
                pages = list(self.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn))
        except ClientError as exc:
            if error_code(exc) == "ExecutionDoesNotExist":
                return []
            raise
        for page in pages:
            for event in page["events"]:
                stamp = event.get("timestamp")
                entered = event.get("stateEnteredEventDetails") or {}
                exited = event.get("stateExitedEventDetails") or {}
                events.append(
                    {
                        "type": event["type"],
                        "timestamp": stamp.timestamp() if isinstance(stamp, datetime) else stamp,
                        "state": entered.get("name") or exited.get("name"),
                    }
                )
        return events
