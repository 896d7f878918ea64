"""A host's first boot with TLS, for ``sip-trunk-agent bootstrap`` tests: one config version published to moto
as Provision leaves it, the image's stock Asterisk config, a recording Asterisk CLI that notes whether the
certificate was in place at each command, and ``agent.env`` as the host stack's user data writes it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "asterisk"
PJSIP_TLS = (
    "[transport-tls]\ntype = transport\nprotocol = tls\nbind = 0.0.0.0:5061\n"
    "cert_file = /etc/asterisk/keys/asterisk.crt\npriv_key_file = /etc/asterisk/keys/asterisk.key\n"
)


@dataclass
class FirstBoot:
    env_file: Path
    version: str
    cli_calls: Path
    """One line per Asterisk CLI command: ``<command>|cert=yes`` or ``|cert=no``."""
    host_commands: Path
    """The systemctl and CloudWatch agent commands the agent ran."""


def first_boot(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    moto_endpoint: str,
    region: str,
    stack: str,
    table: str,
    conf_dir: Path,
    cert_file: Path,
    tls_lines: str,
) -> FirstBoot:
    """Everything before ``main(["bootstrap", "--env-file", ...])``; ``tls_lines`` are the user data's TLS lines
    of ``agent.env``. ``stack`` and ``table`` name moto resources of their own (one backend per process)."""
    from sip_trunk import configstore
    from sip_trunk.manifest import MANIFEST_NAME, Manifest

    from support.world import create_state_table

    prefix = f"/sip-trunk/{stack}/asterisk"
    aws = {"region_name": region, "endpoint_url": moto_endpoint}
    create_state_table(boto3.resource("dynamodb", **aws), table)
    files = {"asterisk/pjsip.conf": PJSIP_TLS.encode(), "asterisk/asterisk.conf": b"[directories]\n",
             "asterisk/modules.conf": b"[modules]\n"}  # fmt: skip
    files[MANIFEST_NAME] = Manifest.for_files(files).to_json()
    version = Manifest.from_json(files[MANIFEST_NAME]).version
    ssm = boto3.client("ssm", **aws)
    configstore.publish_config(ssm, prefix, files, [], version)
    configstore.set_desired_version(ssm, prefix, version)
    # the image's stock config directory, as Asterisk runs it before the first apply
    (conf_dir / "asterisk.conf").write_text("[directories]\n")
    (conf_dir / "modules.conf").write_text("[modules]\n")
    calls = tmp_path / "boot-calls"
    asterisk = tmp_path / "asterisk-boot"
    asterisk.write_text(
        f'#!/bin/sh\nshift 3\nif [ -s {cert_file} ]; then c=yes; else c=no; fi\necho "$*|cert=$c" >> {calls}\n'
        f"case \"$*\" in\n  'core reload'|'module reload res_pjsip.so') exit 0;;\n"
        "  'pjsip show transports') echo 'Transport:  transport-tls  tls  0  0  0.0.0.0:5061'; exit 0;;\nesac\n"
        f"cat {FIXTURES}/$(echo \"$*\" | tr ' ' '_').txt\n"
    )
    asterisk.chmod(0o755)
    host_commands = tmp_path / "host-cmds"
    recorder = tmp_path / "host-cmd"
    recorder.write_text(f'#!/bin/sh\necho "$*" >> {host_commands}\n')
    recorder.chmod(0o755)
    env_file = tmp_path / "agent.env"
    env_file.write_text(
        f"AWS_REGION={region}\nSIP_TRUNK_STACK={stack}\nSIP_TRUNK_CONFIG_PREFIX={prefix}\n"
        f"SIP_TRUNK_STATE_TABLE={table}\nSIP_TRUNK_BACKUP_BUCKET=b\nSIP_TRUNK_RECORDINGS_BUCKET=\n"
        f"SIP_TRUNK_FAILOVER_STATE_MACHINE_ARN=arn:x\nSIP_TRUNK_ASTERISK_LOG_GROUP=/g\nSIP_TRUNK_CONFIG_VERSION={version}\n"
        + tls_lines
    )
    for name, value in {
        "SIP_TRUNK_INSTANCE_ID": "i-0123456789abcdef0", "SIP_TRUNK_ROLE": "primary",
        "SIP_TRUNK_RELEASES_DIR": str(tmp_path / "releases"), "SIP_TRUNK_ETC_DIR": str(tmp_path / "etc-sip-trunk"),
        "SIP_TRUNK_UNITS_DIR": str(tmp_path / "units"), "SIP_TRUNK_FAIL2BAN_DIR": str(tmp_path / "fail2ban"),
        "SIP_TRUNK_FAIL2BAN_RELOAD": "", "SIP_TRUNK_SYSTEMCTL": str(recorder),
        "SIP_TRUNK_CLOUDWATCH_AGENT_CTL": str(recorder), "SIP_TRUNK_ASTERISK_CMD": str(asterisk),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    return FirstBoot(env_file=env_file, version=version, cli_calls=calls, host_commands=host_commands)
