"""Each Failover step handler on its own: invoked as Lambda invokes it, with the Task input the ASL's
Parameters produce (tests/events/failover_task_*.json), against moto and a SIP responder on 127.0.0.1
standing in for whichever instance holds the Elastic IP."""

from __future__ import annotations

import time
from typing import Any

import boto3
import pytest
from sip_trunk.errors import (
    AddressMoveFailed,
    HostNotFound,
    LockHeld,
    PrimaryStillHealthy,
    StandbyNotReady,
    TrunkNotVerified,
)
from support.moto_sfn import REGION
from support.world import API_KEY, INBOUND_PASSWORD, OUTBOUND_PASSWORD

pytestmark = pytest.mark.integration

VERSION = "v3f9a1c0d2b4e6f81"
SECRETS = (INBOUND_PASSWORD, OUTBOUND_PASSWORD, API_KEY)


def deploy(world: Any, *, version: str = VERSION) -> tuple[str, str]:
    """A recorded deployment: two running hosts reporting `version`, the Elastic IP on the primary."""
    primary, standby = world.run_hosts(2)
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=primary)
    world.ddb.put_item(
        Item={
            "pk": "deployment",
            "sk": "current",
            "desired_version": version,
            "active_version": version,
            "primary_instance_id": primary,
            "standby_instance_id": standby,
            "allocation_id": world.allocation_id,
        }
    )
    for instance_id in (primary, standby):
        world.heartbeat(instance_id, version, at=time.time())
    return primary, standby


def plan_event(event: Any, name: str, world: Any, primary: str, standby: str) -> dict[str, Any]:
    ev = event(name)
    ev["plan"].update(
        allocation_id=world.allocation_id, address=world.address, from_instance_id=primary, to_instance_id=standby
    )
    return ev


def same_keys(recorded: Any, real: Any, where: str = "$") -> None:
    if isinstance(recorded, dict) and isinstance(real, dict):
        assert set(recorded) == set(real), f"{where}: recorded {sorted(recorded)} != real {sorted(real)}"
        for key in recorded:
            same_keys(recorded[key], real[key], f"{where}.{key}")
    elif isinstance(recorded, list) and isinstance(real, list) and recorded and real:
        same_keys(recorded[0], real[0], f"{where}[0]")


def association_id(world: Any) -> str | None:
    found = world.ec2.describe_addresses(AllocationIds=[world.allocation_id])["Addresses"][0]
    return found.get("AssociationId")


# --- ConfirmPrimaryDown --------------------------------------------------------------------------------
def test_confirm_alarm_with_a_dead_primary_plans_the_move(world, handlers, event, lambda_context, logs):
    # Given a primary that no longer answers SIP and a ready standby
    primary, standby = deploy(world)
    world.down.add(primary)
    # When the alarm-started execution confirms
    plan = handlers["failover_confirm"](event("failover_task_confirm.json"), lambda_context)
    # Then the plan moves the address from the primary to the standby, and nothing has changed yet
    assert plan["allocation_id"] == world.allocation_id
    assert plan["address"] == world.address
    assert (plan["from_instance_id"], plan["to_instance_id"], plan["version"]) == (primary, standby, VERSION)
    assert [p["probed"] and not p["reachable"] for p in plan["probes"]] == [True, True]
    assert plan["trigger"] == {
        "source": "alarm",
        "alarm_name": "trunk-sip-probe",
        "reason": "Threshold Crossed: 3 out of the last 3 datapoints were less than the threshold (1.0).",
    }
    same_keys(event("failover_task_move.json")["plan"], plan)
    assert world.holder() == primary
    assert world.item("lock#failover", "lock") is None
    # And the secrets it resolved (settings → transport) never reach the logs; the execution name is the id
    logs.assert_no(*SECRETS)
    assert {line.get("correlation_id") for line in logs.lines()} == {"alarm-2026-01-01"}
    assert any(line["message"] == "primary confirmed down; standby ready" for line in logs.lines())


@pytest.mark.parametrize(
    ("recorded", "trigger"),
    [
        ("failover_task_confirm_manual.json", {"source": "manual", "reason": "failover drill", "alarm_name": None}),
        (
            "failover_task_confirm_health.json",
            {"source": "health_check", "reason": "3 consecutive failed SIP probes of 203.0.113.10", "alarm_name": None},
        ),
    ],
)
def test_confirm_other_triggers(world, handlers, event, lambda_context, recorded, trigger):
    primary, _ = deploy(world)
    world.down.add(primary)
    plan = handlers["failover_confirm"](event(recorded), lambda_context)
    assert plan["trigger"] == trigger


def test_confirm_primary_still_healthy_is_a_false_alarm(world, handlers, event, lambda_context):
    # Given a primary that answers SIP
    primary, _ = deploy(world)
    # Then PrimaryStillHealthy (the ASL's FalseAlarm) and nothing changes
    with pytest.raises(PrimaryStillHealthy, match=f"{world.address} answers SIP \\(200"):
        handlers["failover_confirm"](event("failover_task_confirm.json"), lambda_context)
    assert world.holder() == primary
    assert world.responder.requests == 1  # the first answer is enough


def _stop(world: Any, instance_id: str) -> None:
    world.ec2.stop_instances(InstanceIds=[instance_id])


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (
            lambda world, standby: world.heartbeat(standby, "v0000000000000000", at=time.time()),
            "runs v0000000000000000",
        ),
        (lambda world, standby: world.heartbeat(standby, VERSION, at=time.time() - 3600), "no fresh heartbeat"),
        (lambda world, standby: world.heartbeat(standby, VERSION, at=time.time(), up=False), "Asterisk is down"),
        (_stop, "instance is stopp"),
    ],
    ids=["old-version", "stale-heartbeat", "asterisk-down", "stopped"],
)
def test_confirm_standby_not_ready(world, handlers, event, lambda_context, fault, reason):
    primary, standby = deploy(world)
    world.down.add(primary)
    fault(world, standby)
    with pytest.raises(StandbyNotReady, match=f"standby {standby} is not ready: .*{reason}"):
        handlers["failover_confirm"](event("failover_task_confirm.json"), lambda_context)
    assert world.holder() == primary


def test_confirm_without_a_deployment(world, handlers, event, lambda_context):
    with pytest.raises(HostNotFound, match="run Provision first"):
        handlers["failover_confirm"](event("failover_task_confirm.json"), lambda_context)


# --- AcquireLock / ReleaseLock -------------------------------------------------------------------------
def test_lock_acquire_and_release(world, handlers, event, lambda_context):
    # When AcquireLock runs
    started = time.time()
    result = handlers["failover_lock"](event("failover_task_lock.json"), lambda_context)
    # Then the lock item names this execution and expires after FAILOVER_LOCK_TTL_S
    assert result == {"action": "acquire", "owner": "alarm-2026-01-01", "held": True}
    item = world.item("lock#failover", "lock")
    assert item["owner"] == "alarm-2026-01-01"
    assert int(started) + 900 <= int(item["expires_at"]) <= int(time.time()) + 900
    # And acquiring again from the same execution (a retried invocation) succeeds
    assert handlers["failover_lock"](event("failover_task_lock.json"), lambda_context.fresh())["held"] is True
    # When ReleaseLock runs
    released = handlers["failover_lock"](event("failover_task_release.json"), lambda_context.fresh())
    # Then the item is gone
    assert released == {"action": "release", "owner": "alarm-2026-01-01", "held": False}
    assert world.item("lock#failover", "lock") is None


def test_lock_held_by_another_execution(world, handlers, event, lambda_context):
    # Given another execution holding the lock
    other = event("failover_task_lock.json")
    other["execution"]["name"] = "health-1234"
    handlers["failover_lock"](other, lambda_context)
    # Then LockHeld names the holder (the ASL's AlreadyInProgress), and the lock stays theirs
    with pytest.raises(LockHeld, match="failover health-1234 is already in progress"):
        handlers["failover_lock"](event("failover_task_lock.json"), lambda_context.fresh())
    assert world.item("lock#failover", "lock")["owner"] == "health-1234"
    # And our ReleaseLock does not release their lock
    handlers["failover_lock"](event("failover_task_release.json"), lambda_context.fresh())
    assert world.item("lock#failover", "lock")["owner"] == "health-1234"


def test_lock_expired_is_taken_over(world, handlers, event, lambda_context):
    world.ddb.put_item(
        Item={"pk": "lock#failover", "sk": "lock", "owner": "crashed-run", "expires_at": int(time.time()) - 1}
    )
    result = handlers["failover_lock"](event("failover_task_lock.json"), lambda_context)
    assert result["held"] is True
    assert world.item("lock#failover", "lock")["owner"] == "alarm-2026-01-01"


# --- MoveAddress ---------------------------------------------------------------------------------------
def test_move_eip_to_the_standby_once(world, handlers, event, lambda_context, capsys):
    # Given a plan and this execution holding the lock
    primary, standby = deploy(world)
    handlers["failover_lock"](event("failover_task_lock.json"), lambda_context)
    move_event = plan_event(event, "failover_task_move.json", world, primary, standby)
    # When MoveAddress runs
    result = handlers["failover_move_eip"](move_event, lambda_context.fresh())
    # Then the Elastic IP is on the standby and ElasticIpMoved=1 is published
    assert result == {"moved": True, "instance_id": standby, "address": world.address}
    assert world.holder() == standby
    association = association_id(world)
    assert '"ElasticIpMoved":[1.0]' in capsys.readouterr().out.replace(" ", "")
    records = [i for i in world.ddb.scan()["Items"] if str(i["pk"]).startswith("idempotency#")]
    assert [r["status"] for r in records] == ["COMPLETED"]
    # When Step Functions invokes it again with the same input (even after the address moved back)
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=primary, AllowReassociation=True)
    moved_back = association_id(world)
    again = handlers["failover_move_eip"](move_event, lambda_context.fresh())
    # Then the stored result comes back and EC2 is not called again
    assert again == result
    assert association_id(world) == moved_back != association
    assert world.holder() == primary


def test_move_eip_already_on_the_standby(world, handlers, event, lambda_context):
    primary, standby = deploy(world)
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=standby, AllowReassociation=True)
    before = association_id(world)
    result = handlers["failover_move_eip"](
        plan_event(event, "failover_task_move.json", world, primary, standby), lambda_context
    )
    assert result == {"moved": False, "instance_id": standby, "address": world.address}
    assert association_id(world) == before


def test_move_eip_refused_while_another_execution_holds_the_lock(world, handlers, event, lambda_context):
    primary, standby = deploy(world)
    other = event("failover_task_lock.json")
    other["execution"]["name"] = "health-1234"
    handlers["failover_lock"](other, lambda_context)
    with pytest.raises(LockHeld, match="belongs to health-1234"):
        handlers["failover_move_eip"](
            plan_event(event, "failover_task_move.json", world, primary, standby), lambda_context.fresh()
        )
    assert world.holder() == primary
    assert not [i for i in world.ddb.scan()["Items"] if str(i["pk"]).startswith("idempotency#")]


def test_move_eip_to_a_missing_instance(world, handlers, event, lambda_context, iam_denied):
    primary, _ = deploy(world)
    # An instance that does not exist has no aws-sip-trunk:stack tag: IAM refuses the association before
    # EC2 looks the instance up (moto answers InvalidInstanceID.NotFound; either way the move fails).
    missing = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"
    iam_denied(f"FailoverMoveEipFunctionRole may not ec2:AssociateAddress on {missing}")
    with pytest.raises(AddressMoveFailed, match=r"cannot associate .* with i-0123456789abcdef0"):
        handlers["failover_move_eip"](
            plan_event(event, "failover_task_move.json", world, primary, "i-0123456789abcdef0"), lambda_context
        )
    assert world.holder() == primary


# --- VerifyAddress -------------------------------------------------------------------------------------
def test_verify_address_answers_after_the_move(world, handlers, event, lambda_context):
    primary, standby = deploy(world)
    world.down.add(primary)
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=standby, AllowReassociation=True)
    result = handlers["failover_verify"](
        plan_event(event, "failover_task_verify.json", world, primary, standby), lambda_context
    )
    assert result["address"] == world.address
    assert (result["probed"], result["reachable"], result["status_code"]) == (True, True, 200)
    assert result["rtt_ms"] >= 0


def test_verify_address_not_answering(world, handlers, event, lambda_context):
    primary, standby = deploy(world)
    world.down.update({primary, standby})
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=standby, AllowReassociation=True)
    with pytest.raises(TrunkNotVerified, match=f"{world.address} does not answer SIP after the move"):
        handlers["failover_verify"](
            plan_event(event, "failover_task_verify.json", world, primary, standby), lambda_context
        )


# --- SwapRoles -----------------------------------------------------------------------------------------
def sent_roles() -> dict[str, list[str]]:
    """Comment suffix (`set-role <role>`) → the commands of the Run Command sent with it."""
    ssm = boto3.client("ssm", region_name=REGION)
    return {c["Comment"].split(": ", 1)[-1]: c["Parameters"]["commands"] for c in ssm.list_commands()["Commands"]}


def private_ip(world: Any, instance_id: str) -> str:
    found = world.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return str(found["PrivateIpAddress"])


def test_swap_roles(world, handlers, event, lambda_context, logs):
    # Given the address moved to the standby
    primary, standby = deploy(world)
    swap_event = plan_event(event, "failover_task_swap.json", world, primary, standby)
    # When SwapRoles runs
    started = time.time()
    result = handlers["failover_swap_roles"](swap_event, lambda_context)
    # Then the standby is the primary in deployment/current
    assert (result["swapped"], result["primary_instance_id"], result["standby_instance_id"]) == (True, standby, primary)
    current = world.item("deployment", "current")
    assert (current["primary_instance_id"], current["standby_instance_id"]) == (standby, primary)
    assert float(current["updated_at"]) >= started
    assert current["desired_version"] == VERSION  # the rest of the record is kept
    # And the hosts are told through Run Command: the new primary stops watching, the old one (still running)
    # watches the new primary's private address
    peer = private_ip(world, standby)
    assert [(r["instance_id"], r["role"], r["peer_address"], r["sent"]) for r in result["roles"]] == [
        (standby, "primary", None, True),
        (primary, "standby", peer, True),
    ]
    assert sent_roles() == {
        "set-role primary": ["sip-trunk-agent set-role --role primary"],
        "set-role standby": [f"sip-trunk-agent set-role --role standby --peer-address {peer}"],
    }
    assert result["hosts"] == (
        f"{standby} primary (command {result['roles'][0]['command_id']}); "
        f"{primary} standby watching {peer} (command {result['roles'][1]['command_id']})"
    )
    # And a retried invocation changes nothing more in the table (and sends the same roles again)
    again = handlers["failover_swap_roles"](swap_event, lambda_context.fresh())
    assert (again["swapped"], again["primary_instance_id"], again["standby_instance_id"]) == (False, standby, primary)
    assert [(r["instance_id"], r["role"], r["sent"]) for r in again["roles"]] == [
        (standby, "primary", True),
        (primary, "standby", True),
    ]
    assert world.item("deployment", "current") == current
    assert {line.get("correlation_id") for line in logs.lines()} == {"alarm-2026-01-01"}


def test_swap_roles_old_primary_stopped(world, handlers, event, lambda_context):
    # Given the old primary's instance is stopped (EC2 recovered nothing; Run Command cannot reach it)
    primary, standby = deploy(world)
    _stop(world, primary)
    # When SwapRoles runs
    result = handlers["failover_swap_roles"](
        plan_event(event, "failover_task_swap.json", world, primary, standby), lambda_context
    )
    # Then the table is swapped, the new primary is told, and the old primary is reported, not sent to
    assert result["swapped"] is True
    new, old = result["roles"]
    assert (new["instance_id"], new["sent"]) == (standby, True)
    assert (old["instance_id"], old["role"], old["sent"]) == (primary, "standby", False)
    assert old["detail"].startswith("instance is stopp")
    assert "run Provision" in old["detail"]
    assert list(sent_roles()) == ["set-role primary"]
    assert f"{primary} standby watching ? NOT SET: instance is stopp" in result["hosts"]


def test_swap_roles_send_to_the_old_primary_fails(world, handlers, event, lambda_context):
    # Given Run Command refusing the old primary (running, but its SSM agent is gone with the host)
    primary, standby = deploy(world)
    world.unregistered.add(primary)
    # When SwapRoles runs
    result = handlers["failover_swap_roles"](
        plan_event(event, "failover_task_swap.json", world, primary, standby), lambda_context
    )
    # Then it succeeds: roles swapped, the new primary told, the failed send reported
    assert result["swapped"] is True
    new, old = result["roles"]
    assert (new["sent"], old["sent"]) == (True, False)
    assert "InvalidInstanceId" in old["detail"]
    assert old["peer_address"] == private_ip(world, standby)


# --- the recorded events match the ASL ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("state", "recorded"),
    [
        ("ConfirmPrimaryDown", "failover_task_confirm.json"),
        ("ConfirmPrimaryDown", "failover_task_confirm_manual.json"),
        ("ConfirmPrimaryDown", "failover_task_confirm_health.json"),
        ("AcquireLock", "failover_task_lock.json"),
        ("ReleaseLock", "failover_task_release.json"),
        ("ReleaseLockAfterFailure", "failover_task_release.json"),
        ("MoveAddress", "failover_task_move.json"),
        ("VerifyAddress", "failover_task_verify.json"),
        ("SwapRoles", "failover_task_swap.json"),
    ],
)
def test_recorded_task_input_matches_the_asl_parameters(state, recorded, event):
    import yaml
    from support.moto_sfn import STATEMACHINES

    parameters = yaml.safe_load((STATEMACHINES / "failover.asl.yaml").read_text())["States"][state]["Parameters"]
    ev = event(recorded)
    assert set(ev) == {key.removesuffix(".$") for key in parameters}
    for key, value in parameters.items():
        if not key.endswith(".$"):
            assert ev[key] == value
