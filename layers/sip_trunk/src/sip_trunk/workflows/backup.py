"""The daily backup: the host agent archives its state to the backups bucket, and a snapshot of the
SSM config tree goes next to it (SecureString values are never decrypted into the snapshot)."""

from __future__ import annotations

from sip_trunk.errors import HostNotFound
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import Model
from sip_trunk.workflows.deps import Deps


class BackupResult(Model):
    snapshot_key: str
    parameters: int
    command_id: str | None
    instance_id: str | None


def backup(deps: Deps, invocation: str) -> BackupResult:
    cfg = deps.config
    stamp = clock.iso(clock.now()).replace(":", "").replace("+0000", "Z")
    prefix = f"{cfg.stack_name}/{stamp}"
    deployment = deps.state.get_deployment()
    instance_id = deployment.primary_instance_id if deployment else None
    command_id: str | None = None
    if instance_id:
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
    if instance_id is None:
        raise HostNotFound(f"config snapshot saved to s3://{cfg.backup_bucket}/{key}, but no host is recorded")
    return BackupResult(snapshot_key=key, parameters=len(snapshot), command_id=command_id, instance_id=instance_id)
