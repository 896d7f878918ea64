"""SyncElevenLabs: converge the ElevenLabs phone number's SIP trunk on the gateway's address and credentials."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sip_trunk.elevenlabs import DesiredTrunk, diff_trunk, ensure_trunk
from sip_trunk.errors import SettingsInvalid, TrunkNotVerified
from sip_trunk.settings import Settings, Transport
from sip_trunk.workflows.common import LoadedSettings, Model, StepInput, load_settings, sip_transport
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.provision.render import RenderResult
from sip_trunk.workflows.provision.validate import ProvisionRequest


def desired_trunk(loaded: LoadedSettings, public_address: str) -> DesiredTrunk:
    """The ElevenLabs number's trunk: ElevenLabs calls our address with the inbound digest user, and
    authenticates our calls with the outbound one.

    Over TLS ElevenLabs is the TLS client and checks our certificate against the host it dials, so the
    address is `network.public_hostname` (the certificate's name), not the Elastic IP, and that name is one
    of the number's remote domains: ElevenLabs sends BYE and REFER on a new connection to the top Via host
    and accepts them only from a listed domain (docs/ARCHITECTURE.md, "TLS contract"). With
    `elevenlabs.restrict_inbound_to_gateway` the number accepts calls only from the Elastic IP; the gateway's
    INVITEs leave from it whatever the transport.
    """
    settings: Settings = loaded.settings
    el = settings.elevenlabs
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
    return DesiredTrunk(
        phone_number=el.phone_number,
        label=f"{settings.name} (aws-sip-trunk)",
        address=address,
        transport="tls" if transport.value == "tls" else "tcp",
        # ElevenLabs' outbound trunk carries its calls to the gateway (our inbound), its inbound trunk ours to it
        media_encryption=el.inbound_media_encryption.value,
        inbound_media_encryption=el.outbound_media_encryption.value,
        username=el.inbound_username,
        password=loaded.secrets.reveal(el.inbound_password),
        inbound_username=el.outbound_username,
        inbound_password=loaded.secrets.reveal(el.outbound_password),
        agent_id=el.agent_id,
        remote_domains=remote_domains,
        allowed_addresses=(f"{public_address}/32",) if el.restrict_inbound_to_gateway else None,
    )


class SyncInput(StepInput):
    render: RenderResult
    request: ProvisionRequest = ProvisionRequest()


class SyncOutcome(Model):
    action: Literal["skipped", "created", "updated", "unchanged"]
    phone_number_id: str | None = None
    changed_fields: list[str] = Field(default_factory=list)
    credentials_hash: str | None = None
    note: str | None = None


def sync_elevenlabs(deps: Deps, request: SyncInput) -> SyncOutcome:
    loaded = load_settings(deps.settings, deps.secrets)
    if loaded.api_key is None:
        return SyncOutcome(action="skipped", note=loaded.api_key_note)
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
