"""Agent configuration from flags and environment (the systemd units load /etc/sip-trunk/agent.env)."""

from __future__ import annotations

import os
import shlex
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "SIP_TRUNK_"


@dataclass(frozen=True)
class AgentConfig:
    stack: str = ""
    region: str | None = None
    config_prefix: str = ""  # /<stack>/asterisk (CONTRACTS.md)
    config_dir: Path = Path("/etc/asterisk")  # what Asterisk reads (astetcdir); the agent makes it a symlink
    releases_dir: Path = Path("/var/lib/sip-trunk/releases")
    state_dir: Path = Path("/var/lib/sip-trunk")
    fail2ban_dir: Path = Path("/etc/fail2ban")
    fail2ban_reload: tuple[str, ...] = ("fail2ban-client", "reload")
    asterisk_cmd: tuple[str, ...] = ("/usr/sbin/asterisk",)
    asterisk_conf: str = "/etc/asterisk/asterisk.conf"
    astdb_path: Path = Path("/var/lib/asterisk/astdb.sqlite3")
    voicemail_dir: Path = Path("/var/spool/asterisk/voicemail")
    keep_files: tuple[str, ...] = ("keys/*",)  # carried from the live config into each new release
    state_table: str | None = None
    backup_bucket: str | None = None
    recordings_bucket: str | None = None
    failover_state_machine_arn: str | None = None
    instance_id: str | None = None
    trunk_endpoint: str = "elevenlabs"
    releases_kept: int = 3
    reload_timeout_s: float = 15.0
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def queue_dir(self) -> Path:
        return self.state_dir / "recording-queue"

    @property
    def prefix(self) -> str:
        if self.config_prefix:
            return self.config_prefix.rstrip("/")
        if not self.stack:
            raise ValueError("set --stack (SIP_TRUNK_STACK) or --config-prefix (SIP_TRUNK_CONFIG_PREFIX)")
        return f"/{self.stack}/asterisk"


# flag name -> (env var, kind)
OPTIONS: dict[str, str] = {
    "stack": "str",
    "region": "str",
    "config_prefix": "str",
    "config_dir": "path",
    "releases_dir": "path",
    "state_dir": "path",
    "fail2ban_dir": "path",
    "fail2ban_reload": "argv",
    "asterisk_cmd": "argv",
    "asterisk_conf": "str",
    "astdb_path": "path",
    "voicemail_dir": "path",
    "keep_files": "argv",
    "state_table": "str",
    "backup_bucket": "str",
    "recordings_bucket": "str",
    "failover_state_machine_arn": "str",
    "instance_id": "str",
    "trunk_endpoint": "str",
}


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper()


def build_config(flags: Mapping[str, object], environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Flags win over SIP_TRUNK_* variables, which win over the defaults; AWS_REGION is honoured too."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for option, kind in OPTIONS.items():
        raw = flags.get(option)
        if raw is None:
            raw = env.get(env_name(option))
        if raw is None and option == "region":
            raw = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if raw is None:
            continue
        text = str(raw)
        if kind == "path":
            values[option] = Path(text)
        elif kind == "argv":
            values[option] = tuple(shlex.split(text))
        else:
            values[option] = text or None if option not in ("stack", "config_prefix", "trunk_endpoint") else text
    return AgentConfig(**values)  # type: ignore[arg-type]


def instance_id(config: AgentConfig, *, timeout_s: float = 1.0) -> str:
    """The EC2 instance id: configured, or from the instance metadata service (IMDSv2), or the host name."""
    if config.instance_id:
        return config.instance_id
    try:
        token_req = urllib.request.Request(
            "http://169.254.169.254/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(token_req, timeout=timeout_s) as resp:  # noqa: S310
            token = resp.read().decode()
        id_req = urllib.request.Request(
            "http://169.254.169.254/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}
        )
        with urllib.request.urlopen(id_req, timeout=timeout_s) as resp:  # noqa: S310
            return str(resp.read().decode()).strip()
    except OSError:
        return os.uname().nodename
