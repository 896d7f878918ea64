"""The scheduled steps, health check and backup (`sip_trunk.workflows.health`, `.backup`), over fakes."""

from __future__ import annotations

import json

import pytest
from sip_trunk.errors import BackupFailed
from sip_trunk.workflows import backup, health
from support.fakes import PRIMARY, STANDBY, FakeWorld, ManualClock

pytestmark = pytest.mark.unit

VERSION = "v0123456789abcdef"
PROBED = "127.0.0.1"


def test_health_counts_failed_probes_and_starts_one_failover_at_the_threshold(clock: ManualClock) -> None:
    # Given a deployment whose Elastic IP stopped answering
    world = FakeWorld()
    world.deployed()
    threshold = world.config.failure_threshold
    # When the check runs K times
    reports = [health.health_check(world.deps, f"run-{n}") for n in range(threshold + 1)]
    # Then the K-th starts the Failover workflow, and the next does not start another
    assert [r.consecutive_failures for r in reports] == list(range(1, threshold + 2))
    assert [r.failover_execution for r in reports] == [None] * (threshold - 1) + [f"health-run-{threshold - 1}", None]
    assert list(world.executions.started) == [f"health-run-{threshold - 1}"]
    assert world.executions.started[f"health-run-{threshold - 1}"][1]["source"] == "health_check"


def test_health_resets_the_count_when_the_address_answers(clock: ManualClock) -> None:
    world = FakeWorld()
    world.deployed()
    world.config_store.desired = VERSION
    health.health_check(world.deps, "run-0")
    world.prober.answers[PROBED] = 200
    world.state.beat(PRIMARY, clock.now(), VERSION)
    world.state.beat(STANDBY, clock.now(), "vfedcba9876543210")
    report = health.health_check(world.deps, "run-1")
    assert report.consecutive_failures == 0
    assert report.trunk_verified
    assert report.config_drift == 1
    assert [(h.instance_id, h.role, h.drift) for h in report.hosts] == [
        (PRIMARY, "primary", False),
        (STANDBY, "standby", True),
    ]
    names = {(m.name, tuple(m.dimensions.items())): m.value for m in health.metrics(report)}
    assert names[("SipProbeSuccess", ())] == 1.0
    assert names[("ConfigDrift", ())] == 1.0


def test_backup_asks_the_primary_and_snapshots_the_config_store(clock: ManualClock) -> None:
    world = FakeWorld()
    world.deployed()
    world.config_store.publish({"pjsip.conf": b"[x]", "secrets.conf": b"pw"}, frozenset({"secrets.conf"}), VERSION)
    world.commands.outcome[PRIMARY] = "Success"
    result = backup.backup(world.deps, "daily-1")
    assert result.host_status == "Success"
    assert [(c.instance_ids, c.commands) for c in world.commands.sent] == [((PRIMARY,), ("sip-trunk-agent backup",))]
    body = json.loads(world.objects.objects[(world.config.backup_bucket, result.snapshot_key)])
    assert result.parameters == 2
    assert "pw" not in json.dumps(body)  # SecureString values never enter the snapshot


def test_backup_before_the_first_provision_does_nothing() -> None:
    world = FakeWorld()
    result = backup.backup(world.deps, "daily-1")
    assert result.status == backup.NOT_PROVISIONED
    assert world.objects.uploads == 0
    assert world.commands.sent == []


def test_a_failed_host_backup_fails_the_backup(clock: ManualClock) -> None:
    world = FakeWorld()
    world.deployed()
    world.commands.outcome[PRIMARY] = "Failed"
    with pytest.raises(BackupFailed, match="config snapshot saved"):
        backup.backup(world.deps, "daily-1")
    assert world.objects.uploads == 1
