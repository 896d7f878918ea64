"""The Failover state machine, executed by moto with the real handlers."""

from __future__ import annotations

import json
import threading

import pytest
from support.moto_sfn import run, start, states_entered, wait_done

pytestmark = pytest.mark.statemachine

ALARM = {
    "version": "0",
    "id": "c4c1c1c9-6542-e61b-6ef0-8c4d36933a92",
    "detail-type": "CloudWatch Alarm State Change",
    "source": "aws.cloudwatch",
    "account": "123456789012",
    "time": "2026-01-01T00:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:cloudwatch:us-east-1:123456789012:alarm:trunk-sip-probe"],
    "detail": {
        "alarmName": "trunk-sip-probe",
        "state": {"value": "ALARM", "reason": "Threshold Crossed: 3 datapoints were less than 1"},
        "previousState": {"value": "OK", "reason": "ok"},
        "configuration": {"metrics": []},
    },
}


@pytest.fixture
def deployed(machines):
    """A provisioned pair: primary behind the Elastic IP, standby running the same version."""
    result = run(machines.sfn, machines.provision, {})
    assert result["status"] == "SUCCEEDED", result
    machines.world.notifications()
    return json.loads(result["output"])["stack"]


def test_failover_moves_the_address_to_the_standby(machines, deployed):
    # Given a primary that stops answering SIP
    world = machines.world
    world.down.add(deployed["primary_instance_id"])
    # When the alarm starts Failover
    result = run(machines.sfn, machines.failover, ALARM)
    # Then the Elastic IP is on the standby, roles are swapped, the lock is free and one notification says so
    assert result["status"] == "SUCCEEDED", result
    assert world.holder() == deployed["standby_instance_id"]
    deployment = world.item("deployment", "current")
    assert deployment["primary_instance_id"] == deployed["standby_instance_id"]
    assert deployment["standby_instance_id"] == deployed["primary_instance_id"]
    assert world.item("lock#failover", "lock") is None
    notes = world.notifications()
    assert len(notes) == 1
    assert "failover done" in notes[0]["subject"]
    assert "trunk-sip-probe" not in notes[0]["message"] or "alarm" in notes[0]["message"]
    assert json.loads(result["output"])["move"]["moved"] is True


def test_false_alarm_changes_nothing(machines, deployed):
    # Given a primary that still answers SIP
    world = machines.world
    # When the alarm starts Failover
    result = run(machines.sfn, machines.failover, ALARM)
    # Then nothing moves and no lock is taken
    assert result["status"] == "SUCCEEDED"
    assert "FalseAlarm" in states_entered(machines.sfn, result["executionArn"])
    assert world.holder() == deployed["primary_instance_id"]
    assert machines.harness.calls("failover_lock") == []
    assert world.notifications() == []


def test_standby_not_ready_notifies_without_moving(machines, deployed):
    # Given a dead primary and a standby running an old version
    world = machines.world
    world.down.add(deployed["primary_instance_id"])
    world.heartbeat(deployed["standby_instance_id"], "v0000000000000000")
    # When Failover runs
    result = run(machines.sfn, machines.failover, {"reason": "drill"})
    # Then it fails without moving the address, and says why
    assert result["status"] == "FAILED"
    assert world.holder() == deployed["primary_instance_id"]
    notes = world.notifications()
    assert "NO failover" in notes[0]["subject"]
    assert "StandbyNotReady" in notes[0]["message"]


def test_two_concurrent_executions_move_the_address_once(machines, deployed):
    # Given a dead primary, and a first execution paused right after it took the lock
    world = machines.world
    world.down.add(deployed["primary_instance_id"])
    locked, resume = threading.Event(), threading.Event()

    def pause(name, event):
        if name == "failover_move_eip" and event["execution"]["name"] == "first":
            locked.set()
            assert resume.wait(10)

    machines.harness.before.append(pause)
    first = start(machines.sfn, machines.failover, ALARM, name="first")
    assert locked.wait(10)
    # When a second execution starts for the same outage
    second = run(machines.sfn, machines.failover, ALARM, name="second")
    resume.set()
    first_result = wait_done(machines.sfn, first)
    # Then the second ends as a no-op and the address moved exactly once
    assert second["status"] == "SUCCEEDED"
    assert "AlreadyInProgress" in states_entered(machines.sfn, second["executionArn"])
    assert first_result["status"] == "SUCCEEDED", first_result
    moves = [c for c in machines.harness.calls("failover_move_eip") if c.result and c.result["moved"]]
    assert len(moves) == 1
    assert world.holder() == deployed["standby_instance_id"]
    assert world.item("lock#failover", "lock") is None


def test_lock_is_released_when_verification_fails(machines, deployed):
    # Given a dead primary and a standby that reports healthy but does not answer SIP either
    world = machines.world
    world.down.update({deployed["primary_instance_id"], deployed["standby_instance_id"]})
    # When Failover runs
    result = run(machines.sfn, machines.failover, {"reason": "drill"})
    # Then verification retries, fails, the lock is released and the failure is notified
    assert result["status"] == "FAILED"
    assert [c.error for c in machines.harness.calls("failover_verify")][-1] == "TrunkNotVerified"
    assert len(machines.harness.calls("failover_verify")) == 7
    assert world.item("lock#failover", "lock") is None
    notes = world.notifications()
    assert "FAILOVER FAILED" in notes[0]["subject"]
    assert "TrunkNotVerified" in notes[0]["message"]


def test_failover_sets_the_roles_on_both_hosts(machines, deployed):
    # Given a primary whose Asterisk stopped answering (its instance still runs)
    world = machines.world
    old, new = deployed["primary_instance_id"], deployed["standby_instance_id"]
    world.down.add(old)
    # When Failover runs
    result = run(machines.sfn, machines.failover, ALARM)
    # Then the new primary stops watching, the old primary watches the new primary's private address
    assert result["status"] == "SUCCEEDED", result
    peer = world.private_ip(new)
    assert world.roles == {new: ("primary", None), old: ("standby", peer)}
    roles = json.loads(result["output"])["roles"]
    assert [(r["instance_id"], r["role"], r["sent"]) for r in roles["roles"]] == [
        (new, "primary", True),
        (old, "standby", True),
    ]
    assert f"{old} standby watching {peer}" in world.notifications()[0]["message"]


def test_failover_with_the_old_primary_down_still_succeeds(machines, deployed):
    # Given a primary whose instance is stopped (no Run Command can reach it)
    world = machines.world
    old, new = deployed["primary_instance_id"], deployed["standby_instance_id"]
    world.down.add(old)
    world.ec2.stop_instances(InstanceIds=[old])
    sent_before = len(world.sent)
    # When Failover runs
    result = run(machines.sfn, machines.failover, ALARM)
    # Then the address moved and only the new primary was told its role; the notification says the old one
    # was not
    assert result["status"] == "SUCCEEDED", result
    assert world.holder() == new
    assert world.sent[sent_before:] == [(new, "sip-trunk-agent set-role --role primary")]
    assert world.roles[new] == ("primary", None)
    assert world.roles[old] == ("primary", None)  # unchanged since Provision: it was never reached
    assert world.item("lock#failover", "lock") is None
    note = world.notifications()[0]
    assert "failover done" in note["subject"]
    assert f"{old} standby watching ? NOT SET: instance is stopp" in note["message"]


def test_failover_survives_a_failed_send_to_the_old_primary(machines, deployed):
    # Given a dead primary whose instance runs but which Run Command refuses
    world = machines.world
    old, new = deployed["primary_instance_id"], deployed["standby_instance_id"]
    world.down.add(old)
    world.unregistered.add(old)
    # When Failover runs
    result = run(machines.sfn, machines.failover, ALARM)
    # Then it succeeds and reports the host it could not tell
    assert result["status"] == "SUCCEEDED", result
    assert world.holder() == new
    roles = json.loads(result["output"])["roles"]["roles"]
    assert (roles[0]["sent"], roles[1]["sent"]) == (True, False)
    assert "InvalidInstanceId" in roles[1]["detail"]
    assert "NOT SET: HostUnreachable" in world.notifications()[0]["message"]
