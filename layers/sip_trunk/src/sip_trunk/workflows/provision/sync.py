"""SyncElevenLabs: converge each agent's ElevenLabs phone number on the gateway's address and credentials.

Every agent's number (the default `elevenlabs` one and each of `agents`) is read, merged and written on its own;
the outcome names each agent, its number and the fields that changed there, and a failure names the agent and
number it happened on while keeping the error's class (the state machine retries and catches by it).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sip_trunk.elevenlabs import DesiredTrunk, ElevenLabsError, SyncResult, diff_trunk, ensure_trunk
from sip_trunk.errors import SettingsInvalid, TrunkNotVerified
from sip_trunk.settings import AgentRoute, Settings, Transport
from sip_trunk.workflows.common import LoadedSettings, Model, StepInput, load_settings, sip_transport
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.provision.render import RenderResult
from sip_trunk.workflows.provision.validate import ProvisionRequest


def desired_trunk(loaded: LoadedSettings, public_address: str, agent: AgentRoute | None = None) -> DesiredTrunk:
    """An agent's ElevenLabs number (the default agent's without `agent`): ElevenLabs calls our address with
    the inbound digest user, and authenticates our calls with the agent's outbound one.

    Over TLS ElevenLabs is the TLS client and checks our certificate against the host it dials, so the
    address is `network.public_hostname` (the certificate's name), not the Elastic IP, and that name is one
    of the number's remote domains: ElevenLabs sends BYE and REFER on a new connection to the top Via host
    and accepts them only from a listed domain (docs/ARCHITECTURE.md, "TLS contract"). With
    `elevenlabs.restrict_inbound_to_gateway` the number accepts calls only from the Elastic IP; the gateway's
    INVITEs leave from it whatever the transport.
    """
    settings: Settings = loaded.settings
    el = settings.elevenlabs
    route = agent or settings.agent_route(None)
    transport, port = sip_transport(settings)
    if el.transport is Transport.UDP:
        raise SettingsInvalid("ElevenLabs numbers cannot be synced over the experimental UDP transport")
    host = public_address
    remote_domains: tuple[str, ...] = ()
    if el.transport is Transport.TLS:
        hostname = settings.network.public_hostname
        if hostname is None:  # refused by the settings model; kept so no IP address is ever sent for TLS
            raise SettingsInvalid("network.public_hostname is required with elevenlabs.transport 'tls'")
        host, remote_domains = hostname, (hostname,)
    address = host if port == transport.default_port else f"{host}:{port}"
    # the default agent's label is the one single-agent deployments always had
    label = f"{settings.name} (aws-sip-trunk)" if route.is_default else f"{settings.name}/{route.name} (aws-sip-trunk)"
    return DesiredTrunk(
        phone_number=route.phone_number,
        label=label,
        address=address,
        transport="tls" if transport.value == "tls" else "tcp",
        # ElevenLabs' outbound trunk carries its calls to the gateway (our inbound), its inbound trunk ours to it
        media_encryption=el.inbound_media_encryption.value,
        inbound_media_encryption=el.outbound_media_encryption.value,
        username=el.inbound_username,
        password=loaded.secrets.reveal(el.inbound_password),
        inbound_username=route.outbound_username,
        inbound_password=loaded.secrets.reveal(route.outbound_password),
        agent_id=route.agent_id,
        remote_domains=remote_domains,
        allowed_addresses=(f"{public_address}/32",) if el.restrict_inbound_to_gateway else None,
    )


def desired_trunks(loaded: LoadedSettings, public_address: str) -> list[tuple[AgentRoute, DesiredTrunk]]:
    """Every agent's number as it must be, the default agent first."""
    return [(a, desired_trunk(loaded, public_address, a)) for a in loaded.settings.agent_routes()]


def agent_label(agent: AgentRoute) -> str:
    """How messages name an agent's number: `agent sales (+14155550111)`."""
    return f"agent {agent.name} ({agent.phone_number})"


class SyncInput(StepInput):
    render: RenderResult
    request: ProvisionRequest = ProvisionRequest()


class NumberSync(Model):
    """What the sync did to one agent's number."""

    agent: str
    phone_number: str
    action: Literal["created", "updated", "unchanged"]
    phone_number_id: str
    changed_fields: list[str] = Field(default_factory=list)


class SyncOutcome(Model):
    """`action`, `phone_number_id` and `changed_fields` are the default agent's number's (what single-agent
    deployments record); with several agents `numbers` holds every agent's, the default first (with one it
    is left out, so a single-agent outcome reads as it always did)."""

    action: Literal["skipped", "created", "updated", "unchanged"]
    phone_number_id: str | None = None
    changed_fields: list[str] = Field(default_factory=list)
    credentials_hash: str | None = None
    note: str | None = None
    numbers: list[NumberSync] = Field(default_factory=list, exclude_if=lambda numbers: not numbers)

    def describe(self) -> str:
        """One line per number for the deployment's notification: which agent and number changed what."""
        if len(self.numbers) <= 1:
            return (
                f"{self.action}"
                + (f" ({', '.join(self.changed_fields)})" if self.changed_fields else "")
                + (f": {self.note}" if self.note else "")
            )
        return "; ".join(
            f"{n.agent} ({n.phone_number}) {n.action}"
            + (f" ({', '.join(n.changed_fields)})" if n.changed_fields else "")
            for n in self.numbers
        )


def sync_elevenlabs(deps: Deps, request: SyncInput) -> SyncOutcome:
    loaded = load_settings(deps.settings, deps.secrets)
    if loaded.api_key is None:
        return SyncOutcome(action="skipped", note=loaded.api_key_note)
    current = deps.state.get_deployment()
    credentials_hash = loaded.credentials_hash()
    rotated = request.request.rotate_credentials or (
        current is not None and current.credentials_hash not in (None, credentials_hash)
    )
    api = deps.elevenlabs(loaded.api_key.get_secret_value())
    synced: list[NumberSync] = []
    failures: list[ElevenLabsError | TrunkNotVerified] = []
    wanted = desired_trunks(loaded, request.render.public_address)
    for agent, desired in wanted:
        # each number on its own: one that fails does not keep the others from converging; with several
        # agents a failure names the agent and number (with one, messages read as they always did)
        prefix = f"{agent_label(agent)}: " if len(wanted) > 1 else ""
        try:
            result: SyncResult = ensure_trunk(
                api, desired, assume_password_changed=rotated, phone_number_id=agent.phone_number_id
            )
            remaining = diff_trunk(desired, api.get_phone_number(result.phone_number_id))
        except ElevenLabsError as exc:
            failures.append(exc.restated(prefix + exc.message))
            continue
        if remaining:
            failures.append(
                TrunkNotVerified(
                    f"{prefix}ElevenLabs number still differs after sync: " + ", ".join(m.field for m in remaining)
                )
            )
            continue
        synced.append(
            NumberSync(
                agent=agent.name,
                phone_number=agent.phone_number,
                action=result.action,
                phone_number_id=result.phone_number_id,
                changed_fields=[m.field for m in result.mismatches],
            )
        )
    if failures:
        # the first failure's class (the state machine matches it), every failed number in its message
        first = failures[0]
        message = "; ".join(str(f) for f in failures)
        if isinstance(first, ElevenLabsError):
            raise first.restated(message)
        raise TrunkNotVerified(message)
    default = synced[0]
    return SyncOutcome(
        action=default.action,
        phone_number_id=default.phone_number_id,
        changed_fields=default.changed_fields,
        credentials_hash=credentials_hash,
        numbers=synced if len(synced) > 1 else [],
    )
