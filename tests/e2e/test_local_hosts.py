"""Local hosts (sip_trunk_local.hosts) with the real host agent and real calls.

A config published to a moto server's SSM is applied through `run_command` exactly as SSM Run Command would
run it; a carrier calls the DID through the emulated Elastic IP to the ElevenLabs stand-in with audio both
ways; a broken version is rolled back with calls still working; the Elastic IP moves to a second host and the
next call lands there; a crashed primary is noticed by the standby's watch-peer (which starts the Failover
state machine in moto); and teardown, from another process, leaves nothing behind."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from sip_trunk import configstore
from sip_trunk.manifest import MANIFEST_NAME, Manifest
from sip_trunk.render import render_configs
from sip_trunk.settings import parse_secrets, parse_settings
from sip_trunk_local.asterisk_runner import DEFAULT_ROOT
from sip_trunk_local.hosts import LocalHostManager
from sip_trunk_local.standin import Standin, carrier_settings, credentials, place_call, start_standin

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK = "localhosts"
PREFIX = f"/sip-trunk/{STACK}/asterisk"
PUBLIC_IP = "203.0.113.10"
PRIMARY, STANDBY = "i-0a1b2c3d4e5f60001", "i-0a1b2c3d4e5f60002"
MEASURED: dict[str, float] = {}


def _settings() -> tuple[dict[str, Any], dict[str, str]]:
    settings = yaml.safe_load((REPO / "examples/minimal.yaml").read_text())
    secrets = yaml.safe_load((REPO / "examples/minimal.secrets.yaml").read_text())
    settings.update(carrier_settings(settings["elevenlabs"]["phone_number"]))
    settings["network"] = {"public_address": PUBLIC_IP, "local_nets": ["10.0.0.0/24"]}
    return settings, secrets


def _client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service, region_name=REGION, endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


@pytest.fixture
def world(moto_endpoint: str, tmp_path: Path) -> Iterator[tuple[LocalHostManager, str]]:
    sfn = _client(moto_endpoint, "stepfunctions")
    iam_role = "arn:aws:iam::123456789012:role/failover"
    definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
    arn = sfn.create_state_machine(name=f"failover-{tmp_path.name}", definition=definition, roleArn=iam_role)[
        "stateMachineArn"
    ]
    run_dir = tmp_path / "run"
    manager = LocalHostManager(
        run_dir,
        DEFAULT_ROOT,
        moto_endpoint,
        REGION,
        agent_env={"SIP_TRUNK_STACK": STACK, "SIP_TRUNK_FAILOVER_STATE_MACHINE_ARN": arn},
        watch_interval_s=0.5,
        watch_failures=3,
        watch_timeout_s=0.5,
    )
    try:
        yield manager, arn
    finally:
        # `sip-trunk local down` runs in another process: it must find and end everything from the state file
        down = subprocess.run(
            [sys.executable, "-c", _TEARDOWN, str(run_dir), str(DEFAULT_ROOT), moto_endpoint, REGION],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if down.returncode != 0:
            manager.teardown()  # never leave namespaces behind, even when the other process failed
        assert down.returncode == 0, down.stderr
        assert manager.leftovers() == {"processes": [], "namespaces": [], "mounts": []}


_TEARDOWN = """
import sys, json
from pathlib import Path
from sip_trunk_local.hosts import LocalHostManager
m = LocalHostManager(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4])
removed = m.teardown()
assert removed["namespaces"], removed
print(json.dumps(removed))
"""


def _publish(endpoint: str, settings: dict[str, Any], secrets: dict[str, str]) -> str:
    rendered = render_configs(
        parse_settings(settings, "test"), parse_secrets(secrets, "test"), public_address=PUBLIC_IP
    )
    configstore.publish_config(
        _client(endpoint, "ssm"), PREFIX, rendered.files, rendered.secret_files, rendered.version
    )
    return rendered.version


def _publish_broken(endpoint: str, settings: dict[str, Any], secrets: dict[str, str]) -> str:
    """A version whose manifest is consistent but one of whose endpoints does not load (an unknown option)."""
    rendered = render_configs(
        parse_settings(settings, "test"), parse_secrets(secrets, "test"), public_address=PUBLIC_IP
    )
    files = dict(rendered.files)
    files["asterisk/pjsip.conf"] += b"\n[broken-endpoint]\ntype = endpoint\nthis_option_does_not_exist = yes\n"
    files[MANIFEST_NAME] = Manifest.for_files({k: v for k, v in files.items() if k != MANIFEST_NAME}).to_json()
    version = Manifest.from_json(files[MANIFEST_NAME]).version
    configstore.publish_config(_client(endpoint, "ssm"), PREFIX, files, rendered.secret_files, version)
    return version


def _apply(manager: LocalHostManager, instance_id: str, version: str) -> dict[str, Any]:
    started = time.monotonic()
    code, out, err = manager.run_command(instance_id, ["sip-trunk-agent", "apply", "--version", version], {})
    MEASURED[f"apply {instance_id}"] = time.monotonic() - started
    assert code == 0, f"apply failed ({code}):\n{out}\n{err[-3000:]}"
    result: dict[str, Any] = json.loads(out)
    assert result["ok"], result
    assert result["version"] == version, result
    return result


def _calls_processed(text: str) -> int:
    m = re.search(r"(\d+) calls? processed", text)
    assert m, text
    return int(m.group(1))


def _call(manager: LocalHostManager, standin: Standin, did: str, workdir: Path, label: str) -> None:
    call = place_call(manager, standin, did, workdir, public_ip=PUBLIC_IP, duration_ms=2000)
    MEASURED[f"call {label}"] = call.seconds
    assert call.ok, call.describe()
    assert call.agent_calls == [did], call.describe()
    # 2 s of 20 ms packets = 100 per direction on each leg (the agent echoes what it hears)
    rtp = call.summary()["rtp"]
    assert min(rtp.values()) >= 50, f"audio did not flow both ways on both legs: {rtp}"


def test_apply_call_move_eip_call_again_crash(world: tuple[LocalHostManager, str], tmp_path: Path) -> None:
    manager, failover_arn = world
    endpoint = manager.moto_endpoint
    settings, secrets = _settings()
    did = settings["elevenlabs"]["phone_number"]
    version = _publish(endpoint, settings, secrets)

    # Given the ElevenLabs stand-in and a primary host that boots the image's bootstrap config
    standin = start_standin(manager, credentials(settings, secrets), public_ip=PUBLIC_IP)
    primary = manager.start_host(PRIMARY, "10.0.0.10", "primary")
    MEASURED["start primary"] = primary.started_seconds or 0
    assert primary.asterisk.running
    assert "transport-tcp" in primary.rx("pjsip show transports")

    # When the agent applies the published version (as SSM Run Command runs it) and the EIP maps to it
    result = _apply(manager, PRIMARY, version)
    assert result["changed"], result
    assert result["restart_required"], result  # the bootstrap modules.conf → the rendered one
    assert "elevenlabs" in primary.rx("pjsip show endpoints")
    started = time.monotonic()
    manager.map_public_address(PUBLIC_IP, PRIMARY)
    MEASURED["map eip"] = time.monotonic() - started

    # Then the public address answers SIP from outside, and a carrier call to the DID through it reaches the
    # agent with audio both ways
    probe = manager.probe_public(PUBLIC_IP)
    assert probe["reachable"], probe
    _call(manager, standin, did, tmp_path / "call1", "via primary")

    # When a broken version is pushed (a dialplan context the rendered files declare fails to load)
    broken = _publish_broken(endpoint, settings, secrets)
    code, out, err = manager.run_command(PRIMARY, ["sip-trunk-agent", "apply", "--version", broken], {})
    # Then the agent reports failure, rolls back, and calls keep working
    assert code == 1, (code, out, err[-2000:])
    assert json.loads(out)["ok"] is False, out
    assert "rolled back" in json.loads(out)["error"], out
    _call(manager, standin, did, tmp_path / "call1b", "after rollback")
    assert "STANDIN" not in primary.log_text("messages")

    # Given a standby with the same version, watching the primary
    standby = manager.start_host(STANDBY, "10.0.0.11", "standby")
    MEASURED["start standby"] = standby.started_seconds or 0
    _apply(manager, STANDBY, version)
    # (the control plane gives every launched host its role: CheckHostStack's set-role, ADR-12)
    role = ["sip-trunk-agent", "set-role", "--role", "standby", "--peer-address", "10.0.0.10"]
    code, out, err = manager.run_command(STANDBY, role)
    assert code == 0, (out, err[-2000:])
    assert manager.status()["hosts"][STANDBY]["watch_peer_running"]
    assert manager.status()["hosts"][STANDBY]["peer_address"] == "10.0.0.10"

    # When the Elastic IP moves to the standby
    started = time.monotonic()
    manager.map_public_address(PUBLIC_IP, STANDBY)
    MEASURED["move eip"] = time.monotonic() - started
    assert manager.public_mapping() == {PUBLIC_IP: STANDBY}

    # Then the next call on the same address is carried by the standby, not the primary
    primary_calls = _calls_processed(primary.rx("core show calls"))
    _call(manager, standin, did, tmp_path / "call2", "via standby")
    assert _calls_processed(standby.rx("core show calls")) >= 1, "the standby took no call"
    assert _calls_processed(primary.rx("core show calls")) == primary_calls, "the primary still took the call"

    # When the primary's Asterisk crashes
    sfn = _client(endpoint, "stepfunctions")
    killed = time.monotonic()
    manager.kill_host(PRIMARY)
    assert not primary.asterisk.running

    # Then the standby's watch-peer notices (3 failed probes) and starts the Failover state machine
    executions: list[dict[str, Any]] = []
    while time.monotonic() - killed < 20 and not executions:
        executions = sfn.list_executions(stateMachineArn=failover_arn)["executions"]
        time.sleep(0.2)
    MEASURED["crash -> failover started"] = time.monotonic() - killed
    watch_log = (standby.base / "watch-peer.log").read_text(errors="replace")
    assert executions, f"no failover execution; watch-peer log:\n{watch_log[-3000:]}"
    assert executions[0]["name"].startswith("peer-down-10-0-0-10-5060"), executions

    # And the standby still answers on the public address
    _call(manager, standin, did, tmp_path / "call3", "after crash")

    # When the Failover workflow makes it the primary (SSM Run Command `set-role`)
    code, out, err = manager.run_command(STANDBY, ["sip-trunk-agent", "set-role", "--role", "primary"], {})
    assert code == 0, (out, err[-2000:])
    # Then its watch-peer ends, as systemd stops the unit on EC2
    status = manager.status()["hosts"][STANDBY]
    assert status["role"] == "primary", status
    assert not status["watch_peer_running"], status
    print("\nlocal host timings (s): " + json.dumps({k: round(v, 2) for k, v in MEASURED.items()}))


def test_stop_host_removes_its_namespace_and_mapping(world: tuple[LocalHostManager, str]) -> None:
    manager, _ = world
    host = manager.start_host(PRIMARY, "10.0.0.10", "primary")
    manager.map_public_address(PUBLIC_IP, PRIMARY)
    assert manager.public_mapping() == {PUBLIC_IP: PRIMARY}
    manager.stop_host(PRIMARY)
    assert manager.public_mapping() == {}
    assert host.netns not in manager.status()["namespaces"]
    assert not host.asterisk.running
    assert (host.base / "logs").is_dir()
    left = manager.leftovers()
    assert left["mounts"] == [], left
    assert not any(PRIMARY in p for p in left["processes"]), left


def test_backup_destroy_fresh_host_restore_call(world: tuple[LocalHostManager, str], tmp_path: Path) -> None:
    manager, _ = world
    endpoint = manager.moto_endpoint
    bucket = f"{STACK}-backups-{tmp_path.name}".lower().replace("_", "-")[:63]
    _client(endpoint, "s3").create_bucket(Bucket=bucket)
    env = {"SIP_TRUNK_BACKUP_BUCKET": bucket}
    settings, secrets = _settings()
    did = settings["elevenlabs"]["phone_number"]
    version = _publish(endpoint, settings, secrets)
    standin = start_standin(manager, credentials(settings, secrets), public_ip=PUBLIC_IP)

    # Given a serving primary that is backed up (as the daily Backup schedule runs it)
    manager.start_host(PRIMARY, "10.0.0.10", "primary")
    _apply(manager, PRIMARY, version)
    manager.map_public_address(PUBLIC_IP, PRIMARY)
    code, out, err = manager.run_command(PRIMARY, ["sip-trunk-agent", "backup"], env)
    assert code == 0, (out, err[-2000:])
    backup = json.loads(out)
    assert backup["version"] == version, backup

    # When the host is destroyed and a fresh one (bootstrap config only) takes its place and address
    manager.stop_host(PRIMARY)
    fresh = manager.start_host(STANDBY, "10.0.0.10", "primary")
    assert "elevenlabs" not in fresh.rx("pjsip show endpoints")
    manager.map_public_address(PUBLIC_IP, STANDBY)
    started = time.monotonic()
    code, out, err = manager.run_command(STANDBY, ["sip-trunk-agent", "restore", "--key", backup["key"]], env)
    MEASURED["restore"] = time.monotonic() - started

    # Then the restored host runs the backed-up version and carries a call through the same address
    assert code == 0, (out, err[-2000:])
    assert json.loads(out)["version"] == version, out
    assert "elevenlabs" in fresh.rx("pjsip show endpoints")
    _call(manager, standin, did, tmp_path / "call", "after restore")
    print(f"\nrestore took {MEASURED['restore']:.2f} s")
