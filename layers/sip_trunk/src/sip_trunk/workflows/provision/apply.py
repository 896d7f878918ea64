"""ApplyConfig and CheckApply: tell the hosts to apply the version (Run Command) and poll until they did."""

from __future__ import annotations

from sip_trunk.errors import ApplyFailed, SettingsInvalid
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import AGENT, Model, StepInput
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.provision.launch import StackCheck
from sip_trunk.workflows.provision.render import VERSION_PATTERN, RenderResult

_COMMAND_FAILED = {"Cancelled", "TimedOut", "Failed"}


class ApplyInput(StepInput):
    render: RenderResult
    stack: StackCheck


class ApplyStarted(Model):
    version: str
    instance_ids: list[str]
    command_id: str | None
    skipped: bool
    deadline: float


def apply_command(version: str) -> str:
    if not VERSION_PATTERN.fullmatch(version):
        raise SettingsInvalid(f"refusing to send an unexpected version id {version!r}")
    return f"{AGENT} apply --version {version}"


def apply_config(deps: Deps, request: ApplyInput) -> ApplyStarted:
    version = request.render.version
    hosts = [h for h in (request.stack.primary_instance_id, request.stack.standby_instance_id) if h]
    now = clock.now()
    beats = deps.state.heartbeats(hosts)
    current = all(
        (b := beats.get(h)) is not None
        and b.fresh(now, deps.config.heartbeat_max_age_s)
        and b.running_version == version
        and b.asterisk_up
        for h in hosts
    )
    deadline = now + deps.config.apply_timeout_s
    if current:
        return ApplyStarted(version=version, instance_ids=hosts, command_id=None, skipped=True, deadline=deadline)
    command_id = deps.commands.send(hosts, [apply_command(version)], f"{request.execution.name}: apply {version}")
    return ApplyStarted(version=version, instance_ids=hosts, command_id=command_id, skipped=False, deadline=deadline)


class ApplyCheckInput(StepInput):
    apply: ApplyStarted


class ApplyCheck(Model):
    done: bool
    statuses: dict[str, str]


def check_apply(deps: Deps, request: ApplyCheckInput) -> ApplyCheck:
    apply = request.apply
    if apply.skipped or apply.command_id is None:
        return ApplyCheck(done=True, statuses=dict.fromkeys(apply.instance_ids, "AlreadyCurrent"))
    results = deps.commands.results(apply.command_id, apply.instance_ids)
    statuses = {r.instance_id: r.status for r in results}
    failed = [r for r in results if r.status in _COMMAND_FAILED]
    if failed:
        detail = "; ".join(f"{r.instance_id}: {r.status} {r.output.strip()[-200:]}".strip() for r in failed)
        raise ApplyFailed(f"sip-trunk-agent apply --version {apply.version} failed on {detail}")
    if all(s == "Success" for s in statuses.values()):
        return ApplyCheck(done=True, statuses=statuses)
    if clock.now() > apply.deadline:
        raise ApplyFailed(f"apply of {apply.version} did not finish before the deadline: {statuses}")
    return ApplyCheck(done=False, statuses=statuses)
