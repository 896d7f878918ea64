"""Pieces every workflow step shares: step inputs, loading the settings, probing an address."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr

from sip_trunk.errors import HostUnreachable, SettingsInvalid
from sip_trunk.settings import Secrets, Settings, SettingsError, parse_secrets
from sip_trunk.settings import Transport as SettingsTransport
from sip_trunk.sip import ProbeResult, ProbeTarget, Transport
from sip_trunk.stackowned import Source, effective_settings
from sip_trunk.workflows.ports import Prober, SecretResolver, SettingsSource

if TYPE_CHECKING:
    from sip_trunk.workflows.deps import Deps

API_KEY_UNSET = "unset"
"""What the stack's API-key secret holds until the operator stores a key (template.yaml ElevenLabsApiKeySecret)."""


class Model(BaseModel):
    """Step inputs and outputs: unknown fields from the state machine's data are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ExecutionRef(Model):
    """Who is running: `$$.Execution.Name`/`Id`/`StartTime`, passed by every Task's Parameters."""

    name: str = "manual"
    arn: str = ""
    started_at: str = ""


class StepInput(Model):
    execution: ExecutionRef = ExecutionRef()


@dataclass(frozen=True)
class LoadedSettings:
    settings: Settings
    secrets: Secrets
    api_key: SecretStr | None
    digest: str
    """sha256 of the settings document (never of secrets)."""
    api_key_note: str | None = None
    """Why there is no API key (and how to add one), when `api_key` is None."""
    source: Source = "template"
    """Which document it came from: the template's or the operator's (`sip_trunk.stackowned`)."""
    notes: tuple[str, ...] = ()
    """Stack-owned values that replaced the operator's."""

    def credentials_hash(self) -> str:
        """Changes when a trunk password changes (any agent's), without revealing it. A deployment with one
        agent hashes what it always did."""
        el = self.settings.elevenlabs
        refs = [el.inbound_password, el.outbound_password]
        refs += [a.outbound_password for a in self.settings.agent_routes()[1:]]
        material = "\0".join(self.secrets.reveal(ref) for ref in refs)
        return hashlib.sha256(material.encode()).hexdigest()


def load_settings(source: SettingsSource, resolver: SecretResolver) -> LoadedSettings:
    """Parse the settings document and resolve every secret it references; `SettingsInvalid` otherwise."""
    try:
        template_document = source.settings_document()
        operator_document = source.operator_document()
    except (ValueError, KeyError) as exc:
        raise SettingsInvalid(f"settings document cannot be read: {exc.__class__.__name__}") from None
    try:
        effective = effective_settings(template_document, operator_document)
    except SettingsError as exc:
        raise SettingsInvalid(str(exc)) from None
    settings, document = effective.settings, effective.document
    values: dict[str, str] = {}
    missing: list[str] = []
    for ref in settings.secret_refs():
        try:
            values[ref] = resolver.resolve(ref)
        except KeyError:
            missing.append(ref)
    api_key: SecretStr | None = None
    api_key_note: str | None = "no API key configured"
    key_ref = settings.elevenlabs.api_key
    if key_ref is not None:
        try:
            value = resolver.resolve(key_ref).strip()
        except KeyError:
            missing.append(key_ref)
        else:
            if value in ("", API_KEY_UNSET):
                command = add_api_key_command(key_ref)
                api_key_note = f"no API key yet: skipped; add it with `{command}`, then provision again"
            else:
                api_key, api_key_note = SecretStr(value), None
    if missing:
        raise SettingsInvalid(f"secrets not found: {', '.join(missing)}")
    try:
        secrets = parse_secrets(values, "secrets")
    except SettingsError as exc:
        raise SettingsInvalid(str(exc)) from None
    digest = hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()
    return LoadedSettings(
        settings=settings,
        secrets=secrets,
        api_key=api_key,
        digest=digest,
        api_key_note=api_key_note,
        source=effective.source,
        notes=effective.notes,
    )


def add_api_key_command(ref: str) -> str:
    """The AWS CLI command that stores an ElevenLabs API key behind the secret reference `ref`."""
    if ref.startswith("ssm:"):
        return f"aws ssm put-parameter --name {ref[4:]} --type SecureString --overwrite --value <ElevenLabs API key>"
    name = ref.removeprefix("secretsmanager:")
    return f"aws secretsmanager put-secret-value --secret-id {name} --secret-string <ElevenLabs API key>"


def sip_transport(settings: Settings) -> tuple[Transport, int]:
    """How ElevenLabs reaches the gateway, hence how the probe reaches it too."""
    el = settings.elevenlabs
    if el.transport is SettingsTransport.TLS:
        return Transport.TLS, settings.network.tls_port
    if el.transport is SettingsTransport.UDP:
        return Transport.UDP, settings.network.sip_port
    return Transport.TCP, settings.network.sip_port


def mapped_address(address: str, port: int, mapping: Mapping[str, str]) -> tuple[str, int] | None:
    """Where to connect for `address`:`port`.

    Production has no mapping: the address itself. Local mode and tests map addresses (and host names) to
    responders (`"203.0.113.10": "127.0.0.1:5099"`); with a mapping, unmapped addresses are not contacted at
    all (None), so a test can never send packets to an address moto made up or a name DNS would resolve.
    """
    if not mapping:
        return address, port
    mapped = mapping.get(address)
    if mapped is None:
        return None
    host, _, mapped_port = mapped.rpartition(":")
    return host, int(mapped_port)


def probe_target(address: str, transport: Transport, port: int, mapping: Mapping[str, str]) -> ProbeTarget | None:
    """The target to probe for `address` (see `mapped_address`)."""
    where = mapped_address(address, port, mapping)
    if where is None:
        return None
    return ProbeTarget(host=where[0], port=where[1], transport=transport)


class ProbeReport(Model):
    address: str
    probed: bool
    reachable: bool = False
    status_code: int | None = None
    rtt_ms: float | None = None
    error: str | None = None

    @property
    def answers(self) -> bool:
        """A final response that is not a server error: the SIP stack is up and listening."""
        return self.reachable and self.status_code is not None and self.status_code < 500


def probe_address(
    prober: Prober,
    address: str,
    transport: Transport,
    port: int,
    mapping: Mapping[str, str],
    timeout_s: float,
) -> ProbeReport:
    target = probe_target(address, transport, port, mapping)
    if target is None:
        return ProbeReport(address=address, probed=False, error="not mapped")
    result: ProbeResult = prober(target, timeout_s)
    return ProbeReport(
        address=address,
        probed=True,
        reachable=result.reachable,
        status_code=result.status_code,
        rtt_ms=None if result.rtt_ms is None else round(result.rtt_ms, 2),
        error=None if result.error is None else f"{result.error.value}: {result.detail}",
    )


def error_message(failure: Mapping[str, Any]) -> tuple[str, str]:
    """(error name, message) from a Catch's `{Error, Cause}`; Lambda causes are JSON documents."""
    error = str(failure.get("Error", "Unknown"))
    cause = str(failure.get("Cause", ""))
    try:
        parsed = json.loads(cause)
    except ValueError:
        return error, cause
    if isinstance(parsed, dict):
        return error, str(parsed.get("errorMessage", cause))
    return error, cause


# --- host roles (docs/ARCHITECTURE.md ADR-11, ADR-12) -----------------------------------------------

AGENT = "sip-trunk-agent"
Role = Literal["primary", "standby"]


def set_role_command(role: Role, peer_address: str | None = None) -> str:
    """The host agent's `set-role` command line; the peer address is checked to be an IP address (it is
    part of a shell command)."""
    if role == "primary":
        return f"{AGENT} set-role --role primary"
    if not peer_address:
        raise ValueError("the standby needs the primary's private address")
    address = str(ipaddress.ip_address(peer_address))
    return f"{AGENT} set-role --role standby --peer-address {address}"


class RoleCommand(Model):
    """One `set-role` sent (or not) through Run Command to one host."""

    instance_id: str
    role: Role
    peer_address: str | None = None
    sent: bool
    command_id: str | None = None
    detail: str = ""
    """Why it was not sent (the host is not running, the send failed)."""


def send_role(deps: Deps, execution: str, instance_id: str, role: Role, peer: str | None = None) -> RoleCommand:
    """`set-role` through Run Command. A host Run Command cannot reach, or a peer address that is not an IP
    address, is reported in the result (and the notification), never raised: the caller has already made
    the address serve, or ApplyConfig gates serving. Throttling and denied calls raise."""
    try:
        command = set_role_command(role, peer)
        command_id = deps.commands.send([instance_id], [command], f"{execution}: set-role {role}")
    except (HostUnreachable, ValueError) as exc:
        detail = f"{type(exc).__name__}: {exc}"[:300]
        return RoleCommand(instance_id=instance_id, role=role, peer_address=peer, sent=False, detail=detail)
    return RoleCommand(instance_id=instance_id, role=role, peer_address=peer, sent=True, command_id=command_id)


def describe_roles(commands: list[RoleCommand]) -> str:
    """One line for a notification: which host got which role."""
    if not commands:
        return "no host roles sent"
    parts = []
    for c in commands:
        what = c.role if c.role == "primary" else f"standby watching {c.peer_address or '?'}"
        parts.append(f"{c.instance_id} {what}" + (f" (command {c.command_id})" if c.sent else f" NOT SET: {c.detail}"))
    return "; ".join(parts)
