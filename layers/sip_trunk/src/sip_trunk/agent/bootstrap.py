"""``bootstrap --env-file /etc/sip-trunk/agent.env``: make a fresh instance a serving gateway host.

Run by the host stack's user data on the first boot (before it signals CloudFormation) and by
``sip-trunk-boot.service`` on every later boot; every step is idempotent.

1. identity: the instance id from IMDSv2, unless configured; on later boots the role from the state table's
   deployment record (who the control plane says serves: a failover while this host was down rewrote it, and
   the ``set-role`` it sent may not have arrived yet), the primary's address from ``role.env`` (what the last
   ``set-role`` or bootstrap wrote); once a deployment is recorded, ``role.env`` alone never makes a later boot
   primary (ADR-45). On the first boot the instance tag ``aws-sip-trunk:role`` (the role at launch) and
   ``agent.env``; a role configured explicitly (``SIP_TRUNK_ROLE`` / ``--role``) wins over all of them;
2. the agent's systemd units (shipped in this package) installed into ``/etc/systemd/system``;
3. the CloudWatch agent configured for this stack (``AwsSipTrunk/Host`` metrics, the Asterisk log group);
4. with a public host name and its hosted zone or the operator's certificate secret (TLS on), the certificate
   obtained or renewed when due, or installed from the secret (``renew-cert``), before the config whose TLS
   transport loads it; a failure is a warning (the TCP transport serves, VerifyTrunk reports the missing
   certificate, the timer tries again);
5. the config version fetched and applied unless it already runs: on the first boot the one the host stack
   names in ``agent.env`` (the version at launch), else the SSM ``desired-version`` pointer; on later boots the
   pointer (ApplyConfig may have moved the host on since launch), else ``agent.env``'s;
6. ``role.env`` written and the role's services enabled (heartbeat timer; the recordings path unit and
   timer when recording is on; watch-peer on the standby only, disabled on the primary);
7. the first heartbeat written, so the control plane sees the host at once;
8. ``boot.json`` in the state directory: this instance has booted (what makes the next boot a later one), with
   the sources of its role and version.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from sip_trunk.agent import apply as apply_mod
from sip_trunk.agent import certificate as certificate_mod
from sip_trunk.agent import report as report_mod
from sip_trunk.agent.config import AgentConfig, read_env_file
from sip_trunk.agent.imds import Imds, ImdsError
from sip_trunk.agent.releases import Releases
from sip_trunk.agent.runtime import AgentError, AsteriskCli, atomic_write, write_json

log = logging.getLogger(__name__)

ROLES = ("primary", "standby")
ROLE_ENV = "role.env"
BOOT_RECORD = "boot.json"  # in the state directory
CLOUDWATCH_CONFIG = "cloudwatch-agent.json"
HEARTBEAT_TIMER = "sip-trunk-agent.timer"
RECORDINGS_TIMER = "sip-trunk-recordings.timer"
RECORDINGS_PATH = "sip-trunk-recordings.path"
CALLS_TIMER = "sip-trunk-calls.timer"
BYE_HEADERS = "sip-trunk-bye-headers.service"
CERT_TIMER = "sip-trunk-cert.timer"
WATCH_PEER = "sip-trunk-watch-peer.service"
BOOT_SERVICE = "sip-trunk-boot.service"
_STACK = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,127}")
_ADDRESS = re.compile(r"[A-Za-z0-9.:-]{1,253}")

Runner = Callable[[Sequence[str]], str]


def run_command(argv: Sequence[str]) -> str:
    """Run a host command; a non-zero exit is an `AgentError` naming the command and its stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentError(f"{' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise AgentError(f"{' '.join(argv)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:300]}")
    return proc.stdout


def host_file(name: str) -> bytes:
    return (importlib.resources.files("sip_trunk.agent") / "host_files" / name).read_bytes()


def unit_files() -> dict[str, bytes]:
    """The agent's systemd units, as shipped in the package (the one copy the image and the stock path use)."""
    base = importlib.resources.files("sip_trunk.agent") / "host_files" / "systemd"
    return {entry.name: entry.read_bytes() for entry in sorted(base.iterdir(), key=lambda e: e.name)}


def cloudwatch_agent_config(stack: str) -> bytes:
    """The CloudWatch agent configuration for ``stack`` (``__STACK__`` in the shipped template replaced)."""
    if not _STACK.fullmatch(stack):
        raise ValueError(f"unsafe stack name: {stack!r}")
    return host_file(CLOUDWATCH_CONFIG).replace(b"__STACK__", stack.encode())


def install_units(config: AgentConfig, run: Runner = run_command) -> list[str]:
    """Write units that differ from the shipped ones; ``daemon-reload`` when anything changed."""
    changed = []
    for name, data in unit_files().items():
        dest = config.units_dir / name
        if not dest.exists() or dest.read_bytes() != data:
            atomic_write(dest, data, 0o644)
            changed.append(name)
    if changed and config.systemctl:
        run([*config.systemctl, "daemon-reload"])
        run([*config.systemctl, "enable", BOOT_SERVICE])
    return changed


def configure_cloudwatch(config: AgentConfig, run: Runner = run_command) -> str:
    path = config.etc_dir / CLOUDWATCH_CONFIG
    atomic_write(path, cloudwatch_agent_config(config.stack), 0o644)
    if config.cloudwatch_agent_ctl:
        run([*config.cloudwatch_agent_ctl, "-a", "fetch-config", "-m", "ec2", "-s", "-c", f"file:{path}"])
    return str(path)


def set_role(config: AgentConfig, role: str, peer_address: str | None, run: Runner = run_command) -> dict[str, Any]:
    """Record the role in ``role.env`` and start/stop the role's services (watch-peer on the standby only).

    A standby without the primary's address (its first boot: the user data names no other host, so replacing
    one slot never rewrites the other's) serves as a standby without watch-peer until the control plane's
    ``set-role`` names the peer; CheckHostStack sends it after every host stack create or update.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if role == "standby" and not peer_address:
        log.warning("standby without the primary's address: watch-peer waits for set-role --peer-address")
    if peer_address and not _ADDRESS.fullmatch(peer_address):
        raise ValueError(f"bad peer address: {peer_address!r}")
    lines = [f"SIP_TRUNK_ROLE={role}"]
    if peer_address:
        lines.append(f"SIP_TRUNK_PEER_ADDRESS={peer_address}")
    atomic_write(config.etc_dir / ROLE_ENV, ("\n".join(lines) + "\n").encode(), 0o644)
    watching = role == "standby" and bool(peer_address)
    services = {HEARTBEAT_TIMER: True, WATCH_PEER: watching}
    if config.recordings_bucket:
        services[RECORDINGS_PATH] = True  # a recording is uploaded as soon as its call ends
        services[RECORDINGS_TIMER] = True  # and retried every two minutes while S3 is away
    if config.asterisk_log_group and config.backup_bucket:
        services[CALLS_TIMER] = True  # call records to S3 and CloudWatch Logs every minute (kept on disk until then)
        services[BYE_HEADERS] = True  # the agent's BYE headers, from Asterisk's HEP copies, for those records
    if certificate_mod.managed(config):
        services[CERT_TIMER] = True  # both roles: a standby that takes over presents its own certificate
    if config.systemctl:
        for unit, wanted in services.items():
            if wanted:
                run([*config.systemctl, "enable", "--now", unit])
            else:
                run([*config.systemctl, "disable", "--now", unit])
        if watching:  # pick up a changed peer address
            run([*config.systemctl, "restart", WATCH_PEER])
    return {"role": role, "peer_address": peer_address, "services": services}


def previous_boot(config: AgentConfig, instance: str) -> dict[str, Any] | None:
    """The record of this instance's last bootstrap, or None on its first boot.

    An instance whose disk comes from an image of another host finds that host's record (another instance id):
    its first boot. A host bootstrapped by an agent that wrote no record but has ``role.env`` has booted before.
    """
    path = config.state_dir / BOOT_RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        if (config.etc_dir / ROLE_ENV).is_file():
            return {"instance_id": instance, "boots": 1}
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable (%s): treating this boot as a later one", path, exc)
        return {"instance_id": instance, "boots": 1}
    if not isinstance(record, dict) or record.get("instance_id") != instance:
        return None
    return record


def read_role_env(config: AgentConfig) -> tuple[str, str | None] | None:
    """(role, peer address) from ``role.env``; None when it is missing or does not name a valid role."""
    path = config.etc_dir / ROLE_ENV
    try:
        values = read_env_file(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s unreadable: %s", path, exc)
        return None
    role = values.get("SIP_TRUNK_ROLE", "")
    if role not in ROLES:
        log.warning("%s names no valid role (%r)", path, role)
        return None
    return role, values.get("SIP_TRUNK_PEER_ADDRESS") or None


class RolesUnknown(Exception):
    """The state table could not be read: who serves is not known at this boot."""


def recorded_roles(config: AgentConfig, dynamodb: Any) -> tuple[str | None, str | None] | None:
    """(primary, standby) instance ids from the state table's ``deployment`` record; None when there is no
    table or no deployment recorded yet (nothing has failed over); `RolesUnknown` when it cannot be read."""
    from botocore.exceptions import BotoCoreError, ClientError

    if not config.state_table:
        return None
    try:
        item = dynamodb.get_item(
            TableName=config.state_table,
            Key={"pk": {"S": "deployment"}, "sk": {"S": "current"}},
            ConsistentRead=True,
            ProjectionExpression="primary_instance_id, standby_instance_id",
        ).get("Item")
    except (BotoCoreError, ClientError) as exc:
        raise RolesUnknown(f"state table {config.state_table}: {exc}") from exc
    if not item:
        return None
    primary, standby = item.get("primary_instance_id", {}), item.get("standby_instance_id", {})
    return primary.get("S"), standby.get("S")


def resolve_role(
    config: AgentConfig,
    metadata: Imds,
    *,
    later_boot: bool,
    roles: Callable[[], tuple[str | None, str | None] | None] = lambda: None,
) -> tuple[str, str | None, str]:
    """(role, peer address, source); source is ``config``, ``state-table``, ``role.env``, ``role.env
    unconfirmed``, ``tag`` or ``default``.

    On later boots the state table's deployment record (``roles()``) decides: this instance is primary only
    when the record names it primary, otherwise the standby. ``role.env`` still gives the peer (the launch
    ``agent.env`` may name a primary that has since failed over; it is used only for a standby whose file names
    none) but not the role: a primary that was down while the standby took over finds ``role.env`` saying
    primary, and the ``set-role`` the failover sent arrives only once it is back. Without a deployment record
    (nothing has failed over) ``role.env`` stands. When the table cannot be read, a ``role.env`` that says
    primary is not trusted: the host boots a standby without a peer, which serves exactly as a primary does
    (the Elastic IP decides who serves; a role only starts or stops watch-peer) until the control plane's next
    ``set-role``.
    """
    if config.role:
        return config.role, config.peer_address, "config"
    if later_boot and (recorded := read_role_env(config)) is not None:
        role, peer = recorded
        if role == "standby" and not peer:
            peer = config.peer_address
        try:
            known = roles()
        except RolesUnknown as exc:
            log.warning("%s: a role.env that says %s is not trusted", exc, role)
            return "standby", peer if role == "standby" else None, f"{ROLE_ENV} unconfirmed"
        if known is None:
            return role, peer, ROLE_ENV
        primary, _ = known
        if primary and primary == config.instance_id:
            return "primary", None, "state-table"
        if role == "primary":
            log.warning("role.env says primary but the state table names %s: booting as the standby", primary)
            peer = None  # set-role names the new primary's address
        return "standby", peer, "state-table"
    tagged = metadata.role()
    if tagged:
        return tagged, config.peer_address, "tag"
    return "primary", config.peer_address, "default"


def resolve_version(config: AgentConfig, ssm: Any, *, later_boot: bool) -> tuple[str | None, str | None]:
    """(version, source); source is ``agent.env`` (the version the host stack named at launch),
    ``desired-version`` (the SSM pointer) or None when neither names one.

    The first boot prefers ``agent.env``; later boots prefer the pointer, which ApplyConfig has followed since.
    """
    from sip_trunk import configstore

    named = (config.config_version or "").strip()
    launch = named if named and named != "none" else None
    if launch is not None and not later_boot:
        return launch, "agent.env"
    pointer = configstore.get_desired_version(ssm, config.prefix)
    if pointer:
        return pointer, "desired-version"
    if launch is not None:
        return launch, "agent.env"
    return None, None


def bootstrap(
    config: AgentConfig,
    session: Any,
    cli: AsteriskCli,
    *,
    imds: Imds | None = None,
    run: Runner = run_command,
) -> dict[str, Any]:
    if not config.stack:
        raise ValueError("SIP_TRUNK_STACK is missing from the environment file")
    metadata = imds or Imds(config.imds_url)
    try:
        instance = config.instance_id or metadata.instance_id()
        previous = previous_boot(config, instance)
        later_boot = previous is not None
        config = dataclasses.replace(config, instance_id=instance)
        role, peer, role_source = resolve_role(
            config,
            metadata,
            later_boot=later_boot,
            roles=lambda: recorded_roles(config, session.client("dynamodb")),
        )
    except ImdsError as exc:
        raise AgentError(f"instance identity: {exc}") from exc
    config = dataclasses.replace(config, instance_id=instance, role=role, peer_address=peer)
    boots = (int(previous.get("boots", 1)) if previous else 0) + 1
    result: dict[str, Any] = {
        "instance_id": instance,
        "boot": boots,
        "first_boot": not later_boot,
        "role": role,
        "role_source": role_source,
        "peer_address": peer,
        "warnings": [],
    }

    result["units_changed"] = install_units(config, run)
    try:
        result["cloudwatch_config"] = configure_cloudwatch(config, run)
    except AgentError as exc:  # metrics/logs are not worth an unserved host; the heartbeat still reports
        result["warnings"].append(f"CloudWatch agent: {exc}")

    result["certificate"] = None
    if certificate_mod.managed(config):
        try:
            result["certificate"] = certificate_mod.manage_certificate(config, cli, session)
        except AgentError as exc:
            result["certificate"] = {"ok": False, "error": str(exc)}
            result["warnings"].append(f"certificate: {exc}")

    version, version_source = resolve_version(config, session.client("ssm"), later_boot=later_boot)
    running = Releases(config.releases_dir, config.config_dir).current_version()
    result["desired_version"] = version
    result["version_source"] = version_source
    result["apply"] = None
    log.info(
        "boot %d of %s: role %s (from %s), version %s (from %s), running %s",
        boots, instance, role, role_source, version, version_source, running,
    )  # fmt: skip
    if version is None:
        result["warnings"].append("no desired version in SSM yet: Asterisk keeps its current config")
    elif version == running:
        result["apply"] = {"version": version, "changed": False, "skipped": "already running"}
    else:
        try:
            result["apply"] = apply_mod.apply_version(config, session.client("ssm"), cli, version)
        except AgentError as exc:  # recorded in last-apply.json and the heartbeat; ApplyConfig retries
            result["apply"] = {"version": version, "ok": False, "error": str(exc)}
            result["warnings"].append(f"apply {version}: {exc}")

    result["services"] = set_role(config, role, peer, run)["services"]
    status = report_mod.report(
        config, cli, instance, cloudwatch=session.client("cloudwatch"), dynamodb=session.resource("dynamodb")
    )
    result["heartbeat"] = {
        "running_version": status["running_version"],
        "asterisk_up": status["asterisk_up"],
        "apply_error": status["apply_error"],
    }
    result["running_version"] = Releases(config.releases_dir, config.config_dir).current_version()
    write_json(
        config.state_dir / BOOT_RECORD,
        {
            "instance_id": instance,
            "boots": boots,
            "at": time.time(),
            "role": role,
            "role_source": role_source,
            "version": version,
            "version_source": version_source,
            "running_version": result["running_version"],
        },
    )
    return result
