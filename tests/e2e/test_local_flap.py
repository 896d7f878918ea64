"""Failover without a split brain, through the CLI (`sip-trunk local drill flap`), on one local deployment:

- one run of each deterministic scenario: ``crash`` (the primary's Asterisk dies; watch-peer's execution and a
  second one for the same outage meet at AcquireLock), ``reboot`` (the primary loses power, the failover runs while
  it is down, it boots from its disk whose role.env says primary), ``partition`` (the hosts cannot reach each
  other, both see the outside: a false alarm), with the Elastic IP sampled throughout (router NAT, EC2's
  association, SIP answers) and the lock and moves recorded: no violation;
- negative controls, each a planted defect the same checks must report: ``stale-role`` (the rebooted host boots
  with its launch role in agent.env, i.e. trusts its own record over the state table) is reported as a host that
  booted primary while the table names the other; ``ignore-lock`` (the lock's conditional write made
  unconditional) is reported as two executions holding the lock at once.

All twenty drills, with the ``blip`` scenario, run in the benchmark (`python -m bench.run --only flap`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]  # one `local up` and five drills: 5-12 minutes on 2 cores

CLI = [sys.executable, "-m", "sip_trunk.cli"]


def sip_trunk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def run_dir(local_run_dir: Callable[[str], Path]) -> Path:
    return local_run_dir("flap")


def flap(run_dir: Path, tag: str, *extra: str) -> dict[str, Any]:
    out = run_dir / f"flap-{tag}.json"
    proc = sip_trunk("local", "drill", "flap", "--run-dir", str(run_dir), "--json-out", str(out), *extra, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_flapping_primary_never_splits_the_brain_and_planted_defects_are_caught(run_dir: Path) -> None:
    up = sip_trunk("local", "up", "--run-dir", str(run_dir), timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    result = flap(run_dir, "drills", "--repeat", "3", "--scenario", "crash", "--scenario", "reboot",
                  "--scenario", "partition")  # fmt: skip
    assert result["violations"] == [], result["violations"]
    crash, reboot, partition = result["runs"]
    assert result["sampler_errors"] == []
    assert all(r["samples"] > 10 for r in result["runs"]), [r["samples"] for r in result["runs"]]

    # crash: one execution moved the address, the second was refused the lock
    assert sorted(crash["executions"].values()) == ["already_in_progress", "failed_over"], crash
    assert len(crash["moves"]) == 1, crash

    # reboot: moved while the old primary was down; it booted the standby from the state table, its
    # set-role waited for it
    assert len(reboot["moves"]) == 1, reboot
    assert reboot["roles_before"]["primary"] == crash["roles_before"]["standby"]  # the other host flapped
    assert (reboot["boot"]["role"], reboot["boot"]["role_source"]) == ("standby", "state-table"), reboot
    assert reboot["set_role_waiting"] >= 1, reboot

    # partition: a false alarm, no lock, no move
    assert list(partition["executions"].values()) == ["false_alarm"], partition
    assert partition["moves"] == [], partition

    # negative control: a host trusting its own record of its role is caught
    stale = flap(run_dir, "stale-role", "--scenario", "reboot", "--plant", "stale-role")
    booted = stale["runs"][0]
    assert booted["boot"]["role"] == "primary", booted
    primary_now = booted["roles_before"]["standby"]
    assert (
        f"{booted['roles_before']['primary']} booted primary while the state table names {primary_now} primary"
        in (stale["violations"])
    ), stale["violations"]

    # negative control: a lock that does not exclude is caught
    unlocked = flap(run_dir, "ignore-lock", "--scenario", "crash", "--plant", "ignore-lock")
    both = sorted(unlocked["runs"][0]["executions"])
    assert f"two Failover executions held the lock at once: {both[1]} and {both[0]}" in unlocked["violations"] or (
        f"two Failover executions held the lock at once: {both[0]} and {both[1]}" in unlocked["violations"]
    ), unlocked["violations"]
