"""The agent's settings whichever way it is started: systemd (EnvironmentFile=), SSM Run Command (only the SSM
agent's PATH, AWS_SSM_INSTANCE_ID, AWS_SSM_REGION_NAME), user data (`bootstrap --env-file`)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk.agent.__main__ import main
from sip_trunk.agent.config import AgentEnvironmentMissing, agent_environment, build_config

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
BUCKET = "backups-env-test"
SSM_AGENT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "AWS_SSM_INSTANCE_ID": "i-0123456789abcdef0",
    "AWS_SSM_REGION_NAME": REGION,
}


@pytest.fixture
def run_command_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process environment exactly as AWS-RunShellScript gives it (moto patched in-process)."""
    with mock_aws(), monkeypatch.context() as env:
        for name in list(os.environ):
            if name not in SSM_AGENT_ENV:
                env.delenv(name)
        for name, value in SSM_AGENT_ENV.items():
            env.setenv(name, value)
        yield


def _s3() -> Any:
    return boto3.client("s3", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")


def _host_files(tmp_path: Path) -> tuple[Path, Path]:
    etc = tmp_path / "etc-sip-trunk"
    etc.mkdir()
    agent_env = etc / "agent.env"
    # The credentials stand for the instance profile (IMDS), as local mode's agent.env carries them.
    agent_env.write_text(
        "AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n"
        f"AWS_REGION={REGION}\nSIP_TRUNK_STACK=envtest\nSIP_TRUNK_BACKUP_BUCKET={BUCKET}\n"
        f"SIP_TRUNK_INSTANCE_ID=i-0123456789abcdef0\nSIP_TRUNK_STATE_DIR={tmp_path / 'state'}\n"
        f"SIP_TRUNK_RELEASES_DIR={tmp_path / 'state/releases'}\nSIP_TRUNK_CONFIG_DIR={tmp_path / 'asterisk'}\n"
        f"SIP_TRUNK_ETC_DIR={etc}\nSIP_TRUNK_SYSTEMCTL=\nSIP_TRUNK_ASTERISK_CMD=false\n"
        f"SIP_TRUNK_ASTDB_PATH={tmp_path / 'astdb.sqlite3'}\nSIP_TRUNK_VOICEMAIL_DIR={tmp_path / 'voicemail'}\n"
    )
    return agent_env, etc / "role.env"


def test_a_run_command_backup_reads_agent_env_itself(
    run_command_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a host whose agent.env names the backups bucket and the region, and Run Command's bare environment
    agent_env, role_env = _host_files(tmp_path)
    _s3().create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION})
    # When the Backup schedule's command runs
    code = main(["backup"], agent_env_file=agent_env, role_env_file=role_env)
    # Then the backup is in the bucket, in the region the file names
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["bucket"] == BUCKET
    head = _s3().head_object(Bucket=BUCKET, Key=out["key"])
    assert head["Metadata"]["sha256"] == out["sha256"]
    # and the file's AWS_REGION reached the process only while the command ran
    assert "AWS_REGION" not in os.environ
    assert "AWS_ACCESS_KEY_ID" not in os.environ


def test_set_role_through_run_command_writes_role_env_next_to_agent_env(
    run_command_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given Run Command's environment and the host's agent.env
    agent_env, role_env = _host_files(tmp_path)
    # When the control plane sends set-role
    code = main(["set-role", "--role", "standby", "--peer-address", "10.0.2.20"], agent_env_file=agent_env)
    # Then role.env lands in the etc directory agent.env names, and a later command sees the role from it
    assert code == 0, capsys.readouterr().out
    assert role_env.read_text() == "SIP_TRUNK_ROLE=standby\nSIP_TRUNK_PEER_ADDRESS=10.0.2.20\n"
    config = build_config({}, agent_environment(SSM_AGENT_ENV, agent_env_file=agent_env, role_env_file=role_env))
    assert (config.role, config.peer_address, config.stack) == ("standby", "10.0.2.20", "envtest")


def test_without_agent_env_the_agent_says_so(
    run_command_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a host without agent.env (user data never ran) and Run Command's environment
    missing = tmp_path / "agent.env"
    # When apply is sent
    code = main(["apply", "--version", "v0123456789abcdef"], agent_env_file=missing)
    # Then it is a usage failure naming the missing file, as one JSON answer
    out = json.loads(capsys.readouterr().out)
    assert code == 2
    assert out["error_type"] == AgentEnvironmentMissing.__name__
    assert str(missing) in out["error"]


def test_a_unit_that_loaded_the_files_is_not_overridden(tmp_path: Path) -> None:
    # Given the environment systemd built from the unit's EnvironmentFile= lines, and a different agent.env
    agent_env, role_env = _host_files(tmp_path)
    from_unit = {**SSM_AGENT_ENV, "SIP_TRUNK_STACK": "from-unit", "SIP_TRUNK_ROLE": "primary"}
    # When the agent builds its settings
    config = build_config({}, agent_environment(from_unit, agent_env_file=agent_env, role_env_file=role_env))
    # Then it uses the unit's
    assert (config.stack, config.role, config.backup_bucket) == ("from-unit", "primary", None)


def test_an_unknown_setting_in_agent_env_is_refused(tmp_path: Path) -> None:
    agent_env, _ = _host_files(tmp_path)
    agent_env.write_text(agent_env.read_text() + "SIP_TRUNK_BACKUP_BUKET=typo\n")
    with pytest.raises(ValueError, match="SIP_TRUNK_BACKUP_BUKET"):
        agent_environment(SSM_AGENT_ENV, agent_env_file=agent_env)


def test_bootstrap_env_file_wins_and_install_units_needs_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # bootstrap --env-file: the file's values win over the environment
    agent_env, _ = _host_files(tmp_path)
    env = agent_environment({"SIP_TRUNK_STACK": "old"}, env_file=agent_env)
    assert env["SIP_TRUNK_STACK"] == "envtest"
    # install-units runs at image build, before any agent.env exists
    units = tmp_path / "units"
    code = main(["--units-dir", str(units), "--systemctl", "", "install-units"], agent_env_file=tmp_path / "none")
    assert code == 0, capsys.readouterr().out
    assert (units / "sip-trunk-agent.service").is_file()
