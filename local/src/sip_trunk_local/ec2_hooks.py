"""The bridge from moto's EC2 and SSM to local hosts: what happens to an instance happens to a host.

moto records instances, Elastic IPs and Run Command invocations but runs nothing. In local mode:
- an instance created by a CloudFormation stack boots in the background, as EC2 instances do:
  `HostManager.start_host(instance_id, private_ip, role)` (the role from the instance's `aws-sip-trunk:role`
  tag), then the agent part of its user data: the host's `/etc/sip-trunk/agent.env` written from the
  user data's heredoc (`HostManager.write_agent_env`, which adds local mode's lines: moto endpoint,
  the instance profile role's credentials from `credentials_for`, the host's paths), then
  `sip-trunk-agent bootstrap --env-file /etc/sip-trunk/agent.env` as a shell command on the host;
  a terminated instance → `stop_host`;
- `ssm:SendCommand` to instances (only those named: moto would add every instance of the account when no
  Targets are given) → the document's `commands` run on that host as AWS-RunShellScript runs them
  (`HostManager.run_shell_script`: `_script.sh` run by `sh` as root with only the SSM agent's environment,
  in a fresh working directory, with the document's `executionTimeout`) in the background once the host
  has booted; `GetCommandInvocation` reports InProgress (empty output), then Success, Failed or TimedOut
  with the script's exit code and the first 24,000/8,000 characters of its stdout/stderr, as SSM does
  (moto always says Success at once);
- an Elastic IP association → `HostManager.map_public_address(public_ip, instance_id)` (once booted);
- Elastic IPs are handed out from the documentation range, 203.0.113.10 first (the primary's address),
  instead of moto's random 127.x addresses, so the address in the configs is the one the router maps.

moto gaps fixed for the host stack's instances (and nothing else): `AWS::EC2::Instance` created by moto's
CloudFormation ignores `LaunchTemplate` (no ImageId: a KeyError) and `NetworkInterfaces` (the instance lands
outside its subnet); both are folded into the properties moto reads before the instance is created. An
`AWS::EC2::EIP`'s `Tags` (which moto's CloudFormation drops) are put on the address, where the functions'
`aws:ResourceTag` conditions read them. A stack update is planned with CloudFormation's rules
(`sip_trunk_local.stack_updates`): an instance it replaces is replaced (its host stopped, a new one booted),
one it would stop and start is reported (`host-interrupted`).

Nothing of this process's environment reaches a host command: what the agent needs it reads from the
host's own files, as on EC2.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sip_trunk_local.stack_updates import Interruption, emulate_updates
from sip_trunk_local.topology import PUBLIC_ADDRESSES

log = logging.getLogger(__name__)

ROLE_TAG = "aws-sip-trunk:role"
AGENT_ENV_PATH = "/etc/sip-trunk/agent.env"
USER_DATA_AGENT_COMMAND = f"sip-trunk-agent bootstrap --env-file {AGENT_ENV_PATH}"
"""The agent part of the host stack's user data."""
STDOUT_LIMIT, STDERR_LIMIT = 24_000, 8_000
"""GetCommandInvocation returns the first 24,000 characters of stdout and the first 8,000 of stderr."""
DEFAULT_EXECUTION_TIMEOUT_S = 3600.0
"""AWS-RunShellScript's executionTimeout when the command names none."""


class ScriptResult(Protocol):
    code: int
    stdout: str
    stderr: str
    timed_out: bool


class HostManager(Protocol):
    """What local mode needs from the hosts (implemented by `sip_trunk_local.hosts.LocalHostManager`)."""

    def start_host(
        self, instance_id: str, private_ip: str, role: str, *, credentials: Mapping[str, str] | None = None
    ) -> Any: ...

    def stop_host(self, instance_id: str) -> None: ...

    def write_agent_env(self, instance_id: str, extra: Mapping[str, str] | None = None) -> Any: ...

    def run_shell_script(
        self, instance_id: str, commands: Sequence[str], *, command_id: str | None = None, timeout: float | None = None
    ) -> ScriptResult: ...

    def map_public_address(self, public_ip: str, instance_id: str) -> None: ...


@dataclass
class CommandRun:
    """One command on one instance, as `GetCommandInvocation` reports it."""

    command_id: str
    instance_id: str
    commands: list[str]
    timeout_s: float = DEFAULT_EXECUTION_TIMEOUT_S
    status: str = "InProgress"
    status_details: str = "InProgress"
    response_code: int = -1
    stdout: str = ""
    stderr: str = ""
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended is None else round(self.ended - self.started, 3)


@dataclass
class HostEvent:
    """Something the hooks did, for the progress display and the summary."""

    kind: str
    # host-started | host-stopped | address-mapped | command-done | host-failed | host-replaced | host-interrupted
    instance_id: str
    detail: str
    duration_s: float = 0.0


def agent_env_from_user_data(user_data: str) -> dict[str, str]:
    """`KEY=VALUE` lines of the agent.env heredoc in the instance's user data (base64 or plain)."""
    text = user_data
    try:
        decoded = base64.b64decode(user_data, validate=True).decode()
        text = decoded
    except (ValueError, UnicodeDecodeError):
        pass
    env: dict[str, str] = {}
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not inside:
            inside = line.startswith("cat >") and AGENT_ENV_PATH in line and "<<" in line
            continue
        if line == "EOF":
            break
        key, sep, value = line.partition("=")
        if sep and key:
            env[key] = value
    return env


def _user_data(instance: Any) -> str:
    data = getattr(instance, "user_data", None)
    if isinstance(data, list):
        data = data[0] if data else ""
    if isinstance(data, bytes):
        data = data.decode(errors="replace")
    return str(data or "")


def _profile_role(instance: Any) -> str:
    """The ARN of the role in the instance's instance profile ("" without one)."""
    association = instance.ec2_backend.iam_instance_profile_associations.get(instance.id)
    roles = getattr(getattr(association, "iam_instance_profile", None), "roles", None) or []
    return str(roles[0].arn) if roles else ""


def _tag(instance: Any, key: str) -> str | None:
    for tag in instance.get_tags():
        if tag.get("key") == key:
            return str(tag.get("value"))
    return None


class Ec2Hooks:
    """Patches moto's backends (in this process) so that they drive `manager`; see the module docstring."""

    def __init__(
        self,
        manager: HostManager | None,
        *,
        public_addresses: tuple[str, ...] = PUBLIC_ADDRESSES,
        on_event: Callable[[HostEvent], None] | None = None,
        state_dir: Path | None = None,
        run_user_data: bool = True,
        boot_timeout_s: float = 300.0,
        credentials_for: Callable[[str, str], Mapping[str, str]] | None = None,
    ) -> None:
        """`credentials_for(role_arn, instance_id)`: the credentials of the instance's instance profile role
        (what IMDS serves on EC2), written to the host's agent.env; None: the hosts use the account's."""
        self._manager = manager
        self.credentials_for = credentials_for
        self.state_dir = state_dir
        self.run_user_data = run_user_data
        self.boot_timeout_s = boot_timeout_s
        self.booted: dict[str, threading.Event] = {}
        self.boot_errors: dict[str, str] = {}
        self._pending_maps: dict[str, str] = {}
        self._addresses = list(public_addresses)
        self._handed_out = 0
        self.on_event = on_event
        self.lock = threading.Lock()
        self.hosts: dict[str, dict[str, str]] = {}
        """instance id → {private_ip, role}."""
        self.agent_env: dict[str, dict[str, str]] = {}
        self.runs: dict[tuple[str, str], CommandRun] = {}
        self.events: list[HostEvent] = []
        self.mapped: dict[str, str] = {}
        """public ip → instance id."""
        self._threads: list[threading.Thread] = []
        self._undo: list[Callable[[], None]] = []

    @property
    def manager(self) -> HostManager:
        if self._manager is None:
            raise RuntimeError("no host manager: instances cannot be started yet")
        return self._manager

    @manager.setter
    def manager(self, value: HostManager) -> None:
        self._manager = value

    # --- bookkeeping ---------------------------------------------------------------------------
    def _event(self, event: HostEvent) -> None:
        with self.lock:
            self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    def next_public_ip(self, fallback: Callable[[], str]) -> str:
        with self.lock:
            if self._handed_out < len(self._addresses):
                address = self._addresses[self._handed_out]
                self._handed_out += 1
                return address
        return fallback()

    # --- what the patched methods call -----------------------------------------------------------
    def instance_created(self, instance: Any) -> None:
        role = _tag(instance, ROLE_TAG) or "primary"
        private_ip = str(instance.private_ip)
        with self.lock:
            self.hosts[instance.id] = {"private_ip": private_ip, "role": role, "role_arn": _profile_role(instance)}
            self.agent_env[instance.id] = agent_env_from_user_data(_user_data(instance))
            self.booted[instance.id] = threading.Event()
        thread = threading.Thread(
            target=self._boot, args=(instance.id, private_ip, role), name=f"boot-{instance.id}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _boot(self, instance_id: str, private_ip: str, role: str) -> None:
        started = time.monotonic()
        try:
            role_arn = self.hosts.get(instance_id, {}).get("role_arn", "")
            if self.credentials_for is not None and role_arn:
                credentials = self.credentials_for(role_arn, instance_id)
                self.manager.start_host(instance_id, private_ip, role, credentials=credentials)
            else:
                self.manager.start_host(instance_id, private_ip, role)
            self._event(
                HostEvent("host-started", instance_id, f"{role} at {private_ip}", round(time.monotonic() - started, 3))
            )
            if self.run_user_data:
                self._run_user_data(instance_id)
            with self.lock:
                pending = [ip for ip, iid in self._pending_maps.items() if iid == instance_id]
                for ip in pending:
                    del self._pending_maps[ip]
            for ip in pending:
                self._map(ip, instance_id)
        except Exception as exc:
            log.exception("host %s failed to boot", instance_id)
            with self.lock:
                self.boot_errors[instance_id] = f"{type(exc).__name__}: {exc}"
            self._event(HostEvent("host-failed", instance_id, f"{type(exc).__name__}: {exc}"))
        finally:
            self.booted[instance_id].set()

    def _run_user_data(self, instance_id: str) -> None:
        """The agent part of the host stack's user data: agent.env, then `sip-trunk-agent bootstrap`."""
        env = self.agent_env.get(instance_id, {})
        if not env:
            return
        self.manager.write_agent_env(instance_id, env)
        started = time.monotonic()
        result = self.manager.run_shell_script(instance_id, [USER_DATA_AGENT_COMMAND], command_id="user-data")
        if self.state_dir is not None:
            directory = self.state_dir / "instances" / instance_id
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "bootstrap.log").write_text(result.stdout + result.stderr)
        if result.code != 0:
            raise RuntimeError(f"bootstrap exited {result.code}: {(result.stdout + result.stderr).strip()[-400:]}")
        self._event(HostEvent("host-bootstrapped", instance_id, "user data done", round(time.monotonic() - started, 3)))

    def wait_booted(self, instance_id: str, timeout_s: float | None = None) -> bool:
        event = self.booted.get(instance_id)
        if event is None:
            return True  # not an instance of ours: nothing to wait for
        return event.wait(self.boot_timeout_s if timeout_s is None else timeout_s)

    def host_offline(self, instance_id: str) -> None:
        """The instance is down (rebooting): Run Command holds what is sent to it until :meth:`host_online`, as
        SSM does for a managed node whose agent is not connected."""
        with self.lock:
            self.booted.setdefault(instance_id, threading.Event()).clear()

    def host_online(self, instance_id: str) -> None:
        with self.lock:
            self.booted.setdefault(instance_id, threading.Event()).set()

    def instance_terminated(self, instance_id: str) -> None:
        with self.lock:
            known = self.hosts.pop(instance_id, None)
        if known is None:
            return
        self.manager.stop_host(instance_id)
        self._event(HostEvent("host-stopped", instance_id, known["role"]))

    def address_associated(self, public_ip: str, instance_id: str) -> None:
        event = self.booted.get(instance_id)
        if event is not None and not event.is_set():
            with self.lock:  # mapped when the host has booted (an EIP can point at a booting instance)
                self._pending_maps[public_ip] = instance_id
            return
        if instance_id in self.boot_errors or (event is None and instance_id not in self.hosts):
            return
        self._map(public_ip, instance_id)

    def _map(self, public_ip: str, instance_id: str) -> None:
        self.manager.map_public_address(public_ip, instance_id)
        with self.lock:
            self.mapped[public_ip] = instance_id
        self._event(HostEvent("address-mapped", instance_id, public_ip))

    def command_sent(
        self,
        command_id: str,
        instance_ids: list[str],
        commands: list[str],
        timeout_s: float = DEFAULT_EXECUTION_TIMEOUT_S,
    ) -> None:
        for instance_id in instance_ids:
            run = CommandRun(
                command_id=command_id, instance_id=instance_id, commands=list(commands), timeout_s=timeout_s
            )
            with self.lock:
                self.runs[(command_id, instance_id)] = run
            thread = threading.Thread(target=self._execute, args=(run,), name=f"run-{instance_id}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _execute(self, run: CommandRun) -> None:
        stdout, stderr, code, details = "", "", 1, "Failed"
        if not self.wait_booted(run.instance_id) or run.instance_id in self.boot_errors:
            # SSM would leave it Pending, then DeliveryTimedOut; the poller only needs "not Success"
            stderr = f"instance {run.instance_id} is not online: {self.boot_errors.get(run.instance_id, 'booting')}"
        else:
            try:
                result = self.manager.run_shell_script(
                    run.instance_id, run.commands, command_id=run.command_id, timeout=run.timeout_s
                )
                stdout, stderr, code = result.stdout, result.stderr, result.code
                details = "ExecutionTimedOut" if result.timed_out else ("Success" if code == 0 else "Failed")
            except Exception as exc:
                stderr = f"{type(exc).__name__}: {exc}"
        with self.lock:
            run.stdout, run.stderr = stdout, stderr
            run.response_code = code
            run.status_details = details
            run.status = {"Success": "Success", "ExecutionTimedOut": "TimedOut"}.get(details, "Failed")
            run.ended = time.monotonic()
        self._event(
            HostEvent("command-done", run.instance_id, f"{run.status}: {run.commands[0]}", run.duration_s or 0.0)
        )

    def invocation(self, command_id: str, instance_id: str, base: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            run = self.runs.get((command_id, instance_id))
            if run is None:
                return base
            return {
                **base,
                "Status": run.status,
                "StatusDetails": run.status_details,
                "ResponseCode": run.response_code,
                "StandardOutputContent": run.stdout[:STDOUT_LIMIT],
                "StandardErrorContent": run.stderr[:STDERR_LIMIT],
            }

    def wait_commands(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    # --- patching moto ---------------------------------------------------------------------------
    def _patch(self, owner: Any, name: str, value: Any) -> None:
        if name not in owner.__dict__:  # inherited: undone by removing the class's own attribute
            setattr(owner, name, value)
            self._undo.append(lambda: delattr(owner, name))
            return
        original = owner.__dict__[name]
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self) -> None:
        from moto.ec2.models import elastic_ip_addresses, instances
        from moto.ssm import models as ssm_models

        hooks = self
        original_random_ip = getattr(elastic_ip_addresses, "random_ip")  # noqa: B009 (not exported)
        self._patch(elastic_ip_addresses, "random_ip", lambda: hooks.next_public_ip(original_random_ip))
        create_address = elastic_ip_addresses.ElasticAddress.__dict__["create_from_cloudformation_json"].__func__

        def address_from_cloudformation_json(
            cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kw: Any
        ) -> Any:
            address = create_address(cls, resource_name, cloudformation_json, account_id, region_name, **kw)
            tags = {t["Key"]: t["Value"] for t in cloudformation_json.get("Properties", {}).get("Tags", [])}
            if tags:  # moto's CloudFormation drops an EIP's Tags; the policies' conditions read them
                address.ec2_backend.create_tags([address.allocation_id], tags)
            return address

        self._patch(
            elastic_ip_addresses.ElasticAddress,
            "create_from_cloudformation_json",
            classmethod(address_from_cloudformation_json),
        )

        create_instance = instances.Instance.__dict__["create_from_cloudformation_json"].__func__

        def create_from_cloudformation_json(
            cls: Any, /, resource_name: str, cloudformation_json: Any, account_id: str, region_name: str, **kw: Any
        ) -> Any:
            fold_instance_properties(cloudformation_json, account_id, region_name)
            instance = create_instance(cls, resource_name, cloudformation_json, account_id, region_name, **kw)
            hooks.instance_created(instance)
            return instance

        self._patch(instances.Instance, "create_from_cloudformation_json", classmethod(create_from_cloudformation_json))

        terminate = instances.InstanceBackend.terminate_instances

        def terminate_instances(backend: Any, instance_ids: list[str]) -> Any:
            result = terminate(backend, instance_ids)
            for instance_id in instance_ids:
                hooks.instance_terminated(instance_id)
            return result

        self._patch(instances.InstanceBackend, "terminate_instances", terminate_instances)

        associate = elastic_ip_addresses.ElasticAddressBackend.associate_address

        def associate_address(backend: Any, *args: Any, **kwargs: Any) -> Any:
            eip = associate(backend, *args, **kwargs)
            if eip.instance is not None:
                hooks.address_associated(eip.public_ip, eip.instance.id)
            return eip

        self._patch(elastic_ip_addresses.ElasticAddressBackend, "associate_address", associate_address)

        send = ssm_models.SimpleSystemManagerBackend.send_command

        def send_command(backend: Any, *args: Any, **kwargs: Any) -> Any:
            requested = list(kwargs.get("instance_ids") or [])
            command = send(backend, *args, **kwargs)
            if requested and not kwargs.get("targets"):
                # moto adds every instance of the account when no Targets are given (an empty tag filter
                # matches all): the command goes to the requested instances only, as on AWS
                command.instance_ids = requested
                command.invocations = [i for i in command.invocations if i.get("InstanceId") in requested]
            parameters = command.parameters or {}
            commands = list(parameters.get("commands", []))
            timeout = float((parameters.get("executionTimeout") or [str(DEFAULT_EXECUTION_TIMEOUT_S)])[0])
            hooks.command_sent(command.command_id, list(command.instance_ids), commands, timeout)
            return command

        self._patch(ssm_models.SimpleSystemManagerBackend, "send_command", send_command)

        get_invocation = ssm_models.Command.get_invocation

        def invocation(command: Any, instance_id: str, plugin_name: str | None) -> dict[str, Any]:
            base = get_invocation(command, instance_id, plugin_name)
            return hooks.invocation(command.command_id, instance_id, dict(base))

        self._patch(ssm_models.Command, "get_invocation", invocation)

        # What a host stack update would do on AWS: instances it replaces are replaced (the hooks above stop the
        # old host and boot the new one); what it would stop and start is reported, as moto models no stop.
        emulate_updates(self._patch, self.stack_updated)

    def stack_updated(self, stack: str, plan: list[Interruption]) -> None:
        for item in plan:
            kind = "host-replaced" if item.impact == "replacement" else "host-interrupted"
            self._event(HostEvent(kind, item.resource, f"{stack}: {item}"))

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    @contextmanager
    def installed(self) -> Iterator[Ec2Hooks]:
        self.install()
        try:
            yield self
        finally:
            self.uninstall()


def fold_instance_properties(cloudformation_json: Any, account_id: str, region_name: str) -> None:
    """Give moto's `AWS::EC2::Instance` what it reads: ImageId/InstanceType/UserData from the launch template
    when the instance names one and does not set them itself (stacks/host.yaml sets the image per instance),
    and SubnetId/PrivateIpAddress from its first network interface."""
    from moto.ec2.models import ec2_backends

    props = cloudformation_json.setdefault("Properties", {})
    template_ref = props.get("LaunchTemplate")
    if template_ref and any(key not in props for key in ("ImageId", "InstanceType", "UserData")):
        backend = ec2_backends[account_id][region_name]
        ref = {k: v for k, v in template_ref.items() if k in {"LaunchTemplateId", "LaunchTemplateName", "Version"}}
        data = backend._get_template_from_args(ref).data
        for key in ("ImageId", "InstanceType", "UserData", "KeyName"):
            if key not in props and data.get(key):
                props[key] = data[key]
    interfaces = props.get("NetworkInterfaces") or []
    if interfaces and "SubnetId" not in props:
        first = interfaces[0]
        if first.get("SubnetId"):
            props["SubnetId"] = first["SubnetId"]
        if first.get("PrivateIpAddress") and "PrivateIpAddress" not in props:
            props["PrivateIpAddress"] = first["PrivateIpAddress"]
        if first.get("GroupSet") and "SecurityGroupIds" not in props:
            props["SecurityGroupIds"] = first["GroupSet"]
