"""The Failover workflow's steps (`sip_trunk.workflows.failover`) over in-memory fakes of the ports."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from botocore.exceptions import ClientError
from sip_trunk.errors import (
    AddressMoveFailed,
    AwsThrottled,
    HostNotFound,
    LockHeld,
    PrimaryStillHealthy,
    StandbyNotReady,
    TrunkNotVerified,
)
from sip_trunk.workflows import failover
from sip_trunk.workflows.common import ExecutionRef
from support.fakes import DENIED, PRIMARY, PRIVATE_IPS, PUBLIC_IP, STANDBY, FakeWorld, ManualClock

pytestmark = pytest.mark.unit

EXECUTION = ExecutionRef(name="failover-1")
VERSION = "v0123456789abcdef"
PROBED = "127.0.0.1"
"""Where the test config's PROBE_TARGETS sends probes of the Elastic IP."""


def plan(world: FakeWorld) -> failover.FailoverPlan:
    return failover.FailoverPlan(
        allocation_id=world.config.primary_allocation_id,
        address=PUBLIC_IP,
        from_instance_id=PRIMARY,
        to_instance_id=STANDBY,
        version=VERSION,
        probes=[],
        trigger=failover.FailoverTrigger(),
    )


def test_swap_roles_does_not_read_access_denied_as_a_gone_instance() -> None:
    # Given the address moved to the standby, and IAM denies describing the old primary
    world = FakeWorld()
    world.deployed()
    world.ec2.faults.fail("instances", DENIED, times=2)
    # When the roles are swapped
    # Then the denial fails the step under its own name; no host is reported "not found"
    with pytest.raises(ClientError) as raised:
        failover.swap_roles(world.deps, failover.MoveInput(execution=EXECUTION, plan=plan(world)))
    assert raised.value.response["Error"]["Code"] == DENIED


def test_swap_roles_throttled_describe_is_retryable() -> None:
    # Given EC2 throttles the describe of the old primary
    world = FakeWorld()
    world.deployed()
    world.ec2.faults.fail("instances", "RequestLimitExceeded")
    request = failover.MoveInput(execution=EXECUTION, plan=plan(world))
    # When the roles are swapped, Then the step raises the error the state machine retries
    with pytest.raises(AwsThrottled):
        failover.swap_roles(world.deps, request)
    # And the retry (the table already swapped) re-arms both hosts
    result = failover.swap_roles(world.deps, request)
    assert result.swapped is False
    assert [(r.instance_id, r.role, r.sent, r.peer_address) for r in result.roles] == [
        (STANDBY, "primary", True, None),
        (PRIMARY, "standby", True, PRIVATE_IPS[STANDBY]),
    ]


def test_swap_roles_reports_a_gone_old_primary_and_re_arms_the_new_one() -> None:
    # Given the old primary's instance is terminated and gone
    world = FakeWorld()
    world.deployed()
    del world.ec2.known[PRIMARY]
    # When the roles are swapped
    result = failover.swap_roles(world.deps, failover.MoveInput(execution=EXECUTION, plan=plan(world)))
    # Then the table names the standby as primary, it is told so, and the old primary is reported not set
    assert result.swapped is True
    assert world.state.deployment is not None
    assert world.state.deployment.primary_instance_id == STANDBY
    assert world.commands.lines() == ["sip-trunk-agent set-role --role primary"]
    old = result.roles[1]
    assert (old.instance_id, old.sent) == (PRIMARY, False)
    assert "not found" in old.detail


# --- ConfirmPrimaryDown ------------------------------------------------------------------------------


def confirm_input() -> failover.ConfirmInput:
    return failover.ConfirmInput(execution=EXECUTION, trigger=failover.FailoverTrigger(source="alarm"))


def test_confirm_without_a_deployment_is_host_not_found() -> None:
    with pytest.raises(HostNotFound):
        failover.confirm(FakeWorld().deps, confirm_input())


def test_confirm_refuses_a_false_alarm(clock: ManualClock) -> None:
    # Given the Elastic IP still answers SIP
    world = FakeWorld()
    world.deployed()
    world.prober.answers[PROBED] = 200
    # When confirmed, Then nothing moves
    with pytest.raises(PrimaryStillHealthy, match="false alarm"):
        failover.confirm(world.deps, confirm_input())


def test_confirm_plans_the_move_to_a_ready_standby(clock: ManualClock) -> None:
    # Given the address does not answer and the standby runs the desired version
    world = FakeWorld()
    world.deployed()
    world.state.beat(STANDBY, clock.now(), VERSION)
    # When confirmed (probing twice)
    result = failover.confirm(world.deps, confirm_input())
    # Then the plan moves the address from the primary to the standby
    assert (result.from_instance_id, result.to_instance_id, result.version) == (PRIMARY, STANDBY, VERSION)
    assert len(result.probes) == failover.CONFIRM_PROBES
    assert result.trigger.source == "alarm"


@pytest.mark.parametrize(
    ("beat", "problem"),
    [
        ({"version": "vfedcba9876543210"}, "runs vfedcba9876543210"),
        ({"asterisk_up": False}, "Asterisk is down"),
        ({"age": 10_000}, "no fresh heartbeat"),
    ],
)
def test_confirm_refuses_a_standby_that_is_not_ready(clock: ManualClock, beat: dict[str, Any], problem: str) -> None:
    world = FakeWorld()
    world.deployed()
    age = beat.pop("age", 0)
    version = beat.pop("version", VERSION)
    world.state.beat(STANDBY, clock.now() - age, version, **beat)
    with pytest.raises(StandbyNotReady, match=problem):
        failover.confirm(world.deps, confirm_input())


def test_confirm_refuses_a_stopped_standby(clock: ManualClock) -> None:
    world = FakeWorld()
    world.deployed()
    world.state.beat(STANDBY, clock.now(), VERSION)
    world.ec2.known[STANDBY] = replace(world.ec2.known[STANDBY], state="stopped")
    with pytest.raises(StandbyNotReady, match="instance is stopped"):
        failover.confirm(world.deps, confirm_input())


# --- the lock ----------------------------------------------------------------------------------------


def test_lock_is_exclusive_until_released(clock: ManualClock) -> None:
    world = FakeWorld()
    acquire = failover.LockInput(execution=EXECUTION, action="acquire")
    assert failover.lock(world.deps, acquire).held
    assert failover.lock(world.deps, acquire).held  # a retry of the owner
    other = failover.LockInput(execution=ExecutionRef(name="failover-2"), action="acquire")
    with pytest.raises(LockHeld, match="failover-1"):
        failover.lock(world.deps, other)
    assert not failover.lock(world.deps, failover.LockInput(execution=EXECUTION, action="release")).held
    assert failover.lock(world.deps, other).held


def test_an_expired_lock_can_be_taken(clock: ManualClock) -> None:
    world = FakeWorld()
    failover.lock(world.deps, failover.LockInput(execution=EXECUTION, action="acquire"))
    clock.advance(world.config.lock_ttl_s + 1)
    other = failover.LockInput(execution=ExecutionRef(name="failover-2"), action="acquire")
    assert failover.lock(world.deps, other).owner == "failover-2"


# --- MoveAddress -------------------------------------------------------------------------------------


def test_move_associates_the_address_once(clock: ManualClock) -> None:
    world = FakeWorld()
    world.deployed()
    request = failover.MoveInput(execution=EXECUTION, plan=plan(world))
    assert failover.move_address(world.deps, request).moved
    assert not failover.move_address(world.deps, request).moved  # a retry finds it there
    assert world.ec2.associations == [(world.config.primary_allocation_id, STANDBY)]


def test_move_without_the_lock_moves_nothing(clock: ManualClock) -> None:
    world = FakeWorld()
    world.deployed()
    world.state.acquire_lock("failover-0", clock.now(), 900)
    with pytest.raises(LockHeld):
        failover.move_address(world.deps, failover.MoveInput(execution=EXECUTION, plan=plan(world)))
    assert world.ec2.associations == []


def test_move_to_a_refused_instance_is_address_move_failed(clock: ManualClock) -> None:
    world = FakeWorld()
    world.deployed()
    world.ec2.known[STANDBY] = replace(world.ec2.known[STANDBY], state="stopping")
    with pytest.raises(AddressMoveFailed, match="IncorrectInstanceState"):
        failover.move_address(world.deps, failover.MoveInput(execution=EXECUTION, plan=plan(world)))


# --- VerifyAddress -----------------------------------------------------------------------------------


def test_verify_after_the_move_retries_until_sip_answers() -> None:
    world = FakeWorld()
    request = failover.VerifyInput(execution=EXECUTION, plan=plan(world))
    with pytest.raises(TrunkNotVerified):
        failover.verify(world.deps, request)
    world.prober.answers[PROBED] = 200
    assert failover.verify(world.deps, request).answers


# --- SwapRoles ---------------------------------------------------------------------------------------


def test_summary_names_the_move() -> None:
    state = {"plan": {"address": PUBLIC_IP, "from_instance_id": PRIMARY, "to_instance_id": STANDBY}}
    assert failover.summary(state) == f"Elastic IP {PUBLIC_IP} moved from {PRIMARY} to {STANDBY}"
