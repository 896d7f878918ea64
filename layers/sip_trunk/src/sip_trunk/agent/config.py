"""Agent configuration: flags, then the environment, then the host's environment files.

Every way the agent is started must end up with the same settings: systemd units load
``/etc/sip-trunk/agent.env`` (and ``role.env``) with ``EnvironmentFile=``, but SSM Run Command
(``AWS-RunShellScript``) runs commands as root with only the SSM agent's environment (``PATH``,
``AWS_SSM_INSTANCE_ID``, ``AWS_SSM_REGION_NAME``) and user data or an operator's shell may have nothing at all.
So the agent reads the files itself whenever its environment carries none of its settings
(:func:`agent_environment`, the one code path every command goes through).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sip_trunk.configstore import stack_parameter

ENV_PREFIX = "SIP_TRUNK_"
AGENT_ENV_FILE = Path("/etc/sip-trunk/agent.env")
"""Written by the host stack's user data: the deployment's names (stack, buckets, table, ARNs) and AWS_REGION."""
ROLE_ENV_FILE = Path("/etc/sip-trunk/role.env")
"""Written by ``bootstrap`` / ``set-role``: SIP_TRUNK_ROLE and SIP_TRUNK_PEER_ADDRESS."""


RECORDING_SPOOL_DIR = "/var/spool/sip-trunk/recordings"
CALL_RECORDS_DIR = "/var/spool/sip-trunk/calls"
"""Where the dialplan's hangup handler (user asterisk) drops recording jobs: root:asterisk 0770, made by the
image's install-agent.sh; ``sip-trunk-recordings.path`` starts the agent when a job appears."""
RECORDINGS_DIR = "/var/spool/asterisk/recording"
"""Where MixMonitor writes recordings (the dialplan's ``recordings_dir``)."""


class AgentEnvironmentMissing(Exception):
    """The agent has no settings: none in its environment and no readable environment file."""


@dataclass(frozen=True)
class AgentConfig:
    stack: str = ""
    region: str | None = None
    config_prefix: str = ""  # /sip-trunk/<stack>/asterisk (CONTRACTS.md)
    config_dir: Path = Path("/etc/asterisk")  # what Asterisk reads (astetcdir); the agent makes it a symlink
    releases_dir: Path = Path("/var/lib/sip-trunk/releases")
    state_dir: Path = Path("/var/lib/sip-trunk")
    fail2ban_dir: Path = Path("/etc/fail2ban")
    fail2ban_reload: tuple[str, ...] = ("fail2ban-client", "reload")
    asterisk_cmd: tuple[str, ...] = ("/usr/sbin/asterisk",)
    asterisk_conf: str = "/etc/asterisk/asterisk.conf"
    astdb_path: Path = Path("/var/lib/asterisk/astdb.sqlite3")
    voicemail_dir: Path = Path("/var/spool/asterisk/voicemail")
    recordings_dir: Path = Path(RECORDINGS_DIR)
    recording_spool_dir: Path = Path(RECORDING_SPOOL_DIR)
    call_records_dir: Path = Path(CALL_RECORDS_DIR)
    keep_files: tuple[str, ...] = ("keys/*",)  # carried from the live config into each new release
    state_table: str | None = None
    backup_bucket: str | None = None
    recordings_bucket: str | None = None
    failover_state_machine_arn: str | None = None
    instance_id: str | None = None
    role: str | None = None  # primary | standby; else bootstrap reads role.env (later boots) or the launch tag
    peer_address: str | None = None  # the other host's private address (what watch-peer probes)
    config_version: str | None = None  # the version the host stack names; "none" = ask SSM
    asterisk_log_group: str | None = None
    imds_url: str = "http://169.254.169.254"
    systemctl: tuple[str, ...] = ("systemctl",)
    cloudwatch_agent_ctl: tuple[str, ...] = ("/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl",)
    etc_dir: Path = Path("/etc/sip-trunk")
    units_dir: Path = Path("/etc/systemd/system")
    trunk_endpoint: str = "elevenlabs"
    releases_kept: int = 3
    reload_timeout_s: float = 15.0
    # How a version that changes modules.conf/asterisk.conf takes effect: an Asterisk CLI command (the default
    # waits for calls in progress to end) or, when it starts with "systemctl", a host command.
    restart_command: tuple[str, ...] = ("core", "restart", "gracefully")
    restart_timeout_s: float = 300.0
    # renew-cert (ACME DNS-01 through Route 53, or the operator's secret; see docs/OPERATIONS.md "TLS certificate")
    public_hostname: str | None = None
    tls_cert_file: Path = Path("/etc/asterisk/keys/asterisk.crt")  # the settings' tls.cert_file
    tls_key_file: Path = Path("/etc/asterisk/keys/asterisk.key")  # the settings' tls.key_file
    tls_group: str = "asterisk"  # the key is root:<group> 0640: Asterisk reads it after dropping root
    acme_directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_email: str | None = None
    acme_hosted_zone_id: str | None = None
    certbot_cmd: tuple[str, ...] = ("certbot",)
    # or the operator's certificate from a Secrets Manager secret (wins over the zone; ADR-48)
    tls_certificate_secret_arn: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def queue_dir(self) -> Path:
        return self.state_dir / "recording-queue"

    @property
    def acme_dir(self) -> Path:
        """certbot's config, work and logs directories (the ACME account key lives here)."""
        return self.state_dir / "acme"

    @property
    def prefix(self) -> str:
        if self.config_prefix:
            return self.config_prefix.rstrip("/")
        if not self.stack:
            raise ValueError("set --stack (SIP_TRUNK_STACK) or --config-prefix (SIP_TRUNK_CONFIG_PREFIX)")
        return stack_parameter(self.stack, "asterisk")


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
    "recordings_dir": "path",
    "recording_spool_dir": "path",
    "call_records_dir": "path",
    "keep_files": "argv",
    "state_table": "str",
    "backup_bucket": "str",
    "recordings_bucket": "str",
    "failover_state_machine_arn": "str",
    "instance_id": "str",
    "role": "str",
    "peer_address": "str",
    "config_version": "str",
    "asterisk_log_group": "str",
    "imds_url": "str",
    "systemctl": "argv",
    "cloudwatch_agent_ctl": "argv",
    "etc_dir": "path",
    "units_dir": "path",
    "trunk_endpoint": "str",
    "restart_command": "argv",
    "public_hostname": "str",
    "tls_cert_file": "path",
    "tls_key_file": "path",
    "tls_group": "str",
    "acme_directory": "str",
    "acme_email": "str",
    "acme_hosted_zone_id": "str",
    "certbot_cmd": "argv",
    "tls_certificate_secret_arn": "str",
}

# Options whose empty value is kept as "" (the rest become None when empty).
_KEEP_EMPTY = ("stack", "config_prefix", "trunk_endpoint", "imds_url")


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper()


def known_env() -> frozenset[str]:
    """Every SIP_TRUNK_* variable the agent reads (what /etc/sip-trunk/agent.env and role.env may hold)."""
    return frozenset(env_name(option) for option in OPTIONS)


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
            values[option] = text if option in _KEEP_EMPTY else (text or None)
    return AgentConfig(**values)  # type: ignore[arg-type]


def read_env_file(path: Path) -> dict[str, str]:
    return _parse_env_file(path)


def agent_environment(
    environ: Mapping[str, str],
    *,
    env_file: Path | None = None,
    agent_env_file: Path = AGENT_ENV_FILE,
    role_env_file: Path = ROLE_ENV_FILE,
) -> dict[str, str]:
    """The environment the agent runs with.

    - ``env_file`` given (``bootstrap --env-file``): ``environ`` plus that file, whose values win;
    - ``environ`` already carries a ``SIP_TRUNK_*`` setting (a systemd unit loaded the files, or an operator
      exported them): ``environ`` as it is;
    - otherwise (SSM Run Command, user data, a bare shell): ``agent_env_file`` plus ``role_env_file`` when it
      exists, under ``environ``. A missing ``agent_env_file`` is :class:`AgentEnvironmentMissing`.

    ``SIP_TRUNK_*`` names a file holds must be known settings (a typo is refused, never ignored).
    """
    if env_file is not None:
        return {**environ, **_checked_env_file(env_file, required=True)}
    known = known_env()
    if any(name in known for name in environ):
        return dict(environ)
    values = _checked_env_file(agent_env_file, required=True)
    values |= _checked_env_file(role_env_file, required=False)
    return {**values, **environ}


def _checked_env_file(path: Path, *, required: bool) -> dict[str, str]:
    try:
        values = _parse_env_file(path)
    except FileNotFoundError:
        if not required:
            return {}
        raise AgentEnvironmentMissing(
            f"{path} does not exist and the environment has no SIP_TRUNK_* settings: the host stack's user data "
            "writes it at first boot (see docs/OPERATIONS.md, 'Host agent configuration')"
        ) from None
    except PermissionError as exc:
        raise AgentEnvironmentMissing(f"{path} is not readable ({exc.strerror}): run the agent as root") from None
    unknown = sorted(k for k in values if k.startswith(ENV_PREFIX) and k not in known_env())
    if unknown:
        raise ValueError(f"{path}: unknown settings {unknown}")
    return values


def _parse_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines as systemd's EnvironmentFile reads them (comments, blank lines, optional quotes)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "").isalnum():
            raise ValueError(f"{path}:{number}: not KEY=VALUE: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def instance_id(config: AgentConfig, *, timeout_s: float = 1.0) -> str:
    """The EC2 instance id: configured, or from the instance metadata service (IMDSv2), or the host name."""
    from sip_trunk.agent.imds import Imds, ImdsError

    if config.instance_id:
        return config.instance_id
    try:
        return Imds(config.imds_url, timeout_s=timeout_s, attempts=1).instance_id()
    except ImdsError:
        return os.uname().nodename
