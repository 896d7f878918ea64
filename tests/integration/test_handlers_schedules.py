"""The scheduled handlers against moto, driven by real event shapes from tests/events."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws
from support.moto_sfn import FakeContext, load_handlers
from support.world import BACKUPS, REGION, build_world

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


def test_backup_without_a_host_fails_and_reports_zero(world, handlers, capsys):
    # Given no recorded deployment
    # When the schedule fires
    with pytest.raises(Exception, match="no host is recorded"):
        handlers["backup"](event("schedule_event.json"), FakeContext("backup"))
    # Then BackupSucceeded 0 is published
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"BackupSucceeded"' in line]
    assert out[-1]["BackupSucceeded"] in (0, [0.0], 0.0)


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
