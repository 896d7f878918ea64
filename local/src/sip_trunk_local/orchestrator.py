"""`sip-trunk local up`: the whole product on one machine, and the controller process that keeps it running.

`up` starts a controller (`python -m sip_trunk_local.orchestrator serve`) in its own session; the controller
owns everything that lives in memory — moto's server with the emulated account, the state-machine executor
and the hooks to the local hosts — and answers `status`, `call`, `provision`, `drill` and `down` on a Unix socket in the
run directory. Its steps are appended to `events.jsonl` there, which `up` follows to show progress.

The steps, each timed:
1. moto: the server on 127.0.0.1 (random port), EC2/SSM hooks and the Lambda dispatcher installed;
2. control plane: `template.yaml` transformed offline and created (see `controlplane`);
3. operator settings: the local carrier added to the settings document (what an operator does to route a DID);
4. hosts network + ElevenLabs stand-in: the router/outside namespaces, the stand-in's API (HTTP) and SIP side;
5. provision: the real Provision state machine, whose LaunchHost creates the host stack, whose instances boot
   as local hosts (`ec2_hooks`); VerifyTrunk probes the Elastic IP 203.0.113.10 from the outside namespace;
6. call: the carrier calls the DID at 203.0.113.10, the gateway sends it to the agent, audio both ways.

While it serves, the controller runs `sip-trunk-agent report` on every host each `HEARTBEAT_S` (what the hosts'
`sip-trunk-agent.timer` does on EC2), so the Failover state machine's standby check sees fresh heartbeats.

watch-peer on the standby runs with local-mode settings through its real options: `--interval 0.5 --failures 3
--timeout 0.5` (production: `--interval 1.5 --failures 3 --timeout 1`, in `sip-trunk-watch-peer.service`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sip_trunk.aws import wiring
from sip_trunk.configstore import stack_parameter
from sip_trunk.sip import ProbeResult, ProbeTarget
from sip_trunk.workflows.provision import STEP_OF_STATE
from sip_trunk.workflows.state import Deployment

from sip_trunk_local import controlplane as cp
from sip_trunk_local.asterisk_runner import DEFAULT_ROOT, root_problem
from sip_trunk_local.drills import run_drill
from sip_trunk_local.ec2_hooks import Ec2Hooks, HostEvent
from sip_trunk_local.elevenlabs_api import ElevenLabsStandIn
from sip_trunk_local.executor import Dispatcher, ExecutionReport, load_handlers, real_time_pacer, run_execution
from sip_trunk_local.firewall import HostFirewall
from sip_trunk_local.hosts import HEARTBEAT_UNIT, STATE_FILE, LocalHostManager
from sip_trunk_local.netns import run_in_namespace
from sip_trunk_local.principals import (
    CALLS,
    Principals,
    install_invocation_credentials,
    install_state_machine_credentials,
    role_resolver,
)
from sip_trunk_local.profiles import ParametersRefused
from sip_trunk_local.standin import carrier_settings, credentials, place_call, start_standin
from sip_trunk_local.topology import CLIENT_IP, PHONE_NUMBER, PROBE_FUNCTION_IP, PUBLIC_IP

log = logging.getLogger(__name__)

DEFAULT_RUN_DIR = Path("/run/aws-sip-trunk/local")
STACK = "sip-local"
"""The stack name of `local up` without a samconfig profile."""
GUIDED_ANSWERS = {"ElevenLabsPhoneNumber": PHONE_NUMBER, "AlarmEmail": "ops@example.com"}
"""What local mode answers for a required parameter that a profile leaves open (`sam deploy --guided` asks)."""
LOCAL_IMAGE = {"AmiSource": "ami-id", "AmiReference": "ami-0123456789abcdef0"}
"""Local hosts boot the cached Asterisk root whatever image a profile names (the image is what local mode
emulates, not how it is built): the host stack gets an image ID, never a stock image built at boot."""
API_KEY = "sk_local_0123456789abcdefghij"
EVENTS = "events.jsonl"
STATE = "state.json"
CONTROL = "control.sock"
PIDFILE = "controller.pid"
LOG = "controller.log"
WORLD = "world"
"""The hosts' run directory inside the deployment's (its name gives the namespaces theirs: `hosts.namespace_prefix`)."""
HEARTBEAT_S = 60.0
WATCH_INTERVAL_S = 0.5
WATCH_FAILURES = 3
WATCH_TIMEOUT_S = 0.5


# --- small helpers ------------------------------------------------------------------------------------


def send_request(run_dir: Path, request: dict[str, Any], timeout_s: float = 600.0) -> dict[str, Any]:
    """One JSON request to the controller's socket; its JSON answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(run_dir / CONTROL))
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    answer: dict[str, Any] = json.loads(data or b"{}")
    return answer


def controller_pid(run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / PIDFILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def read_events(run_dir: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    path = run_dir / EVENTS
    if not path.exists():
        return [], offset
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read()
    complete = data[: data.rfind(b"\n") + 1]
    events = [json.loads(line) for line in complete.splitlines() if line.strip()]
    return events, offset + len(complete)


# --- the local deployment ----------------------------------------------------------------------------

PROBE_HANDLER = "sip_probe"
"""The handler of the template's one function in the VPC (SipProbeFunction)."""
PROBE_SECURITY_GROUP = "ProbeSecurityGroup"
"""The network template's group of SipProbeFunction's interfaces (its VpcConfig.SecurityGroupIds)."""


class _InVpc(threading.local):
    active = False


_IN_VPC = _InVpc()


def in_vpc(handler: Any) -> Any:
    """A handler whose SIP probes leave from the VPC (its own thread: moto's server runs each invocation on
    one), as a function with a VpcConfig sends from its interface in the subnet."""

    def run(event: dict[str, Any], context: Any) -> Any:
        _IN_VPC.active = True
        try:
            return handler(event, context)
        finally:
            _IN_VPC.active = False

    return run


@dataclass
class StepTiming:
    name: str
    seconds: float
    detail: str = ""


@dataclass
class LocalDeployment:
    """Everything `up` made, in this (the controller) process."""

    run_dir: Path
    project: Path
    stack: str = STACK
    parameters: dict[str, str] = field(default_factory=lambda: dict(GUIDED_ANSWERS))
    high_availability: bool = True
    asterisk_root: Path | None = None
    watch_interval_s: float = WATCH_INTERVAL_S
    watch_failures: int = WATCH_FAILURES
    watch_timeout_s: float = WATCH_TIMEOUT_S
    steps: list[StepTiming] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    moto: cp.MotoServer | None = None
    plane: cp.ControlPlane | None = None
    hooks: Ec2Hooks | None = None
    dispatcher: Dispatcher | None = None
    manager: Any = None
    standin: Any = None
    api: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    provision_reports: list[ExecutionReport] = field(default_factory=list)
    principals: Principals | None = None
    function_roles: dict[str, str] = field(default_factory=dict)
    """Function name → its execution role's ARN (as created in moto)."""
    lock: threading.RLock = field(default_factory=threading.RLock)
    _undo_credentials: Any = field(default=lambda: None)
    stopping: threading.Event = field(default_factory=threading.Event)

    # --- events ----------------------------------------------------------------------------------
    def emit(self, **event: Any) -> None:
        event.setdefault("at", time.time())
        with (self.run_dir / EVENTS).open("a") as fh:
            fh.write(json.dumps(event, default=str) + "\n")

    @contextlib.contextmanager
    def step(self, name: str, title: str) -> Iterator[dict[str, Any]]:
        self.emit(kind="step", step=name, title=title, status="start")
        started = time.monotonic()
        info: dict[str, Any] = {}
        try:
            yield info
        except BaseException as exc:
            self.emit(kind="step", step=name, title=title, status="failed", error=f"{type(exc).__name__}: {exc}")
            raise
        seconds = round(time.monotonic() - started, 3)
        self.steps.append(StepTiming(name, seconds, str(info.get("detail", ""))))
        self.emit(kind="step", step=name, title=title, status="done", seconds=seconds, **info)

    def on_host_event(self, event: HostEvent) -> None:
        self.emit(kind="host", event=event.kind, instance_id=event.instance_id, detail=event.detail,
                  seconds=event.duration_s)  # fmt: skip

    @property
    def phone_number(self) -> str:
        """The DID the carrier calls: the settings document's number (the template builds it from
        ElevenLabsPhoneNumber), the one imported into the ElevenLabs stand-in."""
        number = self.settings.get("elevenlabs", {}).get("phone_number")
        return str(number or self.parameters.get("ElevenLabsPhoneNumber", PHONE_NUMBER))

    @property
    def endpoint(self) -> str:
        return self.moto.endpoint if self.moto else ""

    def client(self, service: str) -> Any:
        return cp.client(service, self.endpoint)

    # --- up ----------------------------------------------------------------------------------------
    def up(self) -> dict[str, Any]:

        root = self.asterisk_root or DEFAULT_ROOT
        problem = root_problem(root)
        if problem:
            raise RuntimeError(f"{problem} (run `make asterisk-root`)")
        with self.step("moto", "AWS stand-in (moto server)") as info:
            self.moto = cp.MotoServer(call_log=self.run_dir / CALLS)
            self.moto.start()
            self.principals = Principals(self.run_dir, self.client("sts"), role_resolver(self.client("cloudformation")))
            self.hooks = Ec2Hooks(
                None, on_event=self.on_host_event, state_dir=self.run_dir, credentials_for=self.host_credentials
            )
            self.hooks.install()
            info["detail"] = self.endpoint
        with self.step("control-plane", "control plane from template.yaml") as info:
            self.plane = cp.create_control_plane(
                self.project,
                self.stack,
                self.template_parameters(),
                self.endpoint,
                high_availability=self.high_availability,
                one_lan=True,
            )
            # As an operator does after `sam deploy`: the stack's API-key secret starts "unset".
            self.client("secretsmanager").put_secret_value(
                SecretId=f"{self.stack}/elevenlabs/api-key", SecretString=API_KEY
            )
            outputs = self.plane.network_outputs
            info["detail"] = (
                f"stack {self.stack}: {len(self.plane.functions)} functions, Elastic IP {outputs['PrimaryPublicIp']} "
                f"({outputs['PrimaryAllocationId']})"
            )
        self._save_state()
        with self.step("settings", "operator settings: the local carrier routes the DID to the agent") as info:
            self.settings = self._add_carrier()
            info["detail"] = f"carrier {CLIENT_IP} → DID {self.phone_number}"
        with self.step("standin", "hosts network and the ElevenLabs stand-in") as info:
            self._start_world(root)
            info["detail"] = f"API {self.api.url}, SIP {self.standin.address}:{self.standin.port}"
        self._save_state()
        with self.step("provision", "Provision state machine (real ASL, real handlers)") as info:
            report = self.provision()
            if report.status != "SUCCEEDED":
                last = report.failures[-1] if report.failures else f"{report.error}: {report.cause}"
                raise RuntimeError(f"provision {report.status}: {last}")
            info["detail"] = f"version {report.output.get('version')}"
            info["states"] = self._state_durations(report)
        self._save_state()
        with self.step("call", "carrier → gateway → ElevenLabs stand-in") as info:
            call = self.call()
            info["detail"] = json.dumps(call.get("rtp", {}))
            if not call.get("ok") or not call.get("audio_both_ways"):
                raise RuntimeError(f"the call failed: {call}")
        self.summary = self.build_summary(call)
        self._save_state()
        self.emit(kind="ready", summary=self.summary)
        return self.summary

    def template_parameters(self) -> dict[str, str]:
        """The root stack's parameters: the deployment's, with local mode's image (hosts boot the cached root)."""
        return {**self.parameters, **LOCAL_IMAGE}

    def firewall(self) -> HostFirewall:
        """The hosts' security group for this deployment's parameters, as the network stack gets them."""
        params = {"RootStackName": self.stack, "LogKmsKeyArn": cp.placeholder_key_arn()}
        params |= cp.network_parameters(self.project, self.template_parameters())
        return HostFirewall.from_template(
            self.project / "stacks" / "network.yaml", params, members={PROBE_SECURITY_GROUP: [PROBE_FUNCTION_IP]}
        )

    def _add_carrier(self) -> dict[str, Any]:

        ssm = self.client("ssm")
        name = stack_parameter(self.stack, "settings")
        document: dict[str, Any] = json.loads(ssm.get_parameter(Name=name)["Parameter"]["Value"])
        document.update(carrier_settings(document["elevenlabs"]["phone_number"]))
        ssm.put_parameter(Name=name, Value=json.dumps(document), Type="String", Overwrite=True)
        return document

    def agent_environment(self) -> dict[str, str]:
        """What the host stack's user data writes to agent.env, from the host stack's parameters."""
        ssm = self.client("ssm")
        name = stack_parameter(self.stack, "host-parameters")
        params = json.loads(ssm.get_parameter(Name=name)["Parameter"]["Value"])
        return {
            "AWS_REGION": cp.REGION,
            "SIP_TRUNK_STACK": params["RootStackName"],
            "SIP_TRUNK_CONFIG_PREFIX": params["ConfigPrefix"],
            "SIP_TRUNK_STATE_TABLE": params["StateTable"],
            "SIP_TRUNK_BACKUP_BUCKET": params["BackupBucket"],
            "SIP_TRUNK_RECORDINGS_BUCKET": params["RecordingsBucket"],
            "SIP_TRUNK_FAILOVER_STATE_MACHINE_ARN": params["FailoverStateMachineArn"],
            "SIP_TRUNK_ASTERISK_LOG_GROUP": params["AsteriskLogGroup"],
        }

    def _secrets(self) -> dict[str, str]:
        sm = self.client("secretsmanager")
        out: dict[str, str] = {}
        for item in sm.list_secrets()["SecretList"]:
            value = sm.get_secret_value(SecretId=item["Name"])["SecretString"]
            out[f"secretsmanager:{item['Name']}"] = value
        return out

    def _start_world(self, root: Path) -> None:

        self.manager = LocalHostManager(
            self.run_dir / WORLD,
            root,
            self.endpoint,
            cp.REGION,
            agent_env=self.agent_environment(),
            watch_interval_s=self.watch_interval_s,
            watch_failures=self.watch_failures,
            watch_timeout_s=self.watch_timeout_s,
            firewall=self.firewall(),
        )
        assert self.hooks is not None
        self.hooks.manager = self.manager
        self.manager.network()
        self.api = ElevenLabsStandIn(API_KEY)
        self.api.__enter__()
        self.standin = start_standin(self.manager, credentials(self.settings, self._secrets()), public_ip=PUBLIC_IP)
        self._probe_from_outside()

    def _probe_from_outside(self) -> None:
        """Where the functions' SIP probes come from. VerifyTrunk, the health check and the failover functions
        run outside the VPC and reach the Elastic IP from a public AWS address: here, from the control plane's
        namespace (192.0.2.10), through the router and the hosts' firewalls (the address is not routable from
        this machine's own network). The in-VPC probe function (ADR-27) sends from its interface on the LAN
        (10.0.0.120, a member of the probe security group), straight to a host's private address."""

        outside = self.manager.control_plane_namespace()
        inside = self.manager.probe_function_namespace()
        original = wiring.sip_probe

        def probe(target: ProbeTarget, timeout_s: float) -> ProbeResult:
            ns = inside if _IN_VPC.active else outside
            result: ProbeResult = run_in_namespace(ns, lambda: original(target, timeout_s))
            log.info("probe %s from %s: %s", target, ns, result)
            return result

        wiring.sip_probe = probe

    def function_environment(self, function: str | None = None) -> dict[str, str]:
        """What a function runs with: the variables every function shares (the template's Globals), the
        function's own (`PROBE_FUNCTION` on the probing functions, ADR-27) and local mode's overrides."""
        assert self.plane is not None
        own = self.plane.functions.get(function, {}) if function else {}
        return {
            **self.plane.environment(),
            "PROBE_FUNCTION": "",
            **own,
            **cp.aws_environment(self.endpoint),
            # the host template the layer ships (/opt/sip_trunk_assets/host.yaml in Lambda)
            "HOST_TEMPLATE_FILE": str(self.project / "stacks" / "host.yaml"),
            "ELEVENLABS_API_URL": str(self.api.url),
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "PROBE_TIMEOUT_S": "2",
        }

    def function_credentials(self, function: str) -> dict[str, str]:
        """The function's execution role's credentials (what Lambda puts in its environment), bound to the
        function's environment."""
        assert self.principals is not None
        assert self.plane is not None
        role = self.function_roles.get(function)
        if role is None:
            role = self.client("lambda").get_function(FunctionName=function)["Configuration"]["Role"]
            self.function_roles[function] = role
        own = self.plane.functions.get(function, {})
        return self.principals.credentials(role, function, {**self.binding_names(), **own})

    def _with_role(self, credentials: Any) -> Any:
        """`around` for the dispatcher: each invocation signs with its function's role's credentials."""

        def around(function: str) -> Any:
            return credentials.using(self.function_credentials(function))

        return around

    def binding_names(self) -> dict[str, str]:
        """What the root stack's roles' policies are instantiated with: the functions' shared environment
        and, as `ref:<logical id>`, the physical names of the functions (the state machines' roles name them)."""
        assert self.plane is not None
        refs = {f"ref:{k}": v for k, v in self.plane.physical.items() if k.endswith("Function")}
        return {**self.plane.environment(), **refs}

    def host_credentials(self, role_arn: str, instance_id: str) -> dict[str, str]:
        """The instance profile role's credentials (IMDS on EC2), bound to the agent's settings."""
        assert self.principals is not None
        assert self.manager is not None
        return self.principals.credentials(role_arn, instance_id, self.manager.agent_env)

    def _dispatcher(self) -> Dispatcher:
        if self.dispatcher is None:
            assert self.plane is not None
            os.environ.update(self.function_environment())  # the handlers' modules read POWERTOOLS_* at import
            names = dict(self.plane.function_names)
            handlers = load_handlers(self.project / "functions")
            if PROBE_HANDLER in handlers:
                handlers[PROBE_HANDLER] = in_vpc(handlers[PROBE_HANDLER])
            around = None
            if self.principals is not None:
                credentials, undo_session = install_invocation_credentials()
                undo_machines = install_state_machine_credentials(self.principals, self.binding_names)
                self._undo_credentials = lambda: (undo_machines(), undo_session())
                around = self._with_role(credentials)
            self.dispatcher = Dispatcher(
                handlers,
                resolve=lambda name: names.get(name, name),
                environment=self.function_environment,
                pacer=real_time_pacer(scale=0.05, floor_s=0.1, ceiling_s=2.0),
                around=around,
            )
            self.dispatcher.install()
        return self.dispatcher

    def provision(self, payload: dict[str, Any] | None = None) -> ExecutionReport:
        assert self.plane is not None
        dispatcher = self._dispatcher()
        report = run_execution(
            self.client("stepfunctions"),
            self.plane.provision_state_machine_arn,
            payload or {"reason": "local up"},
            name=f"local-{len(self.provision_reports) + 1}-{int(time.time())}",
            dispatcher=dispatcher,
        )
        self.provision_reports.append(report)
        return report

    def heartbeats(self, period_s: float = HEARTBEAT_S) -> None:
        """`sip-trunk-agent.service` (`report`) on every host every `period_s` until `down`: what the hosts'
        heartbeat timer starts, with the unit's environment."""
        while not self.stopping.wait(period_s):
            for instance_id in list(getattr(self.manager, "hosts", {}) or {}):
                try:
                    host = self.manager.host(instance_id)
                    if not host.asterisk.running:
                        continue  # a crashed host reports nothing until it is repaired
                    self.manager.run_unit(instance_id, HEARTBEAT_UNIT, timeout=60)
                except Exception:  # a host going away between the listing and the command
                    log.debug("heartbeat of %s skipped", instance_id, exc_info=True)

    def drill(
        self, name: str, repeat: int = 1, *, scenarios: tuple[str, ...] = (), plant: str | None = None
    ) -> dict[str, Any]:

        self.emit(kind="drill-start", drill=name, repeat=repeat)
        if self.principals is not None:
            self.principals.save()  # the roles of hosts a drill replaces, named while their stack exists
        try:
            result = run_drill(self, name, repeat=repeat, scenarios=scenarios, plant=plant)
        except Exception as exc:
            self.emit(kind="drill-end", drill=name, ok=False, error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self.principals is not None:
                self.principals.save()
        self.emit(kind="drill-end", drill=name, ok=True)
        return result

    def _state_durations(self, report: ExecutionReport) -> dict[str, Any]:

        return {
            "steps_s": report.step_durations(STEP_OF_STATE),
            "waits_nominal_s": report.waits_s,
            "retries_nominal_s": report.retries_s,
            "total_s": report.duration_s,
            "states": [s.name for s in report.states],
        }

    def call(self, duration_ms: int = 3000) -> dict[str, Any]:

        with self.lock:
            workdir = self.run_dir / "calls" / str(int(time.time() * 1000))
            workdir.mkdir(parents=True, exist_ok=True)
            result = place_call(
                self.manager, self.standin, self.phone_number, workdir, public_ip=PUBLIC_IP, duration_ms=duration_ms
            )
            summary: dict[str, Any] = result.summary()
            summary["audio_both_ways"] = result.audio_both_ways
            if not result.ok:
                summary["sipp"] = result.sipp.describe()[-2000:]
            return summary

    def calls(self, count: int = 20) -> dict[str, list[dict[str, Any]]]:
        """The last call records on each host's disk (what the host agent has not shipped yet)."""
        from sip_trunk.agent.calls import last_calls
        from sip_trunk.agent.config import CALL_RECORDS_DIR

        return {iid: last_calls(host.path(CALL_RECORDS_DIR), count) for iid, host in self.manager.hosts.items()}

    def build_summary(self, call: dict[str, Any]) -> dict[str, Any]:
        report = self.provision_reports[-1]
        output = report.output if isinstance(report.output, dict) else {}
        hosts = []
        if self.hooks is not None:
            boots = {e.instance_id: e.duration_s for e in self.hooks.events if e.kind == "host-started"}
            booted = {e.instance_id: e.duration_s for e in self.hooks.events if e.kind == "host-bootstrapped"}
            for iid, info in self.hooks.hosts.items():
                hosts.append({"instance_id": iid, **info, "boot_s": boots.get(iid), "user_data_s": booted.get(iid)})
        return {
            "steps_s": {s.name: s.seconds for s in self.steps},
            "provision": {
                "execution": report.arn.rsplit(":", 1)[-1],
                "version": output.get("version"),
                **self._state_durations(report),
                "durations_recorded_s": output.get("durations_s"),
            },
            "public_ip": PUBLIC_IP,
            "hosts": hosts,
            "call": call,
            "endpoint": self.endpoint,
        }

    def status(self) -> dict[str, Any]:

        out: dict[str, Any] = {"endpoint": self.endpoint, "stack": self.stack, "summary": self.summary}
        with contextlib.suppress(Exception):
            out["hosts"] = self.manager.status()
        with contextlib.suppress(Exception):
            assert self.plane is not None
            table = self.plane.environment()["STATE_TABLE"]
            item = self.client("dynamodb").get_item(
                TableName=table, Key={"pk": {"S": "deployment"}, "sk": {"S": "current"}}
            )
            out["deployment_item"] = bool(item.get("Item"))
            _ = Deployment
        with contextlib.suppress(Exception):
            assert self.plane is not None
            eip = self.client("ec2").describe_addresses(
                AllocationIds=[self.plane.network_outputs["PrimaryAllocationId"]]
            )["Addresses"][0]
            out["elastic_ip"] = {"address": eip["PublicIp"], "instance_id": eip.get("InstanceId")}
        return out

    def _save_state(self) -> None:
        if self.principals is not None and self.plane is not None:
            self.principals.save()
        state = {
            "pid": os.getpid(),
            "endpoint": self.endpoint,
            "plane": self.plane.to_json() if self.plane else None,
            "summary": self.summary,
            "steps": [s.__dict__ for s in self.steps],
        }
        (self.run_dir / STATE).write_text(json.dumps(state, indent=2, default=str))

    # --- down ----------------------------------------------------------------------------------------
    def down(self) -> dict[str, Any]:
        removed: dict[str, Any] = {}
        self.stopping.set()
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.__exit__(None, None, None)
        if self.manager is not None:
            removed = self.manager.teardown()
        if self.dispatcher is not None:
            self.dispatcher.uninstall()
            self._undo_credentials()
        if self.hooks is not None:
            self.hooks.uninstall()
        if self.principals is not None and self.moto is not None:
            with contextlib.suppress(Exception):
                self.principals.save()
        if self.moto is not None:
            with contextlib.suppress(Exception):
                self.moto.stop()
        return removed


def teardown_without_controller(run_dir: Path) -> dict[str, Any]:
    """`local down` when the controller is gone: adopt the recorded world and remove it."""

    world = run_dir / WORLD
    if not (world / STATE_FILE).exists():
        return {}
    manager = LocalHostManager(world, DEFAULT_ROOT, "http://127.0.0.1:9", cp.REGION)
    removed: dict[str, Any] = manager.teardown()
    return removed


# --- the controller process -----------------------------------------------------------------------------


class _Handler(socketserver.StreamRequestHandler):
    deployment: LocalDeployment
    stop: threading.Event

    def handle(self) -> None:
        line = self.rfile.readline()
        try:
            request = json.loads(line or b"{}")
            answer = self.server_dispatch(request)
        except Exception as exc:
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()[-2000:]}
        self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")

    def server_dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.get("command")
        dep = self.deployment
        if command == "status":
            return {"ok": True, **dep.status()}
        if command == "call":
            result = dep.call(int(request.get("duration_ms", 3000)))
            return {"ok": bool(result.get("ok")), "call": result}
        if command == "calls":
            return {"ok": True, "calls": dep.calls(int(request.get("count", 20)))}
        if command == "provision":
            report = dep.provision(request.get("payload"))
            return {"ok": report.status == "SUCCEEDED", "status": report.status, "report": dep._state_durations(report),
                    "output": report.output, "error": report.error, "cause": report.cause}  # fmt: skip
        if command == "drill":
            result = dep.drill(
                str(request.get("drill")),
                int(request.get("repeat", 1)),
                scenarios=tuple(str(s) for s in request.get("scenarios") or ()),
                plant=str(request["plant"]) if request.get("plant") else None,
            )
            return {"ok": bool(result.get("ok")), "result": result}
        if command == "down":
            removed = dep.down()
            self.stop.set()
            return {"ok": True, "removed": removed}
        raise ValueError(f"unknown command {command!r}")


def serve(
    run_dir: Path,
    project: Path,
    *,
    stack: str = STACK,
    parameters: dict[str, str] | None = None,
    high_availability: bool = True,
    watch_interval_s: float = WATCH_INTERVAL_S,
    watch_failures: int = WATCH_FAILURES,
) -> int:
    """The controller: bring everything up, then answer requests until `down` (or SIGTERM)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PIDFILE).write_text(f"{os.getpid()}\n")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    deployment = LocalDeployment(
        run_dir=run_dir,
        project=project,
        stack=stack,
        parameters=dict(GUIDED_ANSWERS if parameters is None else parameters),
        high_availability=high_availability,
        watch_interval_s=watch_interval_s,
        watch_failures=watch_failures,
        watch_timeout_s=min(WATCH_TIMEOUT_S, watch_interval_s),
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        deployment.up()
    except BaseException as exc:
        if isinstance(exc, ParametersRefused):  # what CloudFormation refuses: its messages, no trace
            deployment.emit(kind="failed", error=str(exc), problems=exc.problems)
        else:
            deployment.emit(kind="failed", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc()[-4000:])
        log.exception("local up failed; tearing down")
        try:
            deployment.down()
        finally:
            (run_dir / PIDFILE).unlink(missing_ok=True)
            deployment.emit(kind="stopped")
        return 1
    sock_path = run_dir / CONTROL
    sock_path.unlink(missing_ok=True)
    handler = type("Handler", (_Handler,), {"deployment": deployment, "stop": stop})
    server = socketserver.ThreadingUnixStreamServer(str(sock_path), handler)
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    threading.Thread(target=deployment.heartbeats, name="heartbeats", daemon=True).start()
    deployment.emit(kind="serving", socket=str(sock_path))
    stop.wait()
    deployment.stopping.set()
    server.shutdown()
    server.server_close()
    sock_path.unlink(missing_ok=True)
    if deployment.manager is not None and deployment.manager.hosts:
        deployment.down()  # SIGTERM without `down`
    (run_dir / PIDFILE).unlink(missing_ok=True)
    deployment.emit(kind="stopped")
    return 0


def spawn_controller(
    run_dir: Path,
    project: Path,
    *,
    stack: str = STACK,
    parameters: dict[str, str] | None = None,
    high_availability: bool = True,
    watch_interval_s: float = WATCH_INTERVAL_S,
    watch_failures: int = WATCH_FAILURES,
) -> int:
    """Start the controller in its own session, its output in the run directory's log; its PID."""
    import subprocess

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / EVENTS).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "sip_trunk_local.orchestrator", "serve", "--run-dir", str(run_dir),
            "--project", str(project)]  # fmt: skip
    if not high_availability:
        argv.append("--single-host")
    argv += ["--stack-name", stack]
    for key, value in (GUIDED_ANSWERS if parameters is None else parameters).items():
        argv += ["--parameter", f"{key}={value}"]
    argv += ["--watch-interval", f"{watch_interval_s:g}", "--watch-failures", str(watch_failures)]
    with (run_dir / LOG).open("ab") as log_file:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    (run_dir / PIDFILE).write_text(f"{proc.pid}\n")
    return proc.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sip_trunk_local.orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve")
    p.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR)
    p.add_argument("--project", type=Path, default=None)
    p.add_argument("--single-host", action="store_true")
    p.add_argument("--stack-name", default=STACK)
    p.add_argument("--parameter", action="append", default=None, help="Key=Value, the root stack's parameters")
    p.add_argument("--watch-interval", type=float, default=WATCH_INTERVAL_S, help="the standby's watch-peer --interval")
    p.add_argument("--watch-failures", type=int, default=WATCH_FAILURES, help="the standby's watch-peer --failures")
    args = parser.parse_args(argv)
    project = args.project or cp.find_project_root()
    parameters = dict(item.split("=", 1) for item in args.parameter) if args.parameter else None
    return serve(
        args.run_dir,
        project,
        stack=args.stack_name,
        parameters=parameters,
        high_availability=not args.single_host,
        watch_interval_s=args.watch_interval,
        watch_failures=args.watch_failures,
    )


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # moto's executor and server threads are not daemons: everything they served is gone
