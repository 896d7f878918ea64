"""LaunchHost and CheckHostStack: create or update the host stack, wait for it, then put the Elastic IP on the
primary and send the hosts their roles."""

from __future__ import annotations

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
