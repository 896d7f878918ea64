"""The scheduled steps, health check and backup (`sip_trunk.workflows.health`, `.backup`), over fakes."""

from __future__ import annotations

import json

import pytest
from sip_trunk.errors import BackupFailed
from sip_trunk.sip import CertificateReport, CertificateTarget
from sip_trunk.workflows import backup, health
from support.fakes import (
    PRIMARY,
    PUBLIC_IP,
    STANDBY,
    FakeCertificates,
    FakeSettings,
    FakeWorld,
    ManualClock,
    settings_document,
    workflow_config,
)

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


# --- the gateway certificate's days left (transport tls) ------------------------------------------
CERT_HOST = "sip.gateway.example"
DAY = 86_400


def tls_world(clock: ManualClock, days_left: float = 30.5, *, verified: bool = True) -> FakeWorld:
    document = settings_document(transport="tls")
    document["network"] |= {"public_hostname": CERT_HOST}
    document["tls"] = {"enabled": True}
    mapping = {PUBLIC_IP: "127.0.0.1:5099", CERT_HOST: "127.0.0.1:5098"}
    world = FakeWorld(config=workflow_config(PROBE_TARGETS=mapping), settings=FakeSettings(document))
    world.deployed()
    world.prober.answers[PROBED] = 200
    target = CertificateTarget(server_name=CERT_HOST, host="127.0.0.1", port=5098)
    report = CertificateReport(
        target=target,
        verified=verified,
        subject_names=(CERT_HOST,),
        issuer="Test CA",
        not_after=clock.now() + days_left * DAY,
        error=None if verified else "certificate rejected: certificate has expired",
    )
    world.certificates = FakeCertificates({CERT_HOST: report})
    return world


def certificate_metric(report: health.HealthReport) -> float | None:
    return next((m.value for m in health.metrics(report) if m.name == "GatewayCertificateDaysLeft"), None)


def test_health_publishes_the_certificate_days_left_once_an_hour(clock: ManualClock) -> None:
    # Given a TLS deployment whose certificate has 30.5 days left, checked at the top of the hour
    clock.value = 1_800_000_000.0 - 1_800_000_000.0 % 3600 + 5
    world = tls_world(clock)
    # When the health check runs that minute, Then it publishes 30 whole days
    first = health.health_check(world.deps, "run-0")
    assert first.certificate is not None
    assert (first.certificate.server_name, first.certificate.days_left) == (CERT_HOST, 30)
    assert certificate_metric(first) == 30.0
    # And the rest of the hour it makes no handshake (each is a connection Asterisk counts, ADR-31)
    later = []
    for _ in range(59):
        clock.advance(60)
        later.append(health.health_check(world.deps, "run-n"))
    assert all(r.certificate is None and certificate_metric(r) is None for r in later)
    assert len(world.certificates.checked) == 1  # type: ignore[attr-defined]
    clock.advance(60)
    assert certificate_metric(health.health_check(world.deps, "run-60")) == 30.0  # the next hour checks again
    assert len(world.certificates.checked) == 2  # type: ignore[attr-defined]


def test_health_counts_a_refused_certificate_as_no_days_left_and_never_fails_over(clock: ManualClock) -> None:
    clock.value = 1_800_000_000.0 - 1_800_000_000.0 % 3600
    world = tls_world(clock, days_left=-1, verified=False)
    report = health.health_check(world.deps, "run-0")
    assert certificate_metric(report) == 0.0
    assert report.consecutive_failures == 0
    assert world.executions.started == {}


def test_health_over_tcp_checks_no_certificate(clock: ManualClock) -> None:
    clock.value = 1_800_000_000.0 - 1_800_000_000.0 % 3600
    world = FakeWorld()
    world.deployed()
    world.prober.answers[PROBED] = 200
    report = health.health_check(world.deps, "run-0")
    assert report.certificate is None
    assert certificate_metric(report) is None
    assert world.certificates.checked == []  # type: ignore[attr-defined]


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
