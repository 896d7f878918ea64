"""`sip-trunk local up` → assertions → `local down` → nothing left behind: the whole product on one machine,
run exactly as a user runs it (the CLI, a controller process, real Asterisk hosts, real SIP and RTP)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sip_trunk_local.asterisk_runner import process_alive
from sip_trunk_local.netns import list_namespaces
from sip_trunk_local.orchestrator import EVENTS, read_events
from support.iam_proof import HOST, Proof, e2e_calls, unique, without_statement

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "sip_trunk.cli"]


ARN = "arn:aws:{}:us-east-1:123456789012:{}"
PLANTED = [  # (role, statement removed, the denial the proof must report for this deployment's calls)
    (HOST, "Heartbeat", f"{HOST} may not dynamodb:PutItem on {ARN.format('dynamodb', 'table/sip-local-StateTable-')}"),
    (HOST, "ReadConfig", f"{HOST} may not ssm:GetParametersByPath on {ARN.format('ssm', 'parameter/sip-trunk/')}"),
    ("CheckHostStackFunctionRole", "MoveOwnElasticIp",
     f"CheckHostStackFunctionRole may not ec2:AssociateAddress on {ARN.format('ec2', 'elastic-ip/')}"),
]  # fmt: skip


def sip_trunk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def run_dir(local_run_dir: Callable[[str], Path]) -> Path:
    return local_run_dir("up")


def test_local_up_provisions_calls_and_tears_down(run_dir: Path) -> None:
    # When the user runs `local up`
    up = sip_trunk("local", "up", "--run-dir", str(run_dir), timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    events, _ = read_events(run_dir)
    ready = [e for e in events if e["kind"] == "ready"]
    assert ready, events[-5:]
    summary = ready[0]["summary"]
    pid = int((run_dir / "controller.pid").read_text())

    # Then the real Provision state machine went through every step and deployed a version
    provision = summary["provision"]
    assert provision["version"].startswith("v")
    assert {"ValidateSettings", "RenderConfig", "LaunchHost", "ApplyConfig", "VerifyTrunk", "SyncElevenLabs",
            "RecordDeployment"} <= set(provision["steps_s"])  # fmt: skip
    assert "Provisioned" in provision["states"]
    # and two hosts booted from the host stack, the primary behind the Elastic IP
    roles = sorted(h["role"] for h in summary["hosts"])
    assert roles == ["primary", "standby"]
    # and the carrier's call reached the agent with audio both ways
    call = summary["call"]
    assert call["ok"], call
    assert call["audio_both_ways"], call
    assert call["public_ip"] == "203.0.113.10"
    assert min(call["rtp"].values()) > 50

    # And the permission proof got every principal's calls, each attributed by the credentials local mode
    # gave it: the hosts' (user data, apply, heartbeat), the functions' and the state machine's
    calls, unattributed, _ = e2e_calls(run_dir)
    assert unattributed == []
    operations = {(c.principal, f"{c.service}:{c.operation}") for c in calls}
    assert {(HOST, "dynamodb:PutItem"), (HOST, "ssm:GetParametersByPath"), (HOST, "cloudwatch:PutMetricData"),
            ("ProvisionStateMachineRole", "lambda:Invoke"), ("LaunchHostFunctionRole", "cloudformation:CreateStack")
            } <= operations, sorted(operations)  # fmt: skip
    # and with a needed statement planted out of a role's policy, the proof denies that role's call, naming it
    # (the unaltered policies allow every call: the session's proof evaluates them after `local down`)
    for role, sid, expected in PLANTED:
        denials = unique(Proof(without_statement(sid, role)).check(calls))
        assert any(d.startswith(expected) for d in denials), (role, sid, denials[:3])
        assert all(d.startswith(f"{role} may not") for d in denials), denials

    # When the user asks for the status and places another call
    status = sip_trunk("local", "status", "--run-dir", str(run_dir), timeout=60)
    assert status.returncode == 0, status.stderr
    state = json.loads(status.stdout)
    primary = next(i for i, h in state["hosts"]["hosts"].items() if h["role"] == "primary")
    assert state["elastic_ip"] == {"address": "203.0.113.10", "instance_id": primary}
    assert state["hosts"]["public_addresses"] == {"203.0.113.10": primary}
    again = sip_trunk("local", "call", "--run-dir", str(run_dir), timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["call"]["audio_both_ways"]
    # and lists the last calls: the primary's Asterisk wrote one record per call, both legs with media
    listed = sip_trunk("local", "calls", "--run-dir", str(run_dir), timeout=60)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    records = json.loads(listed.stdout)[primary]
    assert len(records) == 2, records
    assert len({r["call_id"] for r in records}) == 2
    for record in records:
        assert (record["route"], record["disposition"], record["entry"]) == ("agent", "ANSWER", "carrier"), record
        assert record["callee_leg"]["endpoint"] == "elevenlabs", record
        assert min(record["caller_leg"]["rx"]["packets"], record["callee_leg"]["rx"]["packets"]) > 50, record
    namespaces = [h["netns"] for h in state["hosts"]["hosts"].values()]
    prefix = namespaces[0].rsplit("-", 1)[0]

    # When the user runs `local down`
    down = sip_trunk("local", "down", "--run-dir", str(run_dir), timeout=300)
    assert down.returncode == 0, down.stderr

    # Then nothing is left: no controller, no namespace, no mount, no process of the hosts
    assert not process_alive(pid)
    assert [ns for ns in list_namespaces() if ns.startswith(prefix + "-")] == []
    mounts = Path("/proc/mounts").read_text()
    assert str(run_dir) not in mounts
    for host in state["hosts"]["hosts"].values():
        assert not process_alive(int(host["asterisk_pid"]))
    assert not (run_dir / "control.sock").exists()
    assert (run_dir / EVENTS).exists()
