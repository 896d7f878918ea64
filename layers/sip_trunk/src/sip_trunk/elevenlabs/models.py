"""The phone number as the ElevenLabs API describes it, and the trunk as the gateway needs it.

Field names follow the public API reference (api-reference/phone-numbers/{create,get,update,list} and
sip-trunk/outbound-call). Requests send `inbound_trunk_config`/`outbound_trunk_config`; responses describe
them as `inbound_trunk`/`outbound_trunk` and never return passwords, only `has_auth_credentials`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "REDACTED",
    "AssignedAgent",
    "CreatedPhoneNumber",
    "DesiredTrunk",
    "InboundTrunk",
    "OutboundCallResult",
    "OutboundTrunk",
    "PhoneNumber",
    "SyncResult",
    "TrunkMismatch",
]

Transport = Literal["tcp", "tls"]
MediaEncryption = Literal["disabled", "allowed", "required"]

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# host[:port]: a DNS name or IPv4 address, optional port. No scheme, user, path or parameters: ElevenLabs
# builds the SIP URI itself and anything else would end up in the Request-URI.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"^(?=[^:]{{1,253}}(?::|$)){_LABEL}(?:\.{_LABEL})*(?::\d{{1,5}})?$")
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")
REDACTED = "***"
"""What a secret reads as wherever one would otherwise appear (diffs, reprs, error messages)."""


# ---------------------------------------------------------------------------------------- API models
class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OutboundTrunk(_ApiModel):
    """`outbound_trunk` of a phone number: where ElevenLabs sends INVITEs (our gateway).

    Relied on: address, transport, media_encryption, has_auth_credentials, username. Carried over unchanged
    on update (the operator's, set in the dashboard): headers, attributes_to_headers, enabled_codecs.
    """

    address: str
    transport: str = "auto"
    media_encryption: str = "allowed"
    has_auth_credentials: bool = False
    username: str | None = None
    headers: dict[str, str] | None = None
    attributes_to_headers: dict[str, str] | None = None
    enabled_codecs: list[str] | None = None


class InboundTrunk(_ApiModel):
    """`inbound_trunk` of a phone number: how ElevenLabs accepts our INVITEs.

    Relied on: media_encryption, has_auth_credentials, username, remote_domains (the hosts whose
    in-dialog requests ElevenLabs accepts over TLS), allowed_addresses (who may place calls on the number).
    Carried over unchanged on update: allowed_numbers, attributes_to_headers, and every field above that the
    gateway's settings do not own.
    """

    media_encryption: str = "allowed"
    has_auth_credentials: bool = False
    username: str | None = None
    allowed_addresses: list[str] | None = None
    allowed_numbers: list[str] | None = None
    remote_domains: list[str] | None = None
    attributes_to_headers: dict[str, str] | None = None


class AssignedAgent(_ApiModel):
    """Relied on: agent_id."""

    agent_id: str
    agent_name: str | None = None


class PhoneNumber(_ApiModel):
    """A phone number as GET/list return it.

    Relied on: phone_number_id, phone_number, label, provider, assigned_agent.agent_id, outbound_trunk
    (falling back to the deprecated `provider_config`, which older responses use), inbound_trunk.
    """

    phone_number_id: str
    phone_number: str
    label: str = ""
    provider: str = "sip_trunk"
    assigned_agent: AssignedAgent | None = None
    outbound_trunk: OutboundTrunk | None = None
    provider_config: OutboundTrunk | None = None
    inbound_trunk: InboundTrunk | None = None

    @property
    def outbound(self) -> OutboundTrunk | None:
        return self.outbound_trunk or self.provider_config


class CreatedPhoneNumber(_ApiModel):
    """What create answers. Relied on: phone_number_id."""

    phone_number_id: str


class OutboundCallResult(_ApiModel):
    """Relied on: success, conversation_id, sip_call_id (the last two are null when the call failed)."""

    success: bool
    message: str = ""
    conversation_id: str | None = None
    sip_call_id: str | None = None


# ------------------------------------------------------------------------------------ desired state
class DesiredTrunk(BaseModel):
    """What the ElevenLabs phone number must look like for calls to reach our gateway and back.

    `username`/`password` are what ElevenLabs presents to Asterisk (outbound trunk digest); the optional
    inbound pair is what Asterisk presents to ElevenLabs. `remote_domains` must appear among the number's
    inbound remote domains (others the operator added stay): over TLS, ElevenLabs sends BYE and REFER on a new
    connection to the top Via host and accepts only the domains listed there. `allowed_addresses`, when set,
    replaces the number's inbound source-address allowlist (IPs or CIDR blocks); None leaves it as it is.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    phone_number: str
    label: str = Field(min_length=1, max_length=200)
    address: str
    transport: Transport = "tcp"
    media_encryption: MediaEncryption = "disabled"
    """SRTP on the calls ElevenLabs places (its outbound trunk); ``inbound_media_encryption``, when set, on the
    calls it takes from the gateway (its inbound trunk), else the same."""
    inbound_media_encryption: MediaEncryption | None = None
    username: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._~+-]+$")
    password: SecretStr
    inbound_username: str | None = Field(default=None, min_length=1, max_length=128)
    inbound_password: SecretStr | None = None
    agent_id: str | None = Field(default=None, min_length=1)
    remote_domains: tuple[str, ...] = ()
    allowed_addresses: tuple[str, ...] | None = None

    @field_validator("allowed_addresses")
    @classmethod
    def _networks(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        try:
            return tuple(dict.fromkeys(str(ipaddress.ip_network(v, strict=True)) for v in value))
        except ValueError:
            raise ValueError("allowed_addresses must be IP addresses or CIDR blocks") from None

    @field_validator("phone_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not _E164.fullmatch(value):
            raise ValueError("phone_number must be E.164, e.g. +14155550100")
        return value

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not _ADDRESS.fullmatch(value):
            raise ValueError("address must be host[:port] with no scheme, user or parameters")
        if ":" in value and not 0 < int(value.rsplit(":", 1)[1]) < 65536:
            raise ValueError("address port must be 1-65535")
        return value

    @field_validator("remote_domains")
    @classmethod
    def _domains(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for domain in value:
            if not _DOMAIN.fullmatch(domain):
                raise ValueError("remote_domains must be host names (no scheme, port or parameters)")
        return tuple(dict.fromkeys(value))

    @field_validator("password", "inbound_password")
    @classmethod
    def _non_empty_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("password must not be empty")
        return value

    @model_validator(mode="after")
    def _inbound_pair(self) -> DesiredTrunk:
        if (self.inbound_username is None) != (self.inbound_password is None):
            raise ValueError("inbound_username and inbound_password go together")
        return self

    @property
    def inbound_encryption(self) -> MediaEncryption:
        """The inbound trunk's media encryption (calls from the gateway to ElevenLabs)."""
        return self.inbound_media_encryption or self.media_encryption

    def secrets(self) -> list[str]:
        """Values that must never reach a message or log."""
        found = [self.password.get_secret_value()]
        if self.inbound_password is not None:
            found.append(self.inbound_password.get_secret_value())
        return found

    def request_body(self) -> dict[str, Any]:
        """The create body (and the product's fields of an update): every field the gateway owns."""
        inbound: dict[str, Any] = {"media_encryption": self.inbound_encryption}
        if self.inbound_username is not None and self.inbound_password is not None:
            inbound["credentials"] = {
                "username": self.inbound_username,
                "password": self.inbound_password.get_secret_value(),
            }
        if self.remote_domains:
            inbound["remote_domains"] = list(self.remote_domains)
        if self.allowed_addresses is not None:
            inbound["allowed_addresses"] = list(self.allowed_addresses)
        body: dict[str, Any] = {
            "label": self.label,
            "inbound_trunk_config": inbound,
            "outbound_trunk_config": {
                "address": self.address,
                "transport": self.transport,
                "media_encryption": self.media_encryption,
                "credentials": {"username": self.username, "password": self.password.get_secret_value()},
            },
        }
        if self.agent_id is not None:
            body["agent_id"] = self.agent_id
        return body

    def update_body(self, current: PhoneNumber) -> dict[str, Any]:
        """The PATCH body: the number as read, with the gateway's fields laid over it.

        ElevenLabs does not document whether a PATCH merges or replaces a nested trunk config, so this
        assumes the destructive answer (replace) and sends every field it read back: what an operator set
        in the dashboard (allowed numbers, headers, codecs, ...) survives an update the gateway makes.
        A credential pair the gateway does not own goes back as its username alone, which the API documents
        as leaving the stored password unchanged.
        """
        body = self.request_body()
        inbound, outbound = current.inbound_trunk, current.outbound
        if inbound is not None:
            carried: dict[str, Any] = {
                k: v
                for k, v in {
                    "allowed_addresses": inbound.allowed_addresses,
                    "allowed_numbers": inbound.allowed_numbers,
                    "remote_domains": inbound.remote_domains,
                    "attributes_to_headers": inbound.attributes_to_headers,
                }.items()
                if v is not None
            }
            if inbound.has_auth_credentials and inbound.username is not None:
                carried["credentials"] = {"username": inbound.username}
            body["inbound_trunk_config"] = {**carried, **body["inbound_trunk_config"]}
        if outbound is not None:
            kept = {
                k: v
                for k, v in {
                    "headers": outbound.headers,
                    "attributes_to_headers": outbound.attributes_to_headers,
                    "enabled_codecs": outbound.enabled_codecs,
                }.items()
                if v is not None
            }
            body["outbound_trunk_config"] = {**kept, **body["outbound_trunk_config"]}
        return body


class TrunkMismatch(BaseModel):
    """One field whose live value differs; password fields only ever say `***` / `missing` / `unknown`."""

    model_config = ConfigDict(frozen=True)

    field: str
    desired: str | None
    actual: str | None


class SyncResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Literal["created", "updated", "unchanged"]
    phone_number_id: str
    mismatches: list[TrunkMismatch] = Field(default_factory=list)
