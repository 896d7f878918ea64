"""In-memory fakes of the workflow ports (`sip_trunk.workflows.ports`), one per port, and `FakeWorld`, which
composes them into the `Deps` a workflow step takes.

Each fake behaves as its adapter in `sip_trunk.aws` does, errors included: an id EC2 does not know is absent
from `instances()`, throttling raises `AwsThrottled`, a denied call raises botocore's `ClientError`, a refused
association `AddressRefused`, an unreachable host `HostUnreachable`, a refused stack `StackRejected`.
`tests/integration/test_port_contracts.py` runs the same contract against the fakes and the adapters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from botocore.exceptions import ClientError
from sip_trunk.elevenlabs import (
    AssignedAgent,
    DesiredTrunk,
    ElevenLabsNotFound,
    InboundTrunk,
    OutboundTrunk,
    PhoneNumber,
    PhoneNumberApi,
)
from sip_trunk.errors import AddressRefused, AwsThrottled, HostUnreachable, StackRejected
from sip_trunk.sip import CertificateReport, CertificateTarget, ProbeResult, ProbeTarget
from sip_trunk.workflows.config import WorkflowConfig
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.ports import (
    CertificateChecker,
    CommandResult,
    CommandStatus,
    ElasticAddress,
    Instance,
    StackInfo,
)
from sip_trunk.workflows.state import Deployment, HealthCounter, HostHeartbeat

STACK = "sip-test"
ALLOCATION = "eipalloc-0123456789abcdef0"
PUBLIC_IP = "203.0.113.10"
PRIMARY = "i-0000000000000000a"
STANDBY = "i-0000000000000000b"
PRIVATE_IPS = {PRIMARY: "10.0.1.10", STANDBY: "10.0.2.10"}
OUTBOUND_PASSWORD = "fake-outbound-password"
INBOUND_PASSWORD = "fake-inbound-password"
API_KEY = "fake-elevenlabs-api-key"
DENIED = "UnauthorizedOperation"
"""What EC2 answers a call IAM does not allow (other services say AccessDenied/AccessDeniedException)."""


def client_error(code: str, operation: str, message: str = "") -> ClientError:
    """The exception botocore raises for an AWS error response."""
    return ClientError({"Error": {"Code": code, "Message": message or code}}, operation)


class Faults:
    """Errors a fake raises on the next calls of an operation: `faults.fail("associate", DENIED)`.

    A throttling code raises `AwsThrottled` (as the adapters' `aws_call` does); any other code raises the
    `ClientError` botocore would, which the adapters let pass."""

    THROTTLING = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded"})

    def __init__(self) -> None:
        self._pending: dict[str, list[str]] = {}

    def fail(self, operation: str, code: str, times: int = 1) -> None:
        self._pending.setdefault(operation, []).extend([code] * times)

    def check(self, operation: str) -> None:
        codes = self._pending.get(operation)
        if not codes:
            return
        code = codes.pop(0)
        if code in self.THROTTLING:
            raise AwsThrottled(f"{operation}: AWS throttled the call ({code})")
        raise client_error(code, operation)


# --- settings and secrets ---------------------------------------------------------------------------


def settings_document(*, api_key: bool = False, **elevenlabs: Any) -> dict[str, Any]:
    el: dict[str, Any] = {
        "phone_number": "+14155550100",
        "transport": "tcp",
        "outbound_username": "gateway-out",
        "outbound_password": f"ssm:/{STACK}/sip/outbound-password",
        "inbound_username": "elevenlabs-in",
        "inbound_password": f"secretsmanager:{STACK}/sip/inbound-password",
    }
    if api_key:
        el["api_key"] = f"secretsmanager:{STACK}/elevenlabs/api-key"
    el.update(elevenlabs)
    return {"name": STACK, "elevenlabs": el, "network": {"local_nets": ["10.0.0.0/16"]}}


@dataclass
class FakeSettings:
    document: Any = field(default_factory=settings_document)
    operator: Any = None
    """The operator's document (`sip-trunk push`); None when none is stored."""

    def settings_document(self) -> Any:
        if isinstance(self.document, Exception):
            raise self.document
        return json.loads(json.dumps(self.document))

    def operator_document(self) -> Any | None:
        if isinstance(self.operator, Exception):
            raise self.operator
        return None if self.operator is None else json.loads(json.dumps(self.operator))


@dataclass
class FakeParameters:
    values: dict[str, Any] = field(default_factory=dict)

    def get_json(self, name: str) -> Any:
        return json.loads(json.dumps(self.values[name]))

    def get_text(self, name: str) -> str:
        return str(self.values[name])


@dataclass
class FakeSecrets:
    values: dict[str, str] = field(
        default_factory=lambda: {
            f"ssm:/{STACK}/sip/outbound-password": OUTBOUND_PASSWORD,
            f"secretsmanager:{STACK}/sip/inbound-password": INBOUND_PASSWORD,
            f"secretsmanager:{STACK}/elevenlabs/api-key": API_KEY,
        }
    )

    def resolve(self, ref: str) -> str:
        return self.values[ref]  # KeyError when missing, as the adapter raises


# --- the config store --------------------------------------------------------------------------------


@dataclass
class FakeConfigStore:
    versions: dict[str, dict[str, bytes]] = field(default_factory=dict)
    secret_files: dict[str, frozenset[str]] = field(default_factory=dict)
    desired: str | None = None
    published: list[str] = field(default_factory=list)

    def has_version(self, version: str) -> bool:
        return version in self.versions

    def publish(self, files: Mapping[str, bytes], secret_files: frozenset[str], version: str) -> None:
        self.versions[version] = dict(files)
        self.secret_files[version] = secret_files
        self.published.append(version)

    def desired_version(self) -> str | None:
        return self.desired

    def set_desired_version(self, version: str) -> None:
        self.desired = version

    def clear_desired_version(self) -> None:
        self.desired = None

    def snapshot(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for version, files in sorted(self.versions.items()):
            for name, body in sorted(files.items()):
                if name in self.secret_files.get(version, frozenset()):
                    digest = hashlib.sha256(body).hexdigest()
                    out.append(
                        {"name": f"{version}/{name}", "type": "SecureString", "value_sha256_of_ciphertext": digest}
                    )
                else:
                    out.append({"name": f"{version}/{name}", "type": "String", "value": body.decode()})
        return out


# --- EC2 ---------------------------------------------------------------------------------------------


@dataclass
class FakeEc2:
    """The Elastic IPs and instances of the account. An instance removed from `known` is gone."""

    addresses: dict[str, ElasticAddress] = field(
        default_factory=lambda: {ALLOCATION: ElasticAddress(allocation_id=ALLOCATION, public_ip=PUBLIC_IP)}
    )
    known: dict[str, Instance] = field(
        default_factory=lambda: {
            i: Instance(instance_id=i, state="running", private_ip=ip) for i, ip in PRIVATE_IPS.items()
        }
    )
    faults: Faults = field(default_factory=Faults)
    associations: list[tuple[str, str]] = field(default_factory=list)

    def describe_address(self, allocation_id: str) -> ElasticAddress:
        self.faults.check("describe_address")
        if allocation_id not in self.addresses:
            raise client_error("InvalidAllocationID.NotFound", "DescribeAddresses")
        return self.addresses[allocation_id]

    def associate(self, allocation_id: str, instance_id: str) -> str:
        self.faults.check("associate")
        instance = self.known.get(instance_id)
        if allocation_id not in self.addresses:
            raise AddressRefused(f"InvalidAllocationID.NotFound: {allocation_id}")
        if instance is None:
            raise AddressRefused(f"InvalidInstanceID.NotFound: {instance_id}")
        if instance.state != "running":
            raise AddressRefused(f"IncorrectInstanceState: {instance_id} is {instance.state}")
        association = f"eipassoc-{len(self.associations) + 1:017d}"
        self.addresses[allocation_id] = replace(
            self.addresses[allocation_id], instance_id=instance_id, association_id=association
        )
        self.associations.append((allocation_id, instance_id))
        return association

    def instances(self, instance_ids: Sequence[str]) -> list[Instance]:
        self.faults.check("instances")
        return [self.known[i] for i in dict.fromkeys(instance_ids) if i in self.known]


# --- CloudFormation ----------------------------------------------------------------------------------


def host_outputs(primary: str = PRIMARY, standby: str | None = STANDBY) -> dict[str, str]:
    outputs = {"PrimaryInstanceId": primary, "PrimaryPrivateIp": PRIVATE_IPS.get(primary, "10.0.1.99")}
    if standby:
        outputs |= {"StandbyInstanceId": standby, "StandbyPrivateIp": PRIVATE_IPS.get(standby, "10.0.2.99")}
    return outputs


@dataclass
class FakeStacks:
    stacks: dict[str, StackInfo] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, str], tuple[str, ...]]] = field(default_factory=list)
    """(operation, stack, parameters, parameters kept) of every create and update."""
    faults: Faults = field(default_factory=Faults)
    rejects: str = ""
    """When set, create and update raise `StackRejected` with this message (an invalid template)."""

    def describe(self, name: str) -> StackInfo | None:
        self.faults.check("describe")
        return self.stacks.get(name)

    def create(self, name: str, template_url: str, parameters: Mapping[str, str], role_arn: str = "") -> None:
        self.faults.check("create")
        if self.rejects:
            raise StackRejected(f"ValidationError: {self.rejects}")
        if name in self.stacks:
            raise StackRejected(f"AlreadyExistsException: Stack [{name}] already exists")
        self.calls.append(("create", name, dict(parameters), ()))
        self.stacks[name] = StackInfo(name=name, status="CREATE_IN_PROGRESS", parameters=dict(parameters))

    def update(
        self,
        name: str,
        template_url: str,
        parameters: Mapping[str, str],
        role_arn: str = "",
        keep_previous: Sequence[str] = (),
    ) -> bool:
        self.faults.check("update")
        if self.rejects:
            raise StackRejected(f"ValidationError: {self.rejects}")
        current = self.stacks.get(name)
        if current is None:
            raise StackRejected(f"ValidationError: Stack [{name}] does not exist")
        self.calls.append(("update", name, dict(parameters), tuple(keep_previous)))
        merged = {**{k: v for k, v in current.parameters.items() if k in keep_previous}, **parameters}
        if merged == dict(current.parameters):
            return False
        self.stacks[name] = replace(current, status="UPDATE_IN_PROGRESS", parameters=merged)
        return True

    def finish(self, name: str, status: str = "", outputs: Mapping[str, str] | None = None, reason: str = "") -> None:
        """CloudFormation finishes the operation in progress (CREATE_/UPDATE_COMPLETE unless told otherwise)."""
        current = self.stacks[name]
        done = status or current.status.replace("_IN_PROGRESS", "_COMPLETE")
        self.stacks[name] = replace(
            current, status=done, reason=reason, outputs=dict(host_outputs() if outputs is None else outputs)
        )


# --- Run Command -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentCommand:
    command_id: str
    instance_ids: tuple[str, ...]
    commands: tuple[str, ...]
    comment: str


@dataclass
class FakeCommands:
    """Records every Run Command sent; `outcome` is what each host's invocation reports when polled."""

    sent: list[SentCommand] = field(default_factory=list)
    unreachable: set[str] = field(default_factory=set)
    outcome: dict[str, CommandStatus] = field(default_factory=dict)
    output: str = ""
    faults: Faults = field(default_factory=Faults)

    def send(self, instance_ids: Sequence[str], commands: Sequence[str], comment: str) -> str:
        self.faults.check("send")
        missing = [i for i in instance_ids if i in self.unreachable]
        if missing:
            raise HostUnreachable(f"{', '.join(missing)}: InvalidInstanceId")
        command_id = f"cmd-{len(self.sent) + 1}"
        self.sent.append(SentCommand(command_id, tuple(instance_ids), tuple(commands), comment))
        return command_id

    def results(self, command_id: str, instance_ids: Sequence[str]) -> list[CommandResult]:
        self.faults.check("results")
        return [
            CommandResult(instance_id=i, status=self.outcome.get(i, "InProgress"), output=self.output)
            for i in instance_ids
        ]

    def lines(self) -> list[str]:
        """Every command line sent, in order."""
        return [line for c in self.sent for line in c.commands]


# --- the state table ---------------------------------------------------------------------------------


@dataclass
class FakeStateStore:
    deployment: Deployment | None = None
    history: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    beats: dict[str, HostHeartbeat] = field(default_factory=dict)
    lock_owner: str | None = None
    lock_expires: float = 0.0
    counter: HealthCounter = field(default_factory=HealthCounter)
    faults: Faults = field(default_factory=Faults)

    def get_deployment(self) -> Deployment | None:
        self.faults.check("get_deployment")
        return self.deployment

    def put_deployment(self, deployment: Deployment) -> None:
        self.faults.check("put_deployment")
        self.deployment = deployment

    def put_history(self, timestamp: str, execution: str, record: Mapping[str, Any]) -> None:
        self.history.append((timestamp, execution, json.loads(json.dumps(record))))

    def heartbeats(self, instance_ids: Sequence[str]) -> dict[str, HostHeartbeat]:
        return {i: self.beats[i] for i in dict.fromkeys(instance_ids) if i in self.beats}

    def beat(self, instance_id: str, reported_at: float, version: str | None, **fields: Any) -> None:
        """The host agent's report."""
        values: dict[str, Any] = {"asterisk_up": True, "endpoint_loaded": True} | fields
        self.beats[instance_id] = HostHeartbeat(
            instance_id=instance_id, running_version=version, reported_at=reported_at, **values
        )

    def acquire_lock(self, owner: str, now: float, ttl_s: int) -> str | None:
        if self.lock_owner is None or self.lock_expires < int(now) or self.lock_owner == owner:
            self.lock_owner, self.lock_expires = owner, int(now) + ttl_s
            return None
        return self.lock_owner

    def release_lock(self, owner: str) -> bool:
        if self.lock_owner != owner:
            return False
        self.lock_owner = None
        return True

    def health(self) -> HealthCounter:
        return self.counter

    def put_health(self, counter: HealthCounter) -> None:
        self.counter = counter

    def swap_roles(self, expected_primary: str, new_primary: str, new_standby: str | None, now: float) -> bool:
        current = self.deployment or Deployment()
        if (current.primary_instance_id or "") != expected_primary:
            return False
        self.deployment = current.model_copy(
            update={"primary_instance_id": new_primary, "standby_instance_id": new_standby, "updated_at": now}
        )
        return True


# --- Step Functions, S3 ------------------------------------------------------------------------------


@dataclass
class FakeExecutions:
    started: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)

    def start(self, state_machine_arn: str, name: str, payload: Mapping[str, Any]) -> str:
        self.faults.check("start")
        arn = f"{state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"
        self.started.setdefault(name, (state_machine_arn, json.loads(json.dumps(payload))))
        return arn

    def history(self, execution_arn: str) -> list[dict[str, Any]]:
        """The events the test recorded for the execution (none by default)."""
        self.faults.check("history")
        return self.histories.get(execution_arn, [])


@dataclass
class FakeObjects:
    objects: dict[tuple[str, str], bytes] = field(default_factory=dict)
    uploads: int = 0

    def put_json(self, bucket: str, key: str, document: Any) -> None:
        self.objects[(bucket, key)] = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
        self.uploads += 1

    def put_if_changed(self, bucket: str, key: str, body: bytes) -> bool:
        if self.objects.get((bucket, key)) == body:
            return False
        self.objects[(bucket, key)] = body
        self.uploads += 1
        return True


# --- the SIP probe -----------------------------------------------------------------------------------


@dataclass
class FakeProber:
    """Answers `answers[host]` (a SIP status code) for a probed host; no entry: the probe times out."""

    answers: dict[str, int] = field(default_factory=dict)
    probed: list[ProbeTarget] = field(default_factory=list)

    def __call__(self, target: ProbeTarget, timeout_s: float) -> ProbeResult:
        from sip_trunk.sip import ProbeErrorKind

        self.probed.append(target)
        code = self.answers.get(target.host)
        if code is None:
            return ProbeResult(target=target, reachable=False, error=ProbeErrorKind.TIMEOUT, detail="no answer")
        return ProbeResult(target=target, reachable=True, status_code=code, rtt_ms=1.5)


@dataclass
class FakeCertificates:
    """Presents `reports[server_name]` for a checked name; no entry: nothing listens there."""

    reports: dict[str, CertificateReport] = field(default_factory=dict)
    checked: list[CertificateTarget] = field(default_factory=list)

    def __call__(self, target: CertificateTarget, timeout_s: float) -> CertificateReport:
        self.checked.append(target)
        found = self.reports.get(target.server_name)
        if found is None:
            return CertificateReport(target=target, verified=False, error="connection refused")
        return replace(found, target=target)


# --- ElevenLabs --------------------------------------------------------------------------------------


def live_number(want: DesiredTrunk, phone_number_id: str = "phnum_1", **changes: object) -> PhoneNumber:
    """The GET view of a number that matches `want` exactly (then apply `changes`)."""
    data: dict[str, object] = {
        "phone_number_id": phone_number_id,
        "phone_number": want.phone_number,
        "label": want.label,
        "provider": "sip_trunk",
        "assigned_agent": AssignedAgent(agent_id=want.agent_id, agent_name="a") if want.agent_id else None,
        "outbound_trunk": OutboundTrunk(
            address=want.address,
            transport=want.transport,
            media_encryption=want.media_encryption,
            has_auth_credentials=True,
            username=want.username,
        ),
        "inbound_trunk": InboundTrunk(
            media_encryption=want.inbound_encryption,
            has_auth_credentials=want.inbound_password is not None,
            username=want.inbound_username,
            remote_domains=list(want.remote_domains) or None,
            allowed_addresses=None if want.allowed_addresses is None else list(want.allowed_addresses),
        ),
    }
    data.update(changes)
    return PhoneNumber.model_validate(data)


class FakeElevenLabs:
    """Implements PhoneNumberApi in memory and records every mutating call."""

    def __init__(self, *numbers: PhoneNumber) -> None:
        self.numbers = {n.phone_number_id: n for n in numbers}
        self.created: list[DesiredTrunk] = []
        self.updated: list[tuple[str, DesiredTrunk]] = []
        self.update_bodies: list[dict[str, Any]] = []
        self.keys: list[str] = []

    def __call__(self, api_key: str) -> PhoneNumberApi:
        """The `ElevenLabsFactory` port: API key → this client."""
        self.keys.append(api_key)
        return self

    def find_by_number(self, e164: str) -> PhoneNumber | None:
        return next((n for n in self.numbers.values() if n.phone_number == e164), None)

    def get_phone_number(self, phone_number_id: str) -> PhoneNumber:
        if phone_number_id not in self.numbers:
            raise ElevenLabsNotFound(f"GET /v1/convai/phone-numbers/{phone_number_id}: HTTP 404", status=404)
        return self.numbers[phone_number_id]

    def create_sip_trunk_phone_number(self, want: DesiredTrunk) -> str:
        self.created.append(want)
        phone_number_id = f"phnum_{len(self.numbers) + 1}"
        self.numbers[phone_number_id] = live_number(want, phone_number_id)
        return phone_number_id

    def update_phone_number(
        self, phone_number_id: str, want: DesiredTrunk, current: PhoneNumber | None = None
    ) -> PhoneNumber:
        self.updated.append((phone_number_id, want))
        self.update_bodies.append(want.request_body() if current is None else want.update_body(current))
        self.numbers[phone_number_id] = live_number(want, phone_number_id)
        return self.numbers[phone_number_id]


# --- composition -------------------------------------------------------------------------------------


def workflow_config(**changes: Any) -> WorkflowConfig:
    values: dict[str, Any] = {
        "STACK_NAME": STACK,
        "CONFIG_PREFIX": f"/{STACK}/config",
        "SETTINGS_PARAMETER": f"/{STACK}/settings",
        "STATE_TABLE": f"{STACK}-state",
        "BACKUP_BUCKET": f"{STACK}-backups",
        "HOST_TEMPLATE_URL": f"https://{STACK}-backups.s3.us-east-1.amazonaws.com/templates/host.yaml",
        "PRIMARY_ALLOCATION_ID": ALLOCATION,
        "FAILOVER_STATE_MACHINE_ARN": f"arn:aws:states:us-east-1:123456789012:stateMachine:{STACK}-failover",
        "PROBE_TARGETS": {PUBLIC_IP: "127.0.0.1:5099"},
    }
    values.update(changes)
    return WorkflowConfig.model_validate(values)


@dataclass
class FakeWorld:
    """Every port faked; `deps` is what a workflow step takes."""

    config: WorkflowConfig = field(default_factory=workflow_config)
    settings: FakeSettings = field(default_factory=FakeSettings)
    parameters: FakeParameters = field(default_factory=FakeParameters)
    secrets: FakeSecrets = field(default_factory=FakeSecrets)
    config_store: FakeConfigStore = field(default_factory=FakeConfigStore)
    ec2: FakeEc2 = field(default_factory=FakeEc2)
    stacks: FakeStacks = field(default_factory=FakeStacks)
    commands: FakeCommands = field(default_factory=FakeCommands)
    state: FakeStateStore = field(default_factory=FakeStateStore)
    executions: FakeExecutions = field(default_factory=FakeExecutions)
    objects: FakeObjects = field(default_factory=FakeObjects)
    prober: FakeProber = field(default_factory=FakeProber)
    elevenlabs: FakeElevenLabs = field(default_factory=FakeElevenLabs)
    certificates: CertificateChecker = field(default_factory=lambda: FakeCertificates())

    @property
    def deps(self) -> Deps:
        return Deps(
            config=self.config,
            settings=self.settings,
            parameters=self.parameters,
            secrets=self.secrets,
            config_store=self.config_store,
            addresses=self.ec2,
            stacks=self.stacks,
            commands=self.commands,
            state=self.state,
            executions=self.executions,
            objects=self.objects,
            prober=self.prober,
            elevenlabs=self.elevenlabs,
            certificates=self.certificates,
        )

    def deployed(
        self, primary: str = PRIMARY, standby: str | None = STANDBY, version: str = "v0123456789abcdef"
    ) -> None:
        """A finished Provision: the state table names the hosts, the Elastic IP is on the primary."""
        self.state.deployment = Deployment(
            desired_version=version,
            active_version=version,
            primary_instance_id=primary,
            standby_instance_id=standby,
            allocation_id=ALLOCATION,
            public_address=PUBLIC_IP,
        )
        self.ec2.addresses[ALLOCATION] = replace(self.ec2.addresses[ALLOCATION], instance_id=primary)


class ManualClock:
    """The workflows' clock (`sip_trunk.workflows.clock`) as a number the test moves."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.value = start

    def now(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds
