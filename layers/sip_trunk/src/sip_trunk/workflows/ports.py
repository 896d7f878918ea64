"""The interfaces the workflows need from the world; `sip_trunk.aws` implements them over boto3.

Small on purpose: a fake of any of them is a few lines in a test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from sip_trunk.elevenlabs import PhoneNumberApi
from sip_trunk.sip import CertificateReport, CertificateTarget, ProbeResult, ProbeTarget
from sip_trunk.workflows.state import Deployment, HealthCounter, HostHeartbeat


@dataclass(frozen=True)
class ElasticAddress:
    allocation_id: str
    public_ip: str
    instance_id: str | None = None
    association_id: str | None = None


@dataclass(frozen=True)
class Instance:
    instance_id: str
    state: str
    public_ip: str | None = None
    private_ip: str | None = None


StackStatus = str


@dataclass(frozen=True)
class StackInfo:
    name: str
    status: StackStatus
    reason: str = ""
    outputs: Mapping[str, str] = field(default_factory=dict)
    parameters: Mapping[str, str] = field(default_factory=dict)
    """The stack's current parameter values (as DescribeStacks reports them)."""


CommandStatus = Literal["Pending", "InProgress", "Delayed", "Success", "Cancelled", "TimedOut", "Failed", "Unknown"]


@dataclass(frozen=True)
class CommandResult:
    instance_id: str
    status: CommandStatus
    output: str = ""


class SettingsSource(Protocol):
    def settings_document(self) -> Any:
        """The template's settings document (already decoded from JSON)."""

    def operator_document(self) -> Any | None:
        """The operator's settings document, or None when none is stored (`sip_trunk.stackowned`)."""


class JsonParameters(Protocol):
    def get_text(self, name: str) -> str:
        """A String parameter's current value, never cached (an image id the pipeline just replaced)."""
        ...

    def get_json(self, name: str) -> Any:
        """A String parameter holding a JSON document, decoded."""


class SecretResolver(Protocol):
    def resolve(self, ref: str) -> str:
        """The value of an `ssm:/…` or `secretsmanager:…` reference; raise `KeyError` if missing."""


class ConfigStore(Protocol):
    def has_version(self, version: str) -> bool: ...
    def publish(self, files: Mapping[str, bytes], secret_files: frozenset[str], version: str) -> None: ...
    def desired_version(self) -> str | None: ...
    def set_desired_version(self, version: str) -> None: ...
    def clear_desired_version(self) -> None: ...
    def snapshot(self) -> list[dict[str, Any]]:
        """Every parameter under the prefix: name, type, version; values of String parameters only."""


class Addresses(Protocol):
    def describe_address(self, allocation_id: str) -> ElasticAddress: ...
    def associate(self, allocation_id: str, instance_id: str) -> str: ...
    def instances(self, instance_ids: Sequence[str]) -> list[Instance]: ...


class Stacks(Protocol):
    def describe(self, name: str) -> StackInfo | None: ...
    def create(self, name: str, template_url: str, parameters: Mapping[str, str], role_arn: str = "") -> None: ...
    def update(
        self,
        name: str,
        template_url: str,
        parameters: Mapping[str, str],
        role_arn: str = "",
        keep_previous: Sequence[str] = (),
    ) -> bool:
        """False when CloudFormation reports there is nothing to update. Parameters named in `keep_previous`
        keep the stack's current value (`UsePreviousValue`)."""


class Commands(Protocol):
    def send(self, instance_ids: Sequence[str], commands: Sequence[str], comment: str) -> str: ...
    def results(self, command_id: str, instance_ids: Sequence[str]) -> list[CommandResult]: ...


class StateStore(Protocol):
    def get_deployment(self) -> Deployment | None: ...
    def put_deployment(self, deployment: Deployment) -> None: ...
    def put_history(self, timestamp: str, execution: str, record: Mapping[str, Any]) -> None: ...
    def heartbeats(self, instance_ids: Sequence[str]) -> dict[str, HostHeartbeat]: ...
    def acquire_lock(self, owner: str, now: float, ttl_s: int) -> str | None:
        """None when acquired (or already ours); otherwise the current holder."""

    def release_lock(self, owner: str) -> bool: ...
    def health(self) -> HealthCounter: ...
    def put_health(self, counter: HealthCounter) -> None: ...
    def swap_roles(self, expected_primary: str, new_primary: str, new_standby: str | None, now: float) -> bool:
        """Conditional on the current primary; False if someone already swapped."""


class Executions(Protocol):
    def start(self, state_machine_arn: str, name: str, payload: Mapping[str, Any]) -> str: ...
    def history(self, execution_arn: str) -> list[dict[str, Any]]: ...


class ObjectStore(Protocol):
    def put_json(self, bucket: str, key: str, document: Any) -> None: ...
    def put_if_changed(self, bucket: str, key: str, body: bytes) -> bool:
        """Upload unless the object already holds exactly `body`; True when it uploaded."""


Prober = Callable[[ProbeTarget, float], ProbeResult]
CertificateChecker = Callable[[CertificateTarget, float], CertificateReport]
"""(target, timeout) → what the TLS handshake showed, checked against the trust store ElevenLabs would use."""
ElevenLabsFactory = Callable[[str], PhoneNumberApi]
"""API key → client."""
