"""ValidateSettings: the settings document parses and every secret it references resolves."""

from __future__ import annotations

from sip_trunk.stackowned import Source
from sip_trunk.workflows.common import Model, load_settings, sip_transport
from sip_trunk.workflows.deps import Deps


class ProvisionRequest(Model):
    """The execution input; every field optional (the console's `{}` is a valid start)."""

    reason: str = ""
    rotate_credentials: bool = False
    """Push the trunk passwords to ElevenLabs even if they look unchanged."""
    rollout_image: bool = False
    """Give the standby's slot the image the root stack names now (LaunchHost; ADR-33). Never implied: a new
    image replaces an instance, so a Provision without it keeps each slot's image."""


class ValidateResult(Model):
    name: str
    phone_number: str
    transport: str
    sip_port: int
    elevenlabs_api: bool
    secrets: int
    settings_sha256: str
    settings_source: Source
    """`operator` when the operator's document (`sip-trunk push`) was used, else `template`."""
    settings_notes: list[str]
    """Stack-owned values that replaced the operator's (ADR-16)."""


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
        settings_source=loaded.source,
        settings_notes=list(loaded.notes),
    )
