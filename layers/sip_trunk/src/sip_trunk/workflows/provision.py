"""The Provision workflow: one function per state of `statemachines/provision.asl.yaml`.

Order: validate → render into the config store → launch/update the host stack → wait for it, then set the
hosts' roles → apply the version on the hosts → verify → sync the ElevenLabs number → record (success or
failure) → notify. A config version reaches the hosts only through ApplyConfig (Run Command); the host stack
is updated only when its template or its other parameters change, so a config push never restarts a host.
Every function is safe to re-run with the same input; a re-run with unchanged settings changes nothing
(it re-sends the hosts' roles, which is idempotent).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from sip_trunk.elevenlabs import DesiredTrunk, ElevenLabsError, diff_trunk, ensure_trunk, find_trunk
from sip_trunk.errors import (
    ApplyFailed,
    AwsThrottled,
    SettingsInvalid,
    StackFailed,
    StackRejected,
    StackTimedOut,
    TrunkNotVerified,
    VerificationTimedOut,
)
from sip_trunk.render import render_configs
from sip_trunk.settings import Settings, Transport
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import (
    ExecutionRef,
    LoadedSettings,
    Model,
    ProbeReport,
    RoleCommand,
    StepInput,
    describe_roles,
    error_message,
    load_settings,
    probe_address,
    send_role,
    sip_transport,
)
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.state import Deployment

VERSION_PATTERN = re.compile(r"^v[0-9a-f]{16}$")
AGENT = "sip-trunk-agent"
CONFIG_VERSION = "ConfigVersion"
"""The host stack parameter naming the version a host applies at its first boot (stacks/host.yaml)."""

_STACK_DONE = {"CREATE_COMPLETE", "UPDATE_COMPLETE"}
_STACK_FAILED = {
    "CREATE_FAILED",
    "ROLLBACK_COMPLETE",
    "ROLLBACK_FAILED",
    "DELETE_COMPLETE",
    "DELETE_FAILED",
    "UPDATE_ROLLBACK_COMPLETE",
    "UPDATE_ROLLBACK_FAILED",
    "IMPORT_ROLLBACK_COMPLETE",
    "IMPORT_ROLLBACK_FAILED",
}
_COMMAND_FAILED = {"Cancelled", "TimedOut", "Failed"}

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


class ProvisionRequest(Model):
    """The execution input; every field optional (the console's `{}` is a valid start)."""

    reason: str = ""
    rotate_credentials: bool = False
    """Push the trunk passwords to ElevenLabs even if they look unchanged."""


# --- ValidateSettings ------------------------------------------------------------------------


class ValidateResult(Model):
    name: str
    phone_number: str
    transport: str
    sip_port: int
    elevenlabs_api: bool
    secrets: int
    settings_sha256: str


def validate_settings(deps: Deps) -> ValidateResult:
    loaded = load_settings(deps.settings, deps.secrets)
    settings = loaded.settings
    transport, port = sip_transport(settings)
    return ValidateResult(
        name=settings.name,
        phone_number=settings.elevenlabs.phone_number,
        transport=transport.value,
        sip_port=port,
        elevenlabs_api=loaded.api_key is not None,
        secrets=len(settings.secret_refs()),
        settings_sha256=loaded.digest,
    )


# --- RenderConfig ------------------------------------------------------------------------------


class RenderResult(Model):
    version: str
    previous_version: str | None
    public_address: str
    published: bool
    files: int


def render_config(deps: Deps) -> RenderResult:
    loaded = load_settings(deps.settings, deps.secrets)
    address = deps.addresses.describe_address(deps.config.primary_allocation_id).public_ip
    public = loaded.settings.network.public_address or address
    rendered = render_configs(loaded.settings, loaded.secrets, public_address=public)
    if not VERSION_PATTERN.fullmatch(rendered.version):
        raise SettingsInvalid(f"renderer produced an unexpected version id {rendered.version!r}")
    published = not deps.config_store.has_version(rendered.version)
    if published:
        deps.config_store.publish(rendered.files, rendered.secret_files, rendered.version)
    previous = deps.config_store.desired_version()
    if previous != rendered.version:
        deps.config_store.set_desired_version(rendered.version)
    return RenderResult(
        version=rendered.version,
        previous_version=previous,
        public_address=public,
        published=published,
        files=len(rendered.files),
    )


# --- LaunchHost / CheckHostStack -------------------------------------------------------------


class LaunchResult(Model):
    stack_name: str
    operation: Literal["created", "updated", "unchanged", "in_progress"]
    deadline: float


class LaunchInput(StepInput):
    render: RenderResult


def template_location(url: str) -> tuple[str, str]:
    """(bucket, key) of an S3 HTTPS URL: virtual-hosted (`https://b.s3.<region>.amazonaws.com/k`) or path style."""
    parts = urllib.parse.urlsplit(url)
    host, path = parts.hostname or "", parts.path.lstrip("/")
    if ".s3." in host:
        return host.split(".s3.", 1)[0], path
    bucket, _, key = path.partition("/")
    return bucket, key


def host_stack_parameters(deps: Deps) -> dict[str, str]:
    """The root stack's parameters for the host stack (an SSM JSON document), without the config version."""
    cfg = deps.config
    params: dict[str, str] = {}
    if cfg.host_parameters_parameter:
        document = deps.parameters.get_json(cfg.host_parameters_parameter)
        if not isinstance(document, dict):
            raise SettingsInvalid(f"{cfg.host_parameters_parameter} must hold a JSON object")
        params = {str(k): str(v) for k, v in document.items()}
    params.pop(CONFIG_VERSION, None)
    return params


class _TemplateLoader(yaml.SafeLoader):
    """Reads a CloudFormation YAML template's structure; intrinsic tags (`!Ref`, `!Sub`, …) become None."""


_TemplateLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def template_parameters(body: bytes) -> set[str] | None:
    """Parameter names a CloudFormation template declares; None when the template cannot be read."""
    try:
        document = yaml.load(body, Loader=_TemplateLoader)  # noqa: S506 -- a SafeLoader subclass
    except yaml.YAMLError:
        return None
    if not isinstance(document, dict):
        return None
    declared = document.get("Parameters") or {}
    return {str(k) for k in declared} if isinstance(declared, dict) else None


def host_template(deps: Deps) -> bytes | None:
    """The layer's host template (HOST_TEMPLATE_FILE), when this function has it."""
    cfg = deps.config
    if not cfg.host_template_file:
        return None
    path = Path(cfg.host_template_file)
    return path.read_bytes() if path.is_file() else None


def publish_host_template(deps: Deps, body: bytes | None = None) -> bool:
    """Upload the layer's host template to HOST_TEMPLATE_URL when it differs (True when uploaded)."""
    body = host_template(deps) if body is None else body
    if body is None:
        return False
    bucket, key = template_location(deps.config.host_template_url)
    return deps.objects.put_if_changed(bucket, key, body)


def launch_host(deps: Deps, request: LaunchInput) -> LaunchResult:
    """Create the host stack, or update it; the running hosts keep serving during an update.

    The config version is a launch-time value only: a create passes the current version (the hosts' first
    boot applies it), an update keeps the stack's previous value (`UsePreviousValue`). So a Provision whose
    only change is the configuration finds the stack unchanged ("No updates are to be performed") and the
    new version reaches the hosts through ApplyConfig; a ConfigVersion change would rewrite the instances'
    user data, which stops and starts them.
    """
    cfg = deps.config
    name = cfg.host_stack_name
    if not cfg.host_template_url:
        raise SettingsInvalid("HOST_TEMPLATE_URL is not set")
    body = host_template(deps)
    publish_host_template(deps, body)
    declared = template_parameters(body) if body is not None else None
    takes_version = declared is None or CONFIG_VERSION in declared
    params = host_stack_parameters(deps)
    role = cfg.host_stack_role_arn
    info = deps.stacks.describe(name)
    operation: Literal["created", "updated", "unchanged", "in_progress"]
    if info is None:
        if takes_version:
            params[CONFIG_VERSION] = request.render.version
        try:
            deps.stacks.create(name, cfg.host_template_url, params, role)
        except StackRejected as exc:  # CloudFormation refused the template or parameters
            raise StackFailed(f"cannot create {name}: {exc}") from None
        operation = "created"
    elif info.status.endswith("_IN_PROGRESS"):
        operation = "in_progress"
    elif info.status in {"ROLLBACK_COMPLETE", "CREATE_FAILED", "DELETE_FAILED", "ROLLBACK_FAILED"}:
        raise StackFailed(f"{name} is {info.status} ({info.reason}); delete it and provision again")
    else:
        keep: list[str] = []
        if takes_version:
            if CONFIG_VERSION in info.parameters:
                keep.append(CONFIG_VERSION)
            else:  # the deployed template has no such parameter yet: there is no previous value to keep
                params[CONFIG_VERSION] = request.render.version
        try:
            changed = deps.stacks.update(name, cfg.host_template_url, params, role, keep_previous=keep)
        except StackRejected as exc:
            raise StackFailed(f"cannot update {name}: {exc}") from None
        operation = "updated" if changed else "unchanged"
    return LaunchResult(stack_name=name, operation=operation, deadline=clock.now() + cfg.stack_timeout_s)


class StackCheckInput(StepInput):
    launch: LaunchResult


class StackCheck(Model):
    ready: bool
    status: str
    primary_instance_id: str | None = None
    standby_instance_id: str | None = None
    address_associated: bool = False
    roles: list[RoleCommand] = Field(default_factory=list)
    """The `set-role` commands sent to the hosts once the stack is ready (primary first)."""


def private_addresses(outputs: Mapping[str, str]) -> dict[str, str]:
    """Instance id → private IP from the host stack's per-slot outputs (a failover may have swapped which
    slot serves, so the roles are mapped by instance id, never by slot)."""
    out: dict[str, str] = {}
    for slot in ("Primary", "Standby"):
        instance, address = outputs.get(f"{slot}InstanceId"), outputs.get(f"{slot}PrivateIp")
        if instance and address:
            out[instance] = address
    return out


def check_host_stack(deps: Deps, request: StackCheckInput) -> StackCheck:
    """Poll the host stack. When it is ready: roles from the state table (on the first deployment the
    stack's primary slot is the primary), the primary Elastic IP on the primary unless it is already on one
    of the stack's hosts (ADR-11), and `set-role` sent to each host — an update may have replaced an
    instance, which then booted with the role of its launch tag (ADR-12)."""
    launch = request.launch
    info = deps.stacks.describe(launch.stack_name)
    if info is None:
        raise StackFailed(f"{launch.stack_name} does not exist")
    if info.status in _STACK_FAILED:
        raise StackFailed(f"{launch.stack_name} is {info.status}: {info.reason or 'no reason given'}")
    if info.status not in _STACK_DONE:
        if clock.now() > launch.deadline:
            raise StackTimedOut(f"{launch.stack_name} still {info.status} at the deadline")
        return StackCheck(ready=False, status=info.status)
    primary = info.outputs.get("PrimaryInstanceId")
    if not primary:
        raise StackFailed(f"{launch.stack_name} has no PrimaryInstanceId output")
    standby = info.outputs.get("StandbyInstanceId") or None
    stack_hosts = {h for h in (primary, standby) if h}
    current = deps.state.get_deployment()
    if current and current.primary_instance_id and current.primary_instance_id in stack_hosts:
        # A failover may have swapped the roles since the stack was created: the table is the truth.
        primary = current.primary_instance_id
        others = sorted(h for h in stack_hosts if h != primary)
        standby = others[0] if others else None
    private = private_addresses(info.outputs)
    if standby and primary not in private:
        raise StackFailed(f"{launch.stack_name} reports no private IP for the primary {primary}")
    address = deps.addresses.describe_address(deps.config.primary_allocation_id)
    moved = False
    if address.instance_id != primary and address.instance_id not in stack_hosts - {primary}:
        deps.addresses.associate(address.allocation_id, primary)
        moved = True
    execution = request.execution.name
    roles = [send_role(deps, execution, primary, "primary")]
    if standby:
        roles.append(send_role(deps, execution, standby, "standby", private[primary]))
    return StackCheck(
        ready=True,
        status=info.status,
        primary_instance_id=primary,
        standby_instance_id=standby,
        address_associated=moved,
        roles=roles,
    )


# --- ApplyConfig / CheckApply -----------------------------------------------------------------


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


# --- VerifyTrunk -------------------------------------------------------------------------------


class VerifyInput(StepInput):
    render: RenderResult
    stack: StackCheck
    entered_at: str
    """`$$.State.EnteredTime`: unchanged across the state's retries, so it anchors the deadline."""


class HostCheck(Model):
    instance_id: str
    ok: bool
    running_version: str | None
    asterisk_up: bool
    endpoint_loaded: bool
    fresh: bool
    qualify: str | None = None


class ElevenLabsCheck(Model):
    checked: bool
    matches: bool | None = None
    mismatches: list[str] = Field(default_factory=list)
    note: str = ""


class VerifyResult(Model):
    version: str
    hosts: list[HostCheck]
    probe: ProbeReport
    elevenlabs: ElevenLabsCheck
    qualify: dict[str, str | None]


def desired_trunk(loaded: LoadedSettings, public_address: str) -> DesiredTrunk:
    """The ElevenLabs number's trunk: ElevenLabs calls our address with the inbound digest user, and
    authenticates our calls with the outbound one."""
    settings: Settings = loaded.settings
    el = settings.elevenlabs
    transport, port = sip_transport(settings)
    if el.transport is Transport.UDP:
        raise SettingsInvalid("ElevenLabs numbers cannot be synced over the experimental UDP transport")
    default = 5061 if el.transport is Transport.TLS else 5060
    address = public_address if port == default else f"{public_address}:{port}"
    return DesiredTrunk(
        phone_number=el.phone_number,
        label=f"{settings.name} (aws-sip-trunk)",
        address=address,
        transport="tls" if transport.value == "tls" else "tcp",
        media_encryption=el.media_encryption.value,
        username=el.inbound_username,
        password=loaded.secrets.reveal(el.inbound_password),
        inbound_username=el.outbound_username,
        inbound_password=loaded.secrets.reveal(el.outbound_password),
        agent_id=el.agent_id,
    )


def _elevenlabs_check(deps: Deps, loaded: LoadedSettings, public_address: str) -> ElevenLabsCheck:
    if loaded.api_key is None:
        return ElevenLabsCheck(checked=False, note="no API key configured")
    api = deps.elevenlabs(loaded.api_key.get_secret_value())
    desired = desired_trunk(loaded, public_address)
    try:
        actual = find_trunk(api, desired, loaded.settings.elevenlabs.phone_number_id)
    except ElevenLabsError as exc:  # reported here; SyncElevenLabs retries and gates
        return ElevenLabsCheck(checked=False, note=f"{type(exc).__name__}: {exc.message}")
    if actual is None:
        return ElevenLabsCheck(checked=True, matches=False, mismatches=["phone_number"], note="not imported yet")
    mismatches = [m.field for m in diff_trunk(desired, actual)]
    return ElevenLabsCheck(checked=True, matches=not mismatches, mismatches=mismatches)


def verify_trunk(deps: Deps, request: VerifyInput) -> VerifyResult:
    """Gate on what proves calls can flow: every host runs the version with the endpoint loaded, and the
    Elastic IP answers SIP OPTIONS. The ElevenLabs number is reported (SyncElevenLabs converges it) and
    qualify results are reported, never gating (they are unreliable against ElevenLabs)."""
    cfg = deps.config
    deadline = clock.parse_iso(request.entered_at) + cfg.verify_timeout_s
    version = request.render.version
    loaded = load_settings(deps.settings, deps.secrets)
    now = clock.now()
    hosts = [h for h in (request.stack.primary_instance_id, request.stack.standby_instance_id) if h]
    beats = deps.state.heartbeats(hosts)
    host_checks: list[HostCheck] = []
    for host in hosts:
        beat = beats.get(host)
        fresh = beat is not None and beat.fresh(now, cfg.heartbeat_max_age_s)
        check = HostCheck(
            instance_id=host,
            ok=bool(fresh and beat and beat.running_version == version and beat.asterisk_up and beat.endpoint_loaded),
            running_version=beat.running_version if beat else None,
            asterisk_up=bool(beat and beat.asterisk_up),
            endpoint_loaded=bool(beat and beat.endpoint_loaded),
            fresh=fresh,
            qualify=beat.qualify if beat else None,
        )
        host_checks.append(check)
    transport, port = sip_transport(loaded.settings)
    probe = probe_address(
        deps.prober, request.render.public_address, transport, port, cfg.probe_targets, cfg.probe_timeout_s
    )
    problems = [
        f"{c.instance_id} runs {c.running_version or 'nothing'}"
        + ("" if c.fresh else " (no fresh heartbeat)")
        + ("" if c.endpoint_loaded else ", endpoint not loaded")
        for c in host_checks
        if not c.ok
    ]
    if probe.probed and not probe.answers:
        problems.append(f"{probe.address} does not answer SIP OPTIONS ({probe.error or probe.status_code})")
    if problems:
        message = f"version {version} not verified: " + "; ".join(problems)
        if clock.now() >= deadline:
            raise VerificationTimedOut(message + f" (gave up after {cfg.verify_timeout_s}s)")
        raise TrunkNotVerified(message)
    return VerifyResult(
        version=version,
        hosts=host_checks,
        probe=probe,
        elevenlabs=_elevenlabs_check(deps, loaded, request.render.public_address),
        qualify={c.instance_id: c.qualify for c in host_checks},
    )


# --- SyncElevenLabs ------------------------------------------------------------------------------


class SyncInput(StepInput):
    render: RenderResult
    request: ProvisionRequest = ProvisionRequest()


class SyncOutcome(Model):
    action: Literal["skipped", "created", "updated", "unchanged"]
    phone_number_id: str | None = None
    changed_fields: list[str] = Field(default_factory=list)
    credentials_hash: str | None = None


def sync_elevenlabs(deps: Deps, request: SyncInput) -> SyncOutcome:
    loaded = load_settings(deps.settings, deps.secrets)
    if loaded.api_key is None:
        return SyncOutcome(action="skipped")
    desired = desired_trunk(loaded, request.render.public_address)
    current = deps.state.get_deployment()
    credentials_hash = loaded.credentials_hash()
    rotated = request.request.rotate_credentials or (
        current is not None and current.credentials_hash not in (None, credentials_hash)
    )
    api = deps.elevenlabs(loaded.api_key.get_secret_value())
    result = ensure_trunk(
        api, desired, assume_password_changed=rotated, phone_number_id=loaded.settings.elevenlabs.phone_number_id
    )
    remaining = diff_trunk(desired, api.get_phone_number(result.phone_number_id))
    if remaining:
        raise TrunkNotVerified("ElevenLabs number still differs after sync: " + ", ".join(m.field for m in remaining))
    return SyncOutcome(
        action=result.action,
        phone_number_id=result.phone_number_id,
        changed_fields=[m.field for m in result.mismatches],
        credentials_hash=credentials_hash,
    )


# --- RecordDeployment ----------------------------------------------------------------------------


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
        f"ElevenLabs number: {sync.action}" + (f" ({', '.join(sync.changed_fields)})" if sync.changed_fields else ""),
        "Step durations (s): " + ", ".join(f"{k}={v}" for k, v in durations.items()),
    ]
    return RecordResult(
        outcome="succeeded",
        version=render.version,
        durations_s=durations,
        subject=f"[sip-trunk] {deps.config.stack_name}: provision succeeded ({render.version})",
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
        subject=f"[sip-trunk] {deps.config.stack_name}: provision failed at {failed_step}"[:100],
        message="\n".join(lines),
    )
