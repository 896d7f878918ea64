"""The daily backup: the host agent archives its state to the backups bucket, and a snapshot of the
SSM config tree goes next to it (SecureString values are never decrypted into the snapshot).

Before a Provision has recorded a deployment there is no host and no config to keep: the backup does
nothing and says so (`status` "not provisioned yet"), rather than fail into the dead-letter queue.

The backup succeeded only when the host's command did: the step waits for the Run Command invocation
(the host's backup takes seconds) and raises `BackupFailed` with the agent's answer otherwise, so
`BackupSucceeded` is never 1 for a backup that did not happen.
"""

from __future__ import annotations

from typing import Literal

from sip_trunk.errors import BackupFailed
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import Model
from sip_trunk.workflows.deps import Deps

NOT_PROVISIONED = "not provisioned yet"
HOST_BACKUP_WAIT_S = 180.0
"""How long the step waits for the host's backup (the function's timeout is 300 s)."""
POLL_S = 2.0
_DONE = {"Success", "Cancelled", "TimedOut", "Failed"}


class BackupResult(Model):
    status: Literal["backed up", "not provisioned yet"] = "backed up"
    snapshot_key: str | None
    parameters: int
    command_id: str | None
    instance_id: str | None
    host_status: str | None = None


def backup(deps: Deps, invocation: str) -> BackupResult:
    cfg = deps.config
    stamp = clock.iso(clock.now()).replace(":", "").replace("+0000", "Z")
    prefix = f"{cfg.stack_name}/{stamp}"
    deployment = deps.state.get_deployment()
    instance_id = deployment.primary_instance_id if deployment else None
    if instance_id is None:
        return BackupResult(status=NOT_PROVISIONED, snapshot_key=None, parameters=0, command_id=None, instance_id=None)
    command_id = deps.commands.send(
        [instance_id],
        ["sip-trunk-agent backup"],  # the agent reads its bucket and key layout from /etc/sip-trunk/agent.env
        f"backup {invocation}"[:100],
    )
    snapshot = deps.config_store.snapshot()
    key = f"{prefix}/ssm-config.json"
    deps.objects.put_json(
        cfg.backup_bucket,
        key,
        {"prefix": cfg.config_prefix, "taken_at": clock.now(), "invocation": invocation, "parameters": snapshot},
    )
    status = _wait_host_backup(deps, command_id, instance_id, key)
    return BackupResult(
        snapshot_key=key,
        parameters=len(snapshot),
        command_id=command_id,
        instance_id=instance_id,
        host_status=status,
    )


def _wait_host_backup(deps: Deps, command_id: str, instance_id: str, snapshot_key: str) -> str:
    deadline = clock.now() + HOST_BACKUP_WAIT_S
    while True:
        result = next(iter(deps.commands.results(command_id, [instance_id])), None)
        status = result.status if result else "Pending"
        if status == "Success":
            return status
        if status in _DONE:
            output = result.output.strip()[-300:] if result else ""
            raise BackupFailed(
                f"sip-trunk-agent backup on {instance_id}: {status} {output} (config snapshot saved to {snapshot_key})"
            )
        if clock.now() >= deadline:
            raise BackupFailed(f"sip-trunk-agent backup on {instance_id} still {status} after {HOST_BACKUP_WAIT_S:g} s")
        clock.sleep(POLL_S)
