"""SSM Run Command: how the workflows ask the host agent to act."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from botocore.exceptions import ClientError

from sip_trunk.aws.clients import aws_call, client, error_code
from sip_trunk.errors import HostUnreachable
from sip_trunk.limits import fit_command_comment
from sip_trunk.workflows.ports import CommandResult, CommandStatus

_KNOWN: set[str] = {"Pending", "InProgress", "Delayed", "Success", "Cancelled", "TimedOut", "Failed"}


class SsmCommands:
    def __init__(self, ssm: Any | None = None, timeout_s: int = 600) -> None:
        self._ssm = ssm
        self.timeout_s = timeout_s

    @property
    def ssm(self) -> Any:
        return self._ssm or client("ssm")

    def send(self, instance_ids: Sequence[str], commands: Sequence[str], comment: str) -> str:
        """The command id; `HostUnreachable` when Run Command cannot reach one of the instances."""
        try:
            with aws_call("SendCommand"):
                response = self.ssm.send_command(
                    InstanceIds=list(instance_ids),
                    DocumentName="AWS-RunShellScript",
                    Parameters={"commands": list(commands), "executionTimeout": [str(self.timeout_s)]},
                    Comment=fit_command_comment(comment),
                    TimeoutSeconds=self.timeout_s,
                )
        except ClientError as exc:
            if error_code(exc) == "InvalidInstanceId":  # not running, or its SSM agent is not registered
                raise HostUnreachable(f"{', '.join(instance_ids)}: {exc}") from exc
            raise
        return str(response["Command"]["CommandId"])

    def results(self, command_id: str, instance_ids: Sequence[str]) -> list[CommandResult]:
        out: list[CommandResult] = []
        for instance_id in instance_ids:
            try:
                with aws_call("GetCommandInvocation"):
                    item = self.ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            except ClientError as exc:
                if error_code(exc) == "InvocationDoesNotExist":  # not registered yet: still pending
                    out.append(CommandResult(instance_id=instance_id, status="Pending"))
                    continue
                raise
            raw = str(item.get("Status", "Unknown"))
            status = cast(CommandStatus, raw if raw in _KNOWN else "Unknown")
            out.append(CommandResult(instance_id=instance_id, status=status, output=command_output(item)))
        return out


def command_output(invocation: dict[str, Any], limit: int = 500) -> str:
    """What a poller shows of an invocation: the agent's answer (the last line of stdout, one JSON object) and
    the end of stderr (its log), at most ``limit`` characters."""
    stdout = str(invocation.get("StandardOutputContent") or "").strip()
    stderr = str(invocation.get("StandardErrorContent") or "").strip()
    answer = stdout.splitlines()[-1] if stdout else ""
    if not stderr:
        return answer[-limit:]
    return " | ".join(part for part in (answer[-(limit // 2) :], stderr[-(limit // 2) :]) if part)
