"""The drills through the CLI, as an operator runs them: `local up` → `drill failover` → `drill bad-config` →
`drill restore` → `drill failover` on the restored hosts → `local down`, then nothing of the run is left (no
namespace, process, mount or iptables chain)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sip_trunk_local.asterisk_runner import process_alive
from sip_trunk_local.netns import list_namespaces

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "sip_trunk.cli"]
PUBLIC_IP = "203.0.113.10"


def sip_trunk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def iptables_rules() -> set[str]:
    """The rules of this machine's own network namespace (the run's NAT lives in its namespaces only)."""
    proc = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    return {line for line in proc.stdout.splitlines() if not line.startswith(("#", ":"))}


def counter_owner_alive(rule: str) -> bool:
    """The rule belongs to an RTP counter (chain ``RTPC<pid>_<n>``) of a process that is still running."""
    owner = re.search(r"\bRTPC(\d+)_\d+\b", rule)
    return owner is not None and process_alive(int(owner.group(1)))


@pytest.fixture
def run_dir(local_run_dir: Callable[[str], Path]) -> Path:
    return local_run_dir("drills")


def drill(run_dir: Path, name: str, *extra: str) -> dict[str, Any]:
    out = run_dir / f"result-{name}.json"
    proc = sip_trunk("local", "drill", name, "--run-dir", str(run_dir), "--json-out", str(out), *extra, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert f"drill {name} passed" in proc.stdout, proc.stdout[-2000:]
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["ok"], result
    return result


def test_drills_failover_bad_config_restore_leave_nothing_behind(run_dir: Path) -> None:
    rules_before = iptables_rules()
    up = sip_trunk("local", "up", "--run-dir", str(run_dir), timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    pid = int((run_dir / "controller.pid").read_text())
    status = json.loads(sip_trunk("local", "status", "--run-dir", str(run_dir), timeout=60).stdout)
    prefix = next(iter(status["hosts"]["hosts"].values()))["netns"].rsplit("-", 1)[0]

    # Failover: the primary crashes; watch-peer + the Failover state machine move the address; a call works
    failover = drill(run_dir, "failover")
    run = failover["runs"][0]
    assert run["detection_s"] > 0, run
    assert run["movement_s"] > 0, run
    assert run["rto_s"] == pytest.approx(run["detection_s"] + run["movement_s"], abs=0.01)
    assert run["rto_s"] < 30, run  # watch-peer probes every 0.5 s, 3 failures
    assert run["execution"].startswith("peer-down-"), run
    assert run["roles_after"] == {"primary": run["roles_before"]["standby"], "standby": run["roles_before"]["primary"]}
    assert run["lock_released"] is True
    assert any("failover done" in s for s in run["notifications"]), run["notifications"]
    assert run["call"]["ok"], run["call"]
    assert run["call"]["audio_both_ways"], run["call"]
    assert run["call"]["public_ip"] == PUBLIC_IP
    assert {"MoveAddress", "VerifyAddress", "SwapRoles", "ReleaseLock", "FailedOver"} <= set(run["states_s"])
    assert failover["rto_s"]["median"] > 0
    after = json.loads(sip_trunk("local", "status", "--run-dir", str(run_dir), timeout=60).stdout)
    assert after["elastic_ip"] == {"address": PUBLIC_IP, "instance_id": run["roles_after"]["primary"]}
    assert after["hosts"]["hosts"][run["roles_after"]["standby"]]["watch_peer_running"]  # re-armed

    # Bad config: a version Asterisk rejects is rolled back; the held call and a new call work
    bad = drill(run_dir, "bad-config")
    assert bad["provision_status"] == "FAILED", bad
    assert bad["provision_error"] == "ProvisionFailed", bad
    assert "ProvisionFailed" in bad["failed_states"], bad
    assert bad["failed_step"] in bad["notification"]["subject"], bad["notification"]
    assert bad["failed_step"] in ("ApplyConfig", "CheckApply"), bad
    assert bad["agent_errors"], bad
    assert all("rolled back" in e for e in bad["agent_errors"]), bad
    assert bad["held_call"]["ok"], bad["held_call"]
    assert bad["held_call"]["audio_both_ways"], bad["held_call"]
    assert bad["call"]["ok"], bad["call"]
    assert set(bad["running_versions"].values()) == {bad["good_version"]}, bad["running_versions"]

    # Restore: backup, hosts lost, Provision makes fresh ones, the backup restored onto the new primary
    restore = drill(run_dir, "restore")
    assert restore["new_primary"] not in restore["old_hosts"], restore
    assert restore["restored_version"] == restore["backup_version"], restore
    assert restore["files_identical"], restore
    assert restore["astdb_marker_restored"], restore
    assert any(name.startswith("config/") for name in restore["files"]), restore["files"]
    assert any(name.startswith("voicemail/") for name in restore["files"]), restore["files"]
    assert restore["call"]["ok"], restore["call"]
    assert restore["call"]["audio_both_ways"], restore["call"]

    # The fresh pair fails over as well
    again = drill(run_dir, "failover")["runs"][0]
    assert again["roles_before"]["primary"] == restore["new_primary"], again
    assert again["call"]["ok"], again

    down = sip_trunk("local", "down", "--run-dir", str(run_dir), timeout=300)
    assert down.returncode == 0, down.stderr
    assert not process_alive(pid)
    assert [ns for ns in list_namespaces() if ns.startswith(prefix + "-")] == []
    assert str(run_dir) not in Path("/proc/mounts").read_text()
    leftovers = subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True, text=True, check=False)
    assert leftovers.stdout.strip() == "", leftovers.stdout
    # nothing added by the run is left (other processes' rules may come and go meanwhile: an RTP counter's
    # chain is named after its owner's PID, and one whose owner still runs is not the finished run's)
    assert {rule for rule in iptables_rules() - rules_before if not counter_owner_alive(rule)} == set()
    assert not (run_dir / "control.sock").exists()
