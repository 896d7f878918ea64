"""The Failover workflow: one function per state of `statemachines/failover.asl.yaml`.

Confirm the primary is down (re-probe the Elastic IP) and the standby runs the desired version → take
the lock → move the Elastic IP → verify SIP answers on it → swap roles (state table, then `set-role` on the
hosts) → notify → release the lock.
A false alarm ends without touching anything. The lock plus the "already there" checks mean two
executions started by the same outage move the address at most once.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sip_trunk.errors import (
    AddressMoveFailed,
    AddressRefused,
    HostNotFound,
    LockHeld,
    PrimaryStillHealthy,
    StandbyNotReady,
    TrunkNotVerified,
)
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import (
    Model,
    ProbeReport,
    RoleCommand,
    StepInput,
    describe_roles,
    load_settings,
    probe_address,
    send_role,
    sip_transport,
)
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.ports import Instance

CONFIRM_PROBES = 2


class FailoverTrigger(Model):
    """Why the failover started: an alarm state change (EventBridge), the health check, or a person."""

    source: str = "manual"
    reason: str = ""
    alarm_name: str | None = None


class ConfirmInput(StepInput):
    trigger: FailoverTrigger = FailoverTrigger()


class FailoverPlan(Model):
    allocation_id: str
    address: str
    from_instance_id: str | None
    to_instance_id: str
    version: str | None
    probes: list[ProbeReport]
    trigger: FailoverTrigger


def confirm(deps: Deps, request: ConfirmInput) -> FailoverPlan:
    cfg = deps.config
    deployment = deps.state.get_deployment()
    if deployment is None or not deployment.primary_instance_id:
        raise HostNotFound("no deployment recorded in the state table: run Provision first")
    allocation_id = deployment.allocation_id or cfg.primary_allocation_id
    address = deps.addresses.describe_address(allocation_id)
    loaded = load_settings(deps.settings, deps.secrets)
    transport, port = sip_transport(loaded.settings)
    probes: list[ProbeReport] = []
    for _ in range(CONFIRM_PROBES):
        report = probe_address(deps.prober, address.public_ip, transport, port, cfg.probe_targets, cfg.probe_timeout_s)
        probes.append(report)
        if report.answers:
            raise PrimaryStillHealthy(
                f"{address.public_ip} answers SIP ({report.status_code} in {report.rtt_ms} ms): "
                "false alarm, nothing moved"
            )
    serving = address.instance_id or deployment.primary_instance_id
    target = next((h for h in deployment.hosts() if h != serving), None)
    if target is None:
        raise StandbyNotReady("there is no standby host to fail over to")
    instances = {i.instance_id: i for i in deps.addresses.instances([target])}
    beat = deps.state.heartbeats([target]).get(target)
    desired = deployment.desired_version
    problems: list[str] = []
    if target not in instances or instances[target].state != "running":
        problems.append(f"instance is {instances[target].state if target in instances else 'missing'}")
    if beat is None or not beat.fresh(clock.now(), cfg.heartbeat_max_age_s):
        problems.append("no fresh heartbeat")
    else:
        if beat.running_version != desired:
            problems.append(f"runs {beat.running_version}, desired {desired}")
        if not beat.asterisk_up:
            problems.append("Asterisk is down")
    if problems:
        raise StandbyNotReady(f"standby {target} is not ready: " + "; ".join(problems))
    return FailoverPlan(
        allocation_id=allocation_id,
        address=address.public_ip,
        from_instance_id=serving,
        to_instance_id=target,
        version=desired,
        probes=probes,
        trigger=request.trigger,
    )


class LockInput(StepInput):
    action: Literal["acquire", "release"]


class LockResult(Model):
    action: Literal["acquire", "release"]
    owner: str
    held: bool


def lock(deps: Deps, request: LockInput) -> LockResult:
    owner = request.execution.name
    if request.action == "acquire":
        holder = deps.state.acquire_lock(owner, clock.now(), deps.config.lock_ttl_s)
        if holder is not None:
            raise LockHeld(f"failover {holder} is already in progress; this execution changes nothing")
        return LockResult(action="acquire", owner=owner, held=True)
    deps.state.release_lock(owner)
    return LockResult(action="release", owner=owner, held=False)


class MoveInput(StepInput):
    plan: FailoverPlan


class MoveResult(Model):
    moved: bool
    instance_id: str
    address: str


def move_address(deps: Deps, request: MoveInput) -> MoveResult:
    plan = request.plan
    holder = deps.state.acquire_lock(request.execution.name, clock.now(), deps.config.lock_ttl_s)
    if holder is not None:  # re-checked here: never move without holding the lock
        raise LockHeld(f"the failover lock belongs to {holder}")
    current = deps.addresses.describe_address(plan.allocation_id)
    if current.instance_id == plan.to_instance_id:
        return MoveResult(moved=False, instance_id=plan.to_instance_id, address=plan.address)
    try:
        deps.addresses.associate(plan.allocation_id, plan.to_instance_id)
    except AddressRefused as exc:
        raise AddressMoveFailed(f"cannot associate {plan.address} with {plan.to_instance_id}: {exc}") from None
    return MoveResult(moved=True, instance_id=plan.to_instance_id, address=plan.address)


class VerifyInput(StepInput):
    plan: FailoverPlan


def verify(deps: Deps, request: VerifyInput) -> ProbeReport:
    cfg = deps.config
    loaded = load_settings(deps.settings, deps.secrets)
    transport, port = sip_transport(loaded.settings)
    report = probe_address(deps.prober, request.plan.address, transport, port, cfg.probe_targets, cfg.probe_timeout_s)
    if report.probed and not report.answers:
        raise TrunkNotVerified(f"{request.plan.address} does not answer SIP after the move: {report.error}")
    return report


class SwapResult(Model):
    swapped: bool
    primary_instance_id: str
    standby_instance_id: str | None
    roles: list[RoleCommand] = Field(default_factory=list)
    """`set-role` sent to the new primary, then to the old primary when its instance is running."""
    hosts: str = ""
    """The roles in one line, for the notification."""


def _instance(deps: Deps, instance_id: str) -> Instance | None:
    """The instance, or None when EC2 does not know it (any more: terminated and gone)."""
    return next((i for i in deps.addresses.instances([instance_id]) if i.instance_id == instance_id), None)


def rearm_hosts(deps: Deps, execution: str, primary: str, standby: str | None) -> list[RoleCommand]:
    """Tell the hosts their new roles: the new primary stops watch-peer; the old primary, if its instance
    runs, watches the new primary's private address. A host that is gone or cannot be reached is reported,
    not raised (the Elastic IP already serves); throttling raises `AwsThrottled` (the step is retried, and a
    retry finds the table swapped), any other AWS error fails the step."""
    roles = [send_role(deps, execution, primary, "primary")]
    if not standby:
        return roles
    old = _instance(deps, standby)
    if old is None or old.state != "running":
        state = old.state if old else "not found"
        detail = f"instance is {state}; run Provision once it is repaired (it re-sends the roles)"
        roles.append(RoleCommand(instance_id=standby, role="standby", sent=False, detail=detail))
        return roles
    new = _instance(deps, primary)
    if new is None or not new.private_ip:
        detail = f"no private IP known for the new primary {primary}"
        roles.append(RoleCommand(instance_id=standby, role="standby", sent=False, detail=detail))
        return roles
    roles.append(send_role(deps, execution, standby, "standby", new.private_ip))
    return roles


def swap_roles(deps: Deps, request: MoveInput) -> SwapResult:
    plan = request.plan
    deployment = deps.state.get_deployment()
    if deployment is not None and deployment.primary_instance_id == plan.to_instance_id:
        swapped, current = False, True  # a retried invocation: the table is already swapped
    else:
        expected = deployment.primary_instance_id if deployment and deployment.primary_instance_id else ""
        swapped = deps.state.swap_roles(expected, plan.to_instance_id, plan.from_instance_id, clock.now())
        current = swapped
    roles: list[RoleCommand] = []
    hosts = "roles not sent: another execution changed the state table's roles"
    if current:
        roles = rearm_hosts(deps, request.execution.name, plan.to_instance_id, plan.from_instance_id)
        hosts = describe_roles(roles)
    return SwapResult(
        swapped=swapped,
        primary_instance_id=plan.to_instance_id,
        standby_instance_id=plan.from_instance_id,
        roles=roles,
        hosts=hosts,
    )


def summary(state: dict[str, Any]) -> str:
    """Notification text; used by tests and the docs to agree on what an operator sees."""
    plan = state.get("plan", {})
    return f"Elastic IP {plan.get('address')} moved from {plan.get('from_instance_id')} to {plan.get('to_instance_id')}"
