"""Two local deployments on one machine never interfere: a drill on one (a test run) while another (a demo, as
`make demo` starts it) is up. Each has its own run directory, so its own namespaces, sockets, state and logs;
the addresses inside (203.0.113.10, 198.51.100.0/24, 10.0.0.0/24) are the same in both, each set in its own
namespaces."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sip_trunk_local.asterisk_runner import process_alive
from sip_trunk_local.hosts import namespace_prefix
from sip_trunk_local.netns import list_namespaces
from sip_trunk_local.orchestrator import WORLD

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "sip_trunk.cli"]


def sip_trunk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def up(run_dir: Path) -> None:
    proc = sip_trunk("local", "up", "--run-dir", str(run_dir), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def status(run_dir: Path) -> dict[str, Any]:
    proc = sip_trunk("local", "status", "--run-dir", str(run_dir), timeout=60)
    assert proc.returncode == 0, proc.stderr
    state: dict[str, Any] = json.loads(proc.stdout)
    return state


def namespaces(run_dir: Path) -> set[str]:
    prefix = namespace_prefix(run_dir / WORLD)
    return {ns for ns in list_namespaces() if ns.startswith(prefix + "-")}


def drill(run_dir: Path, name: str) -> dict[str, Any]:
    out = run_dir / f"result-{name}.json"
    proc = sip_trunk("local", "drill", name, "--run-dir", str(run_dir), "--json-out", str(out))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_drills_while_another_local_deployment_is_up(local_run_dir: Callable[[str], Path]) -> None:
    # Given another local deployment up (a demo) and the deployment under test, each in its own run directory
    other, mine = local_run_dir("demo"), local_run_dir("drilled")
    up(other)
    up(mine)
    before = status(other)
    # Then they share no namespace, though both serve the same addresses
    other_namespaces = namespaces(other)
    assert {h["netns"] for h in before["hosts"]["hosts"].values()} <= other_namespaces
    assert namespaces(mine)
    assert other_namespaces.isdisjoint(namespaces(mine))
    assert before["elastic_ip"]["address"] == status(mine)["elastic_ip"]["address"] == "203.0.113.10"

    # When the drills run on the deployment under test (a primary killed, the address moved, a bad version)
    failover = drill(mine, "failover")
    assert failover["ok"], failover
    bad = drill(mine, "bad-config")
    assert bad["ok"], bad
    assert bad["provision_error"] == "ProvisionFailed", bad

    # Then the other deployment is untouched: the same hosts and roles, its Asterisks never restarted, the
    # address where it was, and a call through it works
    after = status(other)
    assert after["elastic_ip"] == before["elastic_ip"]
    assert {i: h["role"] for i, h in after["hosts"]["hosts"].items()} == {
        i: h["role"] for i, h in before["hosts"]["hosts"].items()
    }
    for host in before["hosts"]["hosts"].values():
        assert process_alive(int(host["asterisk_pid"])), host
    call = sip_trunk("local", "call", "--run-dir", str(other), timeout=120)
    assert call.returncode == 0, call.stdout + call.stderr
    assert json.loads(call.stdout)["call"]["audio_both_ways"]

    # When the deployment under test is taken down, the other still runs
    down = sip_trunk("local", "down", "--run-dir", str(mine), timeout=300)
    assert down.returncode == 0, down.stderr
    assert namespaces(mine) == set()
    assert namespaces(other) == other_namespaces
    assert status(other)["elastic_ip"] == before["elastic_ip"]
