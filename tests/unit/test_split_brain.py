"""The split-brain checks the flap drills run (sip_trunk_local.split_brain): each is given the records of a correct
failover, which pass, and the records a specific defect leaves, which it reports. The records are what the drill's
sampler and lock ledger write: samples of the router's NAT and EC2's association, lock and move entries."""

from __future__ import annotations

import pytest
from sip_trunk_local.split_brain import (
    LedgerEntry,
    LockLedger,
    Sample,
    check_agreement,
    check_all,
    check_lock,
    check_moves_attributed,
    check_one_move,
    check_roles,
    check_single_holder,
    dnat_targets,
)

pytestmark = pytest.mark.unit

A, B = "i-0aaa", "i-0bbb"


def s(t: float, targets: tuple[str, ...], associated: str | None, answers: bool | None = True) -> Sample:
    return Sample(t, targets, associated, answers)


def failover_records(first: str = "peer-down-1", second: str = "manual-2") -> tuple[list[Sample], list[LedgerEntry]]:
    """A correct failover: A dies at 10, `first` takes the lock at 11.0 and moves the address at 11.1-11.2,
    `second` (the same outage) is refused the lock; the sampler sees B behind the address from 11.2."""
    samples = [
        s(10.0, (A,), A),
        s(10.5, (A,), A, False),
        s(11.1, (A,), A, False),
        s(11.2, (B,), B),
        s(12.0, (B,), B),
    ]
    entries = [
        LedgerEntry(11.0, first, "acquired"),
        LedgerEntry(11.1, first, "move-start", B),
        LedgerEntry(11.15, first, "moved", B),
        LedgerEntry(11.6, first, "release"),
    ]
    return samples, entries


def test_a_correct_failover_passes_every_check() -> None:
    samples, entries = failover_records()
    assert check_all(samples, entries) == []


def test_two_executions_holding_the_lock_at_once_are_reported() -> None:
    """The defect: a lock whose conditional write is unconditional (both executions of one outage get it)."""
    _, entries = failover_records()
    entries += [LedgerEntry(11.05, "manual-2", "acquired"), LedgerEntry(11.7, "manual-2", "release")]
    assert check_lock(entries, until=12.0) == [
        "two Failover executions held the lock at once: peer-down-1 and manual-2"
    ]
    assert check_lock(failover_records()[1], until=12.0) == []


def test_a_lock_taken_after_the_other_is_released_is_not_an_overlap() -> None:
    _, entries = failover_records()
    entries += [LedgerEntry(11.7, "manual-2", "acquired"), LedgerEntry(11.8, "manual-2", "release")]
    assert check_lock(entries, until=12.0) == []


def test_a_lock_never_released_overlaps_every_later_holder() -> None:
    entries = [LedgerEntry(1.0, "x", "acquired"), LedgerEntry(5.0, "y", "acquired"), LedgerEntry(6.0, "y", "release")]
    assert check_lock(entries, until=9.0) == ["two Failover executions held the lock at once: x and y"]


def test_two_executions_moving_the_address_in_one_outage_are_reported() -> None:
    _, entries = failover_records()
    assert check_one_move(entries) == []
    entries.append(LedgerEntry(11.9, "manual-2", "moved", A))
    assert check_one_move(entries) == ["2 Failover executions moved the address: manual-2, peer-down-1"]


def test_two_hosts_behind_the_address_are_reported() -> None:
    samples, _ = failover_records()
    assert check_single_holder(samples) == []
    problems = check_single_holder([*samples, s(12.5, (B, A), B)])
    assert problems == [f"at 12.500 the address was translated to 2 hosts: {B}, {A}"]


def test_a_move_no_execution_made_is_reported() -> None:
    """The defect: a host that takes the address itself (an old primary claiming it from its role.env)."""
    samples, entries = failover_records()
    samples += [s(20.0, (A,), A), s(21.0, (A,), A)]
    problems = check_moves_attributed(samples, entries)
    assert problems == [
        f"between 12.000 and 20.000 the address went from {B} to {A} without a Failover execution moving it"
    ]


def test_a_move_by_an_execution_without_the_lock_is_reported() -> None:
    samples, entries = failover_records()
    without_lock = [e for e in entries if e.what not in ("acquired", "release")]
    assert check_moves_attributed(samples, without_lock) == [
        "peer-down-1 moved the address to i-0bbb without holding the lock"
    ]
    assert check_moves_attributed(samples, entries) == []


def test_ec2_and_the_router_may_disagree_only_while_a_move_is_applied() -> None:
    brief = [s(1.0, (A,), A), s(1.1, (A,), B), s(1.2, (B,), B)]
    assert check_agreement(brief) == []
    lasting = [s(1.0, (A,), A), s(1.1, (A,), B), s(1.8, (A,), B), s(2.3, (A,), B), s(3.0, (B,), B)]
    assert check_agreement(lasting) == [
        f"from 1.100 EC2 associated the address with {B} but the router sent it to {A} for over 1 s"
    ]


def test_the_router_rules_are_read_for_the_public_address_only() -> None:
    rules = (
        "-N EIP_PRE\n"
        "-A EIP_PRE -d 203.0.113.10/32 -i wan -j DNAT --to-destination 10.0.0.11\n"
        "-A EIP_PRE -d 203.0.113.11/32 -i wan -j DNAT --to-destination 10.0.0.12\n"
    )
    assert dnat_targets(rules, "203.0.113.10") == ["10.0.0.11"]
    assert dnat_targets("-N EIP_PRE\n", "203.0.113.10") == []


def test_a_host_booting_primary_against_the_state_table_is_reported() -> None:
    table = {"primary": B, "standby": A}
    assert check_roles("standby", table, A, {"SIP_TRUNK_ROLE": "standby"}) == []
    assert check_roles("primary", table, A, {"SIP_TRUNK_ROLE": "primary"}) == [
        f"{A} booted primary while the state table names {B} primary",
        f"{A}'s role.env says primary, the state table standby",
    ]
    assert check_roles(None, {"primary": A, "standby": B}, A, {"SIP_TRUNK_ROLE": "primary"}) == []


def test_the_ledger_records_lock_and_moves_from_the_dispatcher_hooks() -> None:
    ledger = LockLedger()
    execution = {"execution": {"name": "peer-down-1"}}
    ledger.before("failover_lock", {**execution, "action": "acquire"})
    ledger.after("failover_lock", {**execution, "action": "acquire"}, {"action": "acquire", "held": True})
    ledger.before("failover_move_eip", {**execution, "plan": {"to_instance_id": B}})
    ledger.after("failover_move_eip", execution, {"moved": True, "instance_id": B})
    ledger.before("failover_lock", {**execution, "action": "release"})
    assert [(e.execution, e.what, e.instance_id) for e in ledger.entries] == [
        ("peer-down-1", "acquired", None),
        ("peer-down-1", "move-start", B),
        ("peer-down-1", "moved", B),
        ("peer-down-1", "release", None),
    ]
