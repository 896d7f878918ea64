"""LaunchHost and CheckHostStack: create or update the host stack, wait for it, then put the Elastic IP on the
primary and send the hosts their roles."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field

from sip_trunk.errors import SettingsInvalid, StackFailed, StackRejected, StackTimedOut
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import Model, RoleCommand, StepInput, send_role
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.provision.render import RenderResult
from sip_trunk.workflows.provision.validate import ProvisionRequest

CONFIG_VERSION = "ConfigVersion"
"""The host stack parameter naming the version a host applies at its first boot (stacks/host.yaml)."""
IMAGE_SOURCE, IMAGE = "ImageSource", "Image"
"""The root stack's image reference in the host-parameters document: `ssm-parameter` and a parameter name (its
current value is the image), or `ami-id` and an AMI id. LaunchHost resolves it; the host stack never sees it."""
SLOT_IMAGES: dict[str, str] = {"primary": "PrimaryImageId", "standby": "StandbyImageId"}
"""The host stack's per-slot image parameters (stacks/host.yaml), keyed by slot."""
BOOT_ONLY = ("LayerVersionArn",)
"""Document entries a host reads itself at its first boot and the host stack does not take (a code deploy
changes them; in the user data they would stop and start both hosts)."""
_AMI = re.compile(r"ami-[0-9a-f]{8,17}")

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


class ImageRollout(Model):
    """Which image each slot runs after this launch, and what is left for an explicit rollout."""

    target: str
    """The image the root stack names now (an SSM parameter's current value, resolved by this step)."""
    slots: dict[str, str] = Field(default_factory=dict)
    """Slot (`primary`, `standby`: the host stack's instances, not their roles) → image passed to the stack."""
    replaced: list[str] = Field(default_factory=list)
    """Slots this launch gives a new image (CloudFormation replaces their instances)."""
    pending: list[str] = Field(default_factory=list)
    """Slots still on another image: `{"rollout_image": true}` replaces the standby's slot; the serving
    host's slot follows after a failover (docs/OPERATIONS.md)."""


class LaunchResult(Model):
    stack_name: str
    operation: Literal["created", "updated", "unchanged", "in_progress"]
    deadline: float
    image: ImageRollout | None = None


class LaunchInput(StepInput):
    render: RenderResult
    request: ProvisionRequest = ProvisionRequest()


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
    for name in BOOT_ONLY:
        params.pop(name, None)
    return params


def resolve_image(deps: Deps, params: dict[str, str]) -> str | None:
    """Take the image reference out of the parameters and return the AMI id it names now (None: no reference).

    Resolved here, on every launch, because CloudFormation re-resolves a `{{resolve:ssm:…}}` reference only when
    its text changes: a new image published under the same parameter name would never reach the stack.
    """
    source, reference = params.pop(IMAGE_SOURCE, "ami-id"), params.pop(IMAGE, "")
    if not reference:
        return None
    image = deps.parameters.get_text(reference).strip() if source == "ssm-parameter" else reference
    if not _AMI.fullmatch(image):
        raise SettingsInvalid(f"the image {reference!r} is not an AMI id ({image[:40]!r})")
    return image


def serving_slot(deps: Deps, outputs: Mapping[str, str]) -> str:
    """The slot whose instance holds the primary role (the state table is the truth after a failover)."""
    current = deps.state.get_deployment()
    primary = current.primary_instance_id if current else None
    if primary and primary == outputs.get("StandbyInstanceId"):
        return "standby"
    return "primary"


def plan_images(
    deps: Deps, target: str, previous: Mapping[str, str], outputs: Mapping[str, str], rollout: bool
) -> ImageRollout:
    """The image per slot for an update: each slot keeps its image unless this is an explicit rollout, which
    replaces only the slot that does not serve (the standby's; the only host when there is no standby)."""
    slots = {slot: previous.get(name, "") for slot, name in SLOT_IMAGES.items()}
    has_standby = bool(outputs.get("StandbyInstanceId"))
    used = [slot for slot in SLOT_IMAGES if slot == "primary" or has_standby]
    replaced: list[str] = []
    for slot in used:
        if not slots[slot]:  # a stack from before per-slot images: it has no previous value to keep
            slots[slot] = target
            replaced.append(slot)
    if rollout:
        serving = serving_slot(deps, outputs)
        candidate = next((s for s in used if s != serving), serving)  # a single host is its own standby
        if slots[candidate] != target:
            slots[candidate] = target
            replaced.append(candidate)
    if not has_standby and not slots["standby"]:
        slots["standby"] = target  # no instance uses it; a later high-availability update starts from it
    pending = [slot for slot in used if slots[slot] != target]
    return ImageRollout(target=target, slots=slots, replaced=sorted(set(replaced)), pending=pending)


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
    user data, which stops and starts them. A code deploy changes no host stack parameter (the layer's ARN is
    read by a host at its first boot, `BOOT_ONLY`).

    The image is resolved to an AMI id on every launch (`resolve_image`). A create puts it on both slots; an
    update keeps each slot's image (a new image replaces an instance) unless the execution input asks for
    `rollout_image`, which replaces the standby's slot only (`plan_images`, ADR-33).
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
    target = resolve_image(deps, params)
    role = cfg.host_stack_role_arn
    info = deps.stacks.describe(name)
    operation: Literal["created", "updated", "unchanged", "in_progress"]
    image: ImageRollout | None = None
    if info is None:
        if target is not None:
            image = ImageRollout(target=target, slots=dict.fromkeys(SLOT_IMAGES, target), replaced=[])
            params.update({SLOT_IMAGES[slot]: ami for slot, ami in image.slots.items()})
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
        if target is not None:
            image = plan_images(deps, target, info.parameters, info.outputs, request.request.rollout_image)
            params.update({SLOT_IMAGES[slot]: ami for slot, ami in image.slots.items()})
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
    return LaunchResult(stack_name=name, operation=operation, deadline=clock.now() + cfg.stack_timeout_s, image=image)


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
