"""RecordDeployment: record the outcome in the state table and its history, roll back the desired version after
a failure, and compose the notification."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from sip_trunk.errors import AwsThrottled
from sip_trunk.limits import fit_sns_subject
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import ExecutionRef, Model, StepInput, describe_roles, error_message
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.provision.apply import ApplyStarted, apply_command
from sip_trunk.workflows.provision.launch import StackCheck
from sip_trunk.workflows.provision.render import RenderResult
from sip_trunk.workflows.provision.sync import SyncOutcome
from sip_trunk.workflows.state import Deployment

STEP_OF_STATE: dict[str, str] = {
    "ValidateSettings": "ValidateSettings",
    "RenderConfig": "RenderConfig",
    "LaunchHost": "LaunchHost",
    "WaitForStack": "LaunchHost",
    "CheckHostStack": "LaunchHost",
    "StackReady": "LaunchHost",
    "ApplyConfig": "ApplyConfig",
    "ApplyNeeded": "ApplyConfig",
    "WaitForApply": "ApplyConfig",
    "CheckApply": "ApplyConfig",
    "ApplyDone": "ApplyConfig",
    "VerifyTrunk": "VerifyTrunk",
    "SyncElevenLabs": "SyncElevenLabs",
    "RecordDeployment": "RecordDeployment",
}
"""Which step each state belongs to (poll loops count towards their step)."""


class RecordInput(StepInput):
    outcome: Literal["succeeded", "failed"]
    state: dict[str, Any]


class RecordResult(Model):
    outcome: Literal["succeeded", "failed"]
    version: str | None
    failed_step: str | None = None
    error: str | None = None
    reason: str | None = None
    actions: list[str] = Field(default_factory=list)
    durations_s: dict[str, float]
    subject: str
    message: str


def step_durations(events: list[dict[str, Any]], groups: dict[str, str]) -> dict[str, float]:
    """Seconds per step from an execution history: first entry to last exit of the step's states."""
    spans: dict[str, list[float]] = {}
    for event in events:
        state = event.get("state")
        stamp = event.get("timestamp")
        if not state or stamp is None or state not in groups:
            continue
        if event["type"].endswith("StateEntered") or event["type"].endswith("StateExited"):
            span = spans.setdefault(groups[state], [float(stamp), float(stamp)])
            span[0], span[1] = min(span[0], float(stamp)), max(span[1], float(stamp))
    return {step: round(end - start, 3) for step, (start, end) in spans.items()}


def _durations(deps: Deps, execution: ExecutionRef) -> dict[str, float]:
    if not execution.arn:
        return {}
    try:
        return step_durations(deps.executions.history(execution.arn), STEP_OF_STATE)
    except AwsThrottled:  # durations are a report; never fail (or repeat) the record over them
        return {}


def record_deployment(deps: Deps, request: RecordInput) -> RecordResult:
    if request.outcome == "succeeded":
        return _record_success(deps, request)
    return _record_failure(deps, request)


def _record_success(deps: Deps, request: RecordInput) -> RecordResult:
    state = request.state
    render = RenderResult.model_validate(state["render"])
    stack = StackCheck.model_validate(state["stack"])
    sync = SyncOutcome.model_validate(state.get("sync") or {"action": "skipped"})
    previous = deps.state.get_deployment() or Deployment()
    now = clock.now()
    deployment = previous.model_copy(
        update={
            "desired_version": render.version,
            "active_version": render.version,
            "host_stack_name": deps.config.host_stack_name,
            "primary_instance_id": stack.primary_instance_id,
            "standby_instance_id": stack.standby_instance_id,
            "allocation_id": deps.config.primary_allocation_id,
            "public_address": render.public_address,
            "phone_number_id": sync.phone_number_id or previous.phone_number_id,
            "credentials_hash": sync.credentials_hash or previous.credentials_hash,
            "last_execution": request.execution.name,
            "last_outcome": "succeeded",
            "updated_at": now,
        }
    )
    changed = deployment.model_dump(exclude={"updated_at", "last_execution"}) != previous.model_dump(
        exclude={"updated_at", "last_execution"}
    )
    deps.state.put_deployment(deployment)
    durations = _durations(deps, request.execution)
    deps.state.put_history(
        clock.iso(now),
        request.execution.name,
        {"outcome": "succeeded", "version": render.version, "durations_s": durations},
    )
    verb = "deployed" if changed or render.previous_version != render.version else "re-verified (no change)"
    lines = [
        f"Provision {request.execution.name} succeeded: version {render.version} {verb}.",
        f"Elastic IP {render.public_address} → primary {stack.primary_instance_id}"
        + (f", standby {stack.standby_instance_id}" if stack.standby_instance_id else ""),
        f"Host roles: {describe_roles(stack.roles)}",
        f"ElevenLabs number{'s' if len(sync.numbers) > 1 else ''}: {sync.describe()}",
        "Step durations (s): " + ", ".join(f"{k}={v}" for k, v in durations.items()),
    ]
    return RecordResult(
        outcome="succeeded",
        version=render.version,
        durations_s=durations,
        subject=fit_sns_subject(f"[sip-trunk] {deps.config.stack_name}: provision succeeded ({render.version})"),
        message="\n".join(lines),
    )


_REASONS = {
    "SettingsInvalid": "the settings document or a secret it references is invalid or missing",
    "StackFailed": "the host stack failed or rolled back",
    "StackTimedOut": "the host stack did not finish in time",
    "ApplyFailed": "the host agent could not apply the configuration",
    "VerificationTimedOut": "the trunk did not pass verification in time",
    "TrunkNotVerified": "the trunk did not pass verification",
    "ElevenLabsAuthError": "the ElevenLabs API key was rejected",
    "ElevenLabsValidationError": "ElevenLabs rejected the phone number's trunk configuration",
    "ElevenLabsRateLimited": "ElevenLabs kept rate-limiting the sync",
    "ElevenLabsUnavailable": "ElevenLabs' API was unavailable",
    "TrunkConflictError": "the phone number exists at ElevenLabs with another provider",
    "AwsLimitExceeded": "a value was over a documented AWS limit (the error names it)",
    "AwsThrottled": "AWS kept throttling a call",
    "AddressRefused": "EC2 refused to move the Elastic IP to the primary",
    "HostUnreachable": "Run Command could not reach a host",
}


def _record_failure(deps: Deps, request: RecordInput) -> RecordResult:
    state = request.state
    failures: dict[str, Any] = state.get("failure") or {}
    failed_step, failure = next(iter(failures.items()), ("unknown", {}))
    error, detail = error_message(failure if isinstance(failure, dict) else {})
    actions: list[str] = []
    render = RenderResult.model_validate(state["render"]) if "render" in state else None
    if render is not None and render.previous_version != render.version:
        if render.previous_version:
            deps.config_store.set_desired_version(render.previous_version)
            actions.append(f"desired version restored to {render.previous_version}")
        else:
            deps.config_store.clear_desired_version()
            actions.append("desired version cleared (there was no previous version)")
        apply = ApplyStarted.model_validate(state["apply"]) if "apply" in state else None
        if apply is not None and apply.command_id and render.previous_version:
            command_id = deps.commands.send(
                apply.instance_ids,
                [apply_command(render.previous_version)],
                f"{request.execution.name}: roll back to {render.previous_version}",
            )
            actions.append(f"hosts told to re-apply {render.previous_version} (command {command_id})")
    if not actions:
        actions.append("nothing to roll back: the serving configuration was not changed")
    now = clock.now()
    previous = deps.state.get_deployment()
    if previous is not None:
        deps.state.put_deployment(
            previous.model_copy(
                update={"last_execution": request.execution.name, "last_outcome": "failed", "updated_at": now}
            )
        )
    durations = _durations(deps, request.execution)
    version = render.version if render else None
    deps.state.put_history(
        clock.iso(now),
        request.execution.name,
        {"outcome": "failed", "version": version, "failed_step": failed_step, "error": error, "detail": detail},
    )
    reason = _REASONS.get(error, "an unexpected error")
    lines = [
        f"Provision {request.execution.name} FAILED at step {failed_step}: {reason}.",
        f"Error: {error}: {detail}",
        "The previously healthy host keeps serving. Rollback: " + "; ".join(actions) + ".",
        "See docs/OPERATIONS.md, section 'Provision failure notifications', for what to do.",
    ]
    return RecordResult(
        outcome="failed",
        version=version,
        failed_step=failed_step,
        error=error,
        reason=reason,
        actions=actions,
        durations_s=durations,
        subject=fit_sns_subject(f"[sip-trunk] {deps.config.stack_name}: provision failed at {failed_step}"),
        message="\n".join(lines),
    )
