"""The scheduled handlers against moto, driven by real event shapes from tests/events."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from sip_trunk.aws.wiring import reset
from sip_trunk.workflows import clock
from support.certificates import TestCa, TlsServer
from support.moto_sfn import FakeContext, load_handlers
from support.world import BACKUPS, REGION, STACK, build_world

pytestmark = pytest.mark.integration

EVENTS = Path(__file__).resolve().parents[1] / "events"


def event(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture
def world(monkeypatch):
    with mock_aws(), build_world(monkeypatch) as world:
        yield world


@pytest.fixture
def handlers(world):
    """Imported once the environment is set (Powertools reads the metric namespace when it is created)."""
    from sip_trunk.observability import metrics

    metrics.namespace = world.env.get("POWERTOOLS_METRICS_NAMESPACE", "AwsSipTrunkTest")
    return load_handlers()


def _deploy(world) -> tuple[str, str]:
    """A recorded deployment: two instances, the Elastic IP on the primary, both reporting v1."""
    return world.deploy_two_hosts()


def test_health_check_healthy(world, handlers, capsys):
    # Given a deployed trunk whose Elastic IP answers SIP
    _deploy(world)
    # When the schedule fires
    report = handlers["health_check"](event("schedule_event.json"), FakeContext("health_check"))
    # Then the probe succeeded, nothing drifted, and the metrics were published as EMF
    assert report["address"]["reachable"] is True
    assert report["trunk_verified"] is True
    assert report["config_drift"] == 0
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    names = {m["Name"] for doc in emf for d in doc["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert {"SipProbeSuccess", "SipProbeLatencyMs", "TrunkVerified", "ConfigDrift"} <= names


def test_health_check_counts_failures_and_starts_failover(world, handlers, monkeypatch):
    # Given a dead primary, a threshold of 2 and the Failover state machine
    primary, _ = _deploy(world)
    world.down.add(primary)
    monkeypatch.setenv("FAILOVER_AFTER_FAILURES", "2")
    from support.world import _reset_caches

    _reset_caches()
    sfn = boto3.client("stepfunctions", region_name=REGION)
    sfn.create_state_machine(
        name="trunk-failover",
        definition=json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/x",
    )
    # When the schedule fires three times (EventBridge Scheduler sends `{}`)
    reports = [handlers["health_check"](event("scheduler_event.json"), FakeContext("health_check")) for _ in range(3)]
    # Then the second failure starts Failover once, and the third does not start another
    assert [r["consecutive_failures"] for r in reports] == [1, 2, 3]
    assert [r["failover_execution"] is not None for r in reports] == [False, True, False]
    executions = sfn.list_executions(stateMachineArn=world.env["FAILOVER_STATE_MACHINE_ARN"])["executions"]
    assert len(executions) == 1


def test_health_check_reports_drift(world, handlers):
    # Given a standby still on an old version
    _, standby = _deploy(world)
    world.heartbeat(standby, "v1111111111111111", at=__import__("time").time())
    # When the schedule fires
    report = handlers["health_check"](event("schedule_event.json"), FakeContext("health_check"))
    # Then drift is counted
    assert report["config_drift"] == 1


def test_backup_snapshots_the_config_tree_without_secret_values(world, handlers, capsys):
    # Given a deployment and a config store holding a secret-bearing file
    _deploy(world)
    ssm = boto3.client("ssm", region_name=REGION)
    prefix = world.env["CONFIG_PREFIX"]
    ssm.put_parameter(Name=f"{prefix}/v0123456789abcdef/asterisk/pjsip.conf", Type="SecureString", Value="secret=x")
    # When the daily schedule fires
    result = handlers["backup"](event("schedule_event.json"), FakeContext("backup"))
    # Then the snapshot is in the backups bucket, the SecureString value is not, and the agent was asked to back up
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=BACKUPS, Key=result["snapshot_key"])["Body"]
    snapshot = json.loads(body.read())
    secure = [p for p in snapshot["parameters"] if p["type"] == "SecureString"]
    assert secure
    assert all("value" not in p for p in secure)
    assert "secret=x" not in json.dumps(snapshot)
    assert result["command_id"]
    assert result["instance_id"] == world.item("deployment", "current")["primary_instance_id"]
    assert '"BackupSucceeded"' in capsys.readouterr().out


# --- before the first Provision ----------------------------------------------------------------------
def emf_metrics(out: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for doc in (json.loads(line) for line in out.splitlines() if '"_aws"' in line):
        for directive in doc["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                value = doc[metric["Name"]]
                found.setdefault(metric["Name"], []).extend(value if isinstance(value, list) else [value])
    return found


def failover_machine() -> str:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    return sfn.create_state_machine(
        name="trunk-failover",
        definition=json.dumps({"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}}),
        roleArn="arn:aws:iam::123456789012:role/x",
    )["stateMachineArn"]


@pytest.fixture
def info_logs(handlers):
    """The functions' log lines at INFO, as in the stack (POWERTOOLS_LOG_LEVEL; the test world runs WARNING)."""
    from sip_trunk.observability import logger

    level, buffer = logger.log_level, io.StringIO()
    logger.setLevel("INFO")
    stream = logger.registered_handler.setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    logger.registered_handler.setStream(stream)  # type: ignore[attr-defined]
    logger.setLevel(level)


def test_health_check_before_the_first_provision_is_a_no_op(world, handlers, info_logs, monkeypatch, capsys):
    # Given a stack just created: no deployment recorded, the Elastic IP on no instance, a threshold of 1
    monkeypatch.setenv("FAILOVER_AFTER_FAILURES", "1")
    from support.world import _reset_caches

    _reset_caches()
    machine = failover_machine()
    capsys.readouterr()
    # When the schedule fires three times
    reports = [
        world.invoke_scheduled(handlers["health_check"], event("scheduler_event.json"), FakeContext("health_check"))
        for _ in range(3)
    ]
    # Then each run says so, nothing is probed or counted, no failover starts, no failure metric, no dead letter
    assert [r["status"] for r in reports] == ["not provisioned yet"] * 3
    assert all(r["address"] is None and r["consecutive_failures"] == 0 for r in reports)
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert sfn.list_executions(stateMachineArn=machine)["executions"] == []
    assert world.item("health#address", "probe") is None
    assert world.dead_letters() == []
    out = capsys.readouterr().out
    assert not {"SipProbeSuccess", "TrunkVerified", "ConfigDrift"} & set(emf_metrics(out))
    logged = [json.loads(line) for line in info_logs.getvalue().splitlines()]
    assert any(doc["message"] == "health check: not provisioned yet" for doc in logged)


def test_backup_before_the_first_provision_is_a_no_op(world, handlers, capsys):
    # Given no recorded deployment
    # When the daily schedule fires
    result = world.invoke_scheduled(handlers["backup"], event("schedule_event.json"), FakeContext("backup"))
    # Then it says so, nothing is written, no dead letter, and BackupSkipped (not BackupSucceeded 0) is published
    assert result["status"] == "not provisioned yet"
    assert result["snapshot_key"] is None
    assert boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=BACKUPS, Prefix=f"{STACK}/")["KeyCount"] == 0
    assert world.dead_letters() == []
    metrics = emf_metrics(capsys.readouterr().out)
    assert metrics.get("BackupSkipped") == [1.0]
    assert "BackupSucceeded" not in metrics


def test_a_failing_scheduled_backup_goes_to_the_dead_letter_queue(world, handlers, monkeypatch, capsys):
    # Control: a deployed stack whose backups bucket is gone; the failure is seen as Lambda would report it
    _deploy(world)
    monkeypatch.setenv("BACKUP_BUCKET", "no-such-bucket")
    from support.world import _reset_caches

    _reset_caches()
    result = world.invoke_scheduled(handlers["backup"], event("schedule_event.json"), FakeContext("backup"))
    assert result is None
    assert len(world.dead_letters()) == 1
    assert emf_metrics(capsys.readouterr().out)["BackupSucceeded"] == [0.0]


def test_a_failed_host_backup_is_reported_as_a_failed_backup(world, handlers, monkeypatch, capsys):
    # Given a deployment whose host agent fails the backup (as it did when Run Command gave it no settings)
    _deploy(world)
    world.fail_commands(monkeypatch, '{"ok": false, "command": "backup", "error": "no backups bucket"}')
    # When the daily schedule fires
    with pytest.raises(Exception, match="no backups bucket") as failed:
        handlers["backup"](event("schedule_event.json"), FakeContext("backup"))
    # Then the handler fails with the host's answer and publishes BackupSucceeded 0, never 1
    assert type(failed.value).__name__ == "BackupFailed"
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"BackupSucceeded"' in line]
    assert [doc["BackupSucceeded"] for doc in out] in ([0], [0.0], [[0.0]])


# --- the gateway certificate's days left (transport tls) ---------------------------------------------
CERT_HOST = "sip.gateway.example"


@pytest.mark.parametrize(("trusted", "published"), [(True, 44.0), (False, 0.0)])
def test_health_check_publishes_the_gateway_certificate_days_left(
    world, handlers, monkeypatch, tmp_path, capsys, trusted, published
):
    # Given a TLS deployment whose host name presents a certificate with 44.5 days left, issued by a CA the
    # system trust store holds (OpenSSL's SSL_CERT_FILE) or by one it does not
    ca = TestCa(tmp_path / "ca")
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    _deploy(world)
    world.put_settings(transport="tls", network={"public_hostname": CERT_HOST}, tls={"enabled": True})
    with TlsServer(*ca.issue(CERT_HOST, days=44.5)) as server:
        targets = json.loads(world.env["PROBE_TARGETS"]) | {CERT_HOST: f"127.0.0.1:{server.port}"}
        monkeypatch.setenv("PROBE_TARGETS", json.dumps(targets))
        reset()
        # When the schedule fires in the first minute of an hour
        hour = time.time() - time.time() % 3600
        clock.set_source(lambda: hour + 1)
        try:
            report = handlers["health_check"](event("schedule_event.json"), FakeContext("health_check"))
        finally:
            clock.set_source(None)
    # Then the report names the certificate and the metric carries its whole days left (0 when refused)
    assert report["certificate"]["server_name"] == CERT_HOST
    assert report["certificate"]["verified"] is trusted
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    values = [doc["GatewayCertificateDaysLeft"] for doc in emf if "GatewayCertificateDaysLeft" in doc]
    assert values == [[published]]
    assert server.server_names == [CERT_HOST]  # one handshake, with the name ElevenLabs dials
