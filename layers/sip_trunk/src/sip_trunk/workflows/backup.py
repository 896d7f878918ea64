"""The daily backup: the host agent archives its state to the backups bucket, and a snapshot of the
SSM config tree goes next to it (SecureString values are never decrypted into the snapshot).

Before a Provision has recorded a deployment there is no host and no config to keep: the backup does
nothing and says so (`status` "not provisioned yet"), rather than fail into the dead-letter queue."""

from __future__ import annotations

from typing import Literal

from sip_trunk.workflows import clock
from sip_trunk.workflows.common import Model
from sip_trunk.workflows.deps import Deps

NOT_PROVISIONED = "not provisioned yet"


class BackupResult(Model):
    status: Literal["backed up", "not provisioned yet"] = "backed up"
    snapshot_key: str | None
    parameters: int
    command_id: str | None
    instance_id: str | None


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
        ["sip-trunk-agent backup"],  # the agent knows its bucket and key layout from its environment
        f"backup {invocation}"[:100],
    )
    snapshot = deps.config_store.snapshot()
    key = f"{prefix}/ssm-config.json"
    deps.objects.put_json(
        cfg.backup_bucket,
        key,
        {"prefix": cfg.config_prefix, "taken_at": clock.now(), "invocation": invocation, "parameters": snapshot},
    )
    return BackupResult(snapshot_key=key, parameters=len(snapshot), command_id=command_id, instance_id=instance_id)
