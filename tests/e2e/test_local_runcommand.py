"""Local hosts run commands the way EC2 does, so a command that only works with the harness's help fails here too.

SSM Run Command (`AWS-RunShellScript`): root, only the SSM agent's environment (PATH, AWS_SSM_INSTANCE_ID,
AWS_SSM_REGION_NAME), the commands in `_script.sh` run by `sh` in a fresh working directory. systemd units:
exactly their unit file's Environment=/EnvironmentFile=. The host's configuration (agent.env, with local mode's
moto endpoint) is a file on the host. Controls plant the defects this must catch: an agent that reads only its
environment, and a unit without one of its EnvironmentFile= lines."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from sip_trunk.agent.bootstrap import WATCH_PEER
from sip_trunk_local.asterisk_runner import DEFAULT_ROOT
from sip_trunk_local.hosts import SSM_AGENT_PATH, LocalHostManager, UnitError

pytestmark = pytest.mark.e2e

REGION = "us-east-1"
STACK = "localruncmd"
PRIMARY, STANDBY = "i-0a1b2c3d4e5f60101", "i-0a1b2c3d4e5f60102"
BUCKET = "localruncmd-backups"


@pytest.fixture
def manager(moto_endpoint: str, tmp_path: Path) -> Iterator[LocalHostManager]:
    s3 = boto3.client(
        "s3", region_name=REGION, endpoint_url=moto_endpoint, aws_access_key_id="t", aws_secret_access_key="t"
    )
    s3.create_bucket(Bucket=BUCKET)
    manager = LocalHostManager(
        tmp_path / "run",
        DEFAULT_ROOT,
        moto_endpoint,
        REGION,
        agent_env={"SIP_TRUNK_STACK": STACK, "SIP_TRUNK_BACKUP_BUCKET": BUCKET, "AWS_REGION": REGION},
    )
    try:
        yield manager
    finally:
        manager.teardown()
        assert manager.leftovers() == {"processes": [], "namespaces": [], "mounts": []}


def test_a_command_gets_only_the_ssm_agents_environment_and_a_fresh_directory(manager: LocalHostManager) -> None:
    # Given a host
    host = manager.start_host(PRIMARY, "10.0.0.10", "primary")
    # When a Run Command script prints what it runs with
    run = manager.run_shell_script(PRIMARY, ["env", "pwd", "id -u", "command -v sip-trunk-agent", "exit 3"])
    lines = run.stdout.splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    # Then its environment is the SSM agent's (plus what sh itself sets), nothing of this process's
    assert set(env) - {"PWD", "SHLVL", "_", "OLDPWD"} == {"PATH", "AWS_SSM_INSTANCE_ID", "AWS_SSM_REGION_NAME"}, env
    assert (env["PATH"], env["AWS_SSM_INSTANCE_ID"], env["AWS_SSM_REGION_NAME"]) == (SSM_AGENT_PATH, PRIMARY, REGION)
    # it runs as root in the orchestration directory that holds its _script.sh, and finds the image's agent
    assert lines[-3] == str(run.workdir), lines
    assert run.workdir.is_relative_to(host.root)
    assert (run.workdir / "_script.sh").read_text().startswith("env\n")
    assert lines[-2:] == ["0", "/usr/local/bin/sip-trunk-agent"]
    # and the script's exit code is the command's
    assert run.code == 3
    # and the host's own agent.env names the moto endpoint (as a real host's names its region)
    agent_env = manager.run_shell_script(PRIMARY, ["cat /etc/sip-trunk/agent.env"]).stdout
    assert f"AWS_ENDPOINT_URL=http://127.0.0.1:{manager.moto_port}" in agent_env
    assert f"SIP_TRUNK_STACK={STACK}" in agent_env


def test_backup_and_set_role_work_from_the_hosts_own_files(manager: LocalHostManager) -> None:
    # Given a host (nothing of the deployment in any process environment)
    manager.start_host(PRIMARY, "10.0.0.10", "primary")
    # When the Backup schedule's and the control plane's commands arrive through Run Command
    backup = manager.run_shell_script(PRIMARY, ["sip-trunk-agent backup"])
    role = manager.run_shell_script(PRIMARY, ["sip-trunk-agent set-role --role primary"])
    # Then both succeed, with the bucket and region agent.env names
    assert backup.code == 0, (backup.stdout, backup.stderr[-2000:])
    assert json.loads(backup.stdout)["bucket"] == BUCKET
    assert role.code == 0, (role.stdout, role.stderr[-2000:])
    # and the heartbeat unit runs with its EnvironmentFile= lines
    code, out, err = manager.run_unit(PRIMARY, "sip-trunk-agent.service")
    assert code == 0, (out, err[-2000:])
    heartbeat = json.loads(out)
    assert (heartbeat["stack"], heartbeat["instance_id"], heartbeat["asterisk_up"]) == (STACK, PRIMARY, True), out


_ENV_ONLY_AGENT = """#!/bin/sh
exec {python} -c '
import sys
import sip_trunk.agent.__main__ as agent
agent.agent_environment = lambda environ, **_: dict(environ)  # planted defect: reads only its environment
sys.exit(agent.main())
' "$@"
"""


def test_control_an_agent_that_only_reads_its_environment_fails_here(manager: LocalHostManager) -> None:
    # Given a host whose agent ignores /etc/sip-trunk/agent.env (the defect this emulation exists to catch)
    host = manager.start_host(PRIMARY, "10.0.0.10", "primary")
    launcher = host.path("/usr/local/bin/sip-trunk-agent")
    launcher.write_text(_ENV_ONLY_AGENT.format(python=sys.executable))
    # When the Backup schedule's command arrives
    run = manager.run_shell_script(PRIMARY, ["sip-trunk-agent backup"])
    # Then it fails for the reason it fails on EC2: no bucket, no stack
    assert run.code == 1, (run.stdout, run.stderr[-2000:])
    assert "no backups bucket" in json.loads(run.stdout)["error"]


def test_control_a_unit_without_its_environment_file_does_not_get_the_variables(manager: LocalHostManager) -> None:
    # Given a standby that has been given its role (role.env), and its shipped watch-peer unit
    manager.start_host(STANDBY, "10.0.0.11", "standby")
    role = manager.run_shell_script(STANDBY, ["sip-trunk-agent set-role --role standby --peer-address 10.0.0.10"])
    assert role.code == 0, (role.stdout, role.stderr[-2000:])
    argv, env = manager.unit_command(STANDBY, WATCH_PEER)
    assert argv[argv.index("--target") + 1] == "10.0.0.10"
    assert env["SIP_TRUNK_STACK"] == STACK
    assert manager.status()["hosts"][STANDBY]["watch_peer_running"]
    # When the unit loses its EnvironmentFile=/etc/sip-trunk/role.env line (the planted defect)
    unit = manager.host(STANDBY).path(f"/etc/systemd/system/{WATCH_PEER}")
    unit.write_text(unit.read_text().replace("EnvironmentFile=/etc/sip-trunk/role.env\n", ""))
    argv, env = manager.unit_command(STANDBY, WATCH_PEER)
    # Then systemd's expansion leaves watch-peer without a target, and it refuses to start
    assert argv[argv.index("--target") + 1] == ""
    assert "SIP_TRUNK_PEER_ADDRESS" not in env
    host = manager.host(STANDBY)
    proc = subprocess.run(manager.host_exec(host, argv), env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-2000:])
    assert "not a valid hostname or IP address: ''" in json.loads(proc.stdout)["error"]
    # And a unit whose required EnvironmentFile= is missing is refused, as systemd refuses it
    host.path("/etc/sip-trunk/role.env").unlink()
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nEnvironmentFile=/etc/sip-trunk/role.env\n"))
    with pytest.raises(UnitError, match=r"role\.env does not exist"):
        manager.unit_command(STANDBY, WATCH_PEER)
