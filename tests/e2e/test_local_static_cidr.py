"""The static-range drill: `local up --elevenlabs-static-cidr` with the hosts' security group enforced.

SIP TCP then reaches the hosts only from the ElevenLabs range (the stand-in, 198.51.100.20), the allowed carrier
network, the other host and the in-VPC probe function (ADR-27). Provision's VerifyTrunk must still verify (its
probe goes through the probe function to the primary's private address), the standby's watch-peer must not
fail over a healthy primary, and the failover drill must detect a real crash, move the address and verify it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "sip_trunk.cli"]
PUBLIC_IP = "203.0.113.10"


def sip_trunk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def run_dir(local_run_dir: Callable[[str], Path]) -> Path:
    return local_run_dir("static")


def status(run_dir: Path) -> dict[str, Any]:
    proc = sip_trunk("local", "status", "--run-dir", str(run_dir), timeout=60)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_static_range_provisions_keeps_a_healthy_primary_and_fails_over_a_crashed_one(run_dir: Path) -> None:
    # When the operator deploys with the ElevenLabs static range and the carrier's network allowed
    up = sip_trunk(
        "local", "up", "--run-dir", str(run_dir),
        "--elevenlabs-static-cidr", "198.51.100.0/24", "--allowed-sip-cidrs", "198.51.100.50/32",
        timeout=900,
    )  # fmt: skip
    # Then Provision verifies the trunk (VerifyTrunk's probe is admitted) and the carrier's call works
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    log = (run_dir / "controller.log").read_text(errors="replace")
    assert "-vprobe: " in log, "VerifyTrunk did not probe through the in-VPC probe function"
    before = status(run_dir)
    primary = before["elastic_ip"]["instance_id"]

    # and the standby's watch-peer, probing the primary's private address, raises no false alarm
    time.sleep(3.0)  # six watch-peer probes at the local 0.5 s interval
    after = status(run_dir)
    assert after["elastic_ip"] == {"address": PUBLIC_IP, "instance_id": primary}
    standby = next(i for i, h in after["hosts"]["hosts"].items() if h["role"] == "standby")
    watch_log = (Path(after["hosts"]["hosts"][standby]["root"]).parent / "watch-peer.log").read_text(errors="replace")
    assert "probe failed" not in watch_log, watch_log[-2000:]

    # When the primary really crashes, the failover drill detects it, moves the address and verifies it
    out = run_dir / "result-failover.json"
    proc = sip_trunk("local", "drill", "failover", "--run-dir", str(run_dir), "--json-out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["ok"], result
    run = result["runs"][0]
    assert run["execution"].startswith("peer-down-"), run
    assert run["roles_after"]["primary"] == standby
    assert {"MoveAddress", "VerifyAddress", "SwapRoles", "FailedOver"} <= set(run["states_s"])
    assert run["call"]["audio_both_ways"], run["call"]

    down = sip_trunk("local", "down", "--run-dir", str(run_dir), timeout=300)
    assert down.returncode == 0, down.stderr
