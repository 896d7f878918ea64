"""The one validated document that describes a deployment.

Every string that can reach an Asterisk config or the dialplan is constrained here to a
safe alphabet, so no value can add a line, a section, a comment, an ``#include`` or a
dialplan expression. The renderer checks again (see ``sip_trunk.render``): two locks.
Secrets are never values here, only references to SSM / Secrets Manager names.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)

from sip_trunk.agent.config import CALL_RECORDS_DIR, RECORDING_SPOOL_DIR, RECORDINGS_DIR

ELEVENLABS_SIP_HOST = "sip.rtc.elevenlabs.io"

T = TypeVar("T")


def _matching(pattern: str, explain: str) -> AfterValidator:
    """A string check whose error message explains the rule instead of quoting the regex."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ValueError(f"must be {explain}")
        return value

    return AfterValidator(check)


# --- constrained scalar types -------------------------------------------------------------
# Patterns run in pydantic's Rust regex engine, where `$` is the end of the text (no trailing newline).

E164 = Annotated[str, _matching(r"^\+[1-9][0-9]{6,14}$", "an E.164 number: '+' then 7-15 digits, e.g. +14155550100")]
"""E.164 with the leading '+', exactly as imported into ElevenLabs."""

SipIdentifier = Annotated[
    str,
    _matching(
        r"^[A-Za-z][A-Za-z0-9._-]{0,63}$",
        "a SIP identifier: a letter, then up to 63 letters, digits, '.', '_' or '-'",
    ),
]
"""A number imported into ElevenLabs that is no phone number (a SIP identifier): the INVITE's Request-URI user."""

E164Prefix = Annotated[str, _matching(r"^\+[1-9][0-9]{0,14}$", "an E.164 prefix: '+' then 1-15 digits, e.g. +44")]

Name = Annotated[
    str, _matching(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$", "2-32 lower-case letters, digits and '-', starting with a letter")
]

ExtensionNumber = Annotated[
    str, _matching(r"^[1-9][0-9]{1,5}$", "an extension number: 2-6 digits, not starting with 0")
]

SipUsername = Annotated[
    str, _matching(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", "a SIP user name: 1-64 letters, digits, '.', '_', '-'")
]

PASSWORD_ALPHABET = r"A-Za-z0-9._~!@%^*+=:/?-"  # noqa: S105 - an alphabet, not a password
PASSWORD_PATTERN = re.compile(rf"[{PASSWORD_ALPHABET}]{{12,128}}")
"""The digest-password alphabet: nothing that Asterisk's parser treats specially (';', '#',
'[', ']', ',', '$', quotes, whitespace, backslash)."""

_HOST_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"


def _check_hostname(value: str) -> str:
    if len(value) > 253 or not re.fullmatch(rf"{_HOST_LABEL}(\.{_HOST_LABEL})+", value):
        raise ValueError("must be an RFC 1123 host name such as sip.example.com")
    if re.fullmatch(r"[0-9.]+", value):
        raise ValueError("an IPv4 address is not a host name; use an address field")
    return value.lower()


Hostname = Annotated[str, AfterValidator(_check_hostname)]


def _check_host(value: str) -> str:
    """A SIP peer may be named by an IPv4 address or a host name."""
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        return _check_hostname(value)


Host = Annotated[str, AfterValidator(_check_host)]


def check_ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError as exc:
        raise ValueError("must be an IPv4 address such as 203.0.113.10") from exc


IPv4 = Annotated[str, AfterValidator(check_ipv4)]


def _check_cidr(value: str) -> str:
    try:
        return str(ipaddress.IPv4Network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"must be an IPv4 network in CIDR form such as 10.0.0.0/16 ({exc})") from exc


Cidr = Annotated[str, AfterValidator(_check_cidr)]

Port = Annotated[int, Field(ge=1, le=65535)]

SECRET_REF_PATTERN = r"^(ssm:/[A-Za-z0-9_./-]{1,1000}|secretsmanager:[A-Za-z0-9/_+=.@-]{1,512})$"  # noqa: S105
SecretRef = Annotated[
    str, _matching(SECRET_REF_PATTERN, "a secret reference: 'ssm:/path/name' or 'secretsmanager:name'")
]

AbsolutePath = Annotated[
    str, _matching(r"^(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,63})+$", "an absolute path of letters, digits, '.', '_', '-'")
]

PromptName = Annotated[str, _matching(r"^[A-Za-z0-9][A-Za-z0-9_/-]{0,63}$", "an Asterisk sound name, no extension")]
ApiId = Annotated[str, _matching(r"^[A-Za-z0-9_-]{1,64}$", "an identifier of 1-64 letters, digits, '_' or '-'")]
DisplayName = Annotated[
    str,
    _matching(
        r"^[A-Za-z0-9._-]([A-Za-z0-9 ._-]{0,38}[A-Za-z0-9._-])?$",
        "1-40 letters, digits, spaces, '.', '_', '-' (no leading or trailing space)",
    ),
]
DtmfKey = Annotated[str, _matching(r"^[0-9*#]$", "one DTMF key: 0-9, * or #")]
HeaderName = Annotated[
    str,
    _matching(r"^X-[A-Za-z0-9][A-Za-z0-9-]{0,40}$", "an X- header name: 'X-' then 1-41 letters, digits and '-'"),
]
RESERVED_HEADERS = frozenset({"x-call-id", "x-caller-id"})
"""Headers the gateway always sends to ElevenLabs (the call's id and the caller's number)."""


class CallFact(StrEnum):
    """Facts of a call the gateway itself establishes; the only values an operator header may carry.

    Each is checked again at run time to ``[-A-Za-z0-9+._]`` (at most 64 characters), because the called
    number is what the carrier sent and may hold anything.
    """

    CALLED_DID = "called_did"
    CARRIER = "carrier"
    IVR_CHOICE = "ivr_choice"
    EXTENSION = "extension"
    ROUTE = "route"


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"


class MediaEncryption(StrEnum):
    DISABLED = "disabled"
    ALLOWED = "allowed"
    REQUIRED = "required"


class AudioCodec(StrEnum):
    ULAW = "ulaw"
    ALAW = "alaw"
    G722 = "g722"


class VideoCodec(StrEnum):
    H264 = "h264"
    VP8 = "vp8"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


def _unique(values: list[T], what: str) -> list[T]:
    if len(set(values)) != len(values):
        raise ValueError(f"{what} must not repeat")
    return values


# --- the ElevenLabs trunk -----------------------------------------------------------------


class AgentFallback(_Strict):
    """Where a caller goes when the agent cannot take the call: busy, no answer, unreachable, a refusal
    (ElevenLabs refuses new calls at the plan's concurrency limit) or the gateway's own cap."""

    kind: Literal["announcement", "extension", "ivr", "agent"] = Field(
        default="announcement", description="announcement: play `prompt` as early media, then end the call"
    )
    extension: ExtensionNumber | None = None
    agent: Name | None = Field(default=None, description="for kind 'agent': the name of another agent")
    prompt: PromptName = Field(default="all-circuits-busy-now", description="the announcement (an Asterisk sound)")
    hangup_cause: int = Field(
        default=34,
        ge=1,
        le=127,
        description="Q.850 cause that ends a call with nowhere to go (34: no circuit available, 17: user busy)",
    )

    @model_validator(mode="after")
    def _check(self) -> AgentFallback:
        if (self.kind == "extension") != (self.extension is not None):
            raise ValueError("'extension' is required for fallback kind 'extension' and only there")
        if (self.kind == "agent") != (self.agent is not None):
            raise ValueError("'agent' is required for fallback kind 'agent' and only there")
        return self


DEFAULT_AGENT = "default"
"""The name of the agent the `elevenlabs` section describes, unless it names itself."""


class ElevenLabsTrunk(_Strict):
    """The ElevenLabs Agents SIP trunk: static (INVITE only, no REGISTER), digest auth both ways."""

    name: Name = Field(
        default=DEFAULT_AGENT, description="this agent's name, for routes and fallbacks that name an agent"
    )
    phone_number: E164
    host: Hostname = ELEVENLABS_SIP_HOST
    port: Port | None = Field(default=None, description="default 5060 for tcp/udp, 5061 for tls")
    transport: Transport = Transport.TCP
    allow_experimental_udp: bool = Field(
        default=False, description="UDP is experimental at ElevenLabs; refused unless this is true"
    )
    media_encryption: MediaEncryption = Field(
        default=MediaEncryption.DISABLED,
        description="SRTP (SDES) on both directions' calls unless a direction below says otherwise",
    )
    media_encryption_inbound: MediaEncryption | None = Field(
        default=None, description="SRTP on calls from ElevenLabs to the gateway (default: media_encryption)"
    )
    media_encryption_outbound: MediaEncryption | None = Field(
        default=None, description="SRTP on calls from the gateway to ElevenLabs (default: media_encryption)"
    )
    codecs: list[AudioCodec] = Field(
        default_factory=lambda: [AudioCodec.ULAW, AudioCodec.ALAW, AudioCodec.G722], min_length=1
    )
    outbound_username: SipUsername = Field(description="digest user we send when calling ElevenLabs")
    outbound_password: SecretRef
    inbound_username: SipUsername = Field(
        description="digest user ElevenLabs sends when calling us; also the endpoint's name"
    )
    inbound_password: SecretRef
    api_key: SecretRef | None = Field(
        default=None, description="ElevenLabs API key, to check and sync the phone number's trunk"
    )
    phone_number_id: ApiId | None = None
    agent_id: ApiId | None = None
    restrict_inbound_to_gateway: bool = Field(
        default=False,
        description="sync sets the number's inbound allowed_addresses to the gateway's Elastic IP (/32), so only "
        "the gateway can place calls on it; when false the sync leaves allowed_addresses as the operator set them",
    )
    headers: dict[HeaderName, CallFact] = Field(
        default_factory=dict,
        description="extra X- headers on every INVITE to ElevenLabs, each carrying one call fact",
    )
    max_calls: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="at most this many calls to the agent at once (your plan's concurrency); "
        "the next caller goes to the fallback instead of a refused INVITE",
    )
    fallback: AgentFallback = Field(default_factory=AgentFallback)

    @model_validator(mode="after")
    def _check(self) -> ElevenLabsTrunk:
        _unique(list(self.codecs), "elevenlabs.codecs")
        reserved = sorted(h for h in self.headers if h.lower() in RESERVED_HEADERS)
        if reserved:
            raise ValueError(f"elevenlabs.headers: {', '.join(reserved)} is always sent by the gateway")
        if len({h.lower() for h in self.headers}) != len(self.headers):
            raise ValueError("elevenlabs.headers: header names must differ (case-insensitively)")
        if self.transport is Transport.UDP and not self.allow_experimental_udp:
            raise ValueError(
                "transport 'udp' is experimental at ElevenLabs; use tcp or tls, or set allow_experimental_udp: true"
            )
        if self.transport is not Transport.TLS:
            for direction, mode in (
                ("inbound", self.inbound_media_encryption),
                ("outbound", self.outbound_media_encryption),
            ):
                if mode is not MediaEncryption.DISABLED:
                    raise ValueError(
                        f"{direction} media encryption {mode.value!r}: SRTP (SDES) sends its keys in the SDP, "
                        "which only TLS protects; set elevenlabs.transport 'tls' or the encryption 'disabled'"
                    )
        return self

    @property
    def inbound_media_encryption(self) -> MediaEncryption:
        """SRTP on calls ElevenLabs places to the gateway (its number's ``outbound_trunk_config``)."""
        return self.media_encryption_inbound or self.media_encryption

    @property
    def outbound_media_encryption(self) -> MediaEncryption:
        """SRTP on calls the gateway places to ElevenLabs (its number's ``inbound_trunk_config``)."""
        return self.media_encryption_outbound or self.media_encryption

    @property
    def effective_port(self) -> int:
        return self.port or (5061 if self.transport is Transport.TLS else 5060)


class Agent(_Strict):
    """A further ElevenLabs number (or SIP identifier) with its agent, behind the same trunk as `elevenlabs`.

    Host, port, transport, media, codecs, headers and the credentials ElevenLabs uses to call the gateway are
    the `elevenlabs` section's; the number, its agent, its cap, its fallback and (when they differ) the
    credentials the gateway calls it with are its own.
    """

    name: Name = Field(description="routes, fallbacks and the sync's report name the agent by it")
    phone_number: E164 | None = Field(default=None, description="the number as imported into ElevenLabs, with '+'")
    sip_identifier: SipIdentifier | None = Field(
        default=None, description="instead of phone_number: the SIP identifier imported into ElevenLabs"
    )
    agent_id: ApiId | None = None
    phone_number_id: ApiId | None = None
    outbound_username: SipUsername | None = Field(
        default=None, description="digest user the gateway sends when calling this number; default elevenlabs'"
    )
    outbound_password: SecretRef | None = None
    max_calls: int | None = Field(default=None, ge=1, le=10000, description="as elevenlabs.max_calls, per agent")
    fallback: AgentFallback = Field(default_factory=AgentFallback)
    extension: ExtensionNumber | None = Field(
        default=None, description="what softphones dial to reach this agent (the default agent's is agent_extension)"
    )

    @model_validator(mode="after")
    def _check(self) -> Agent:
        if (self.phone_number is None) == (self.sip_identifier is None):
            raise ValueError(f"agent {self.name}: give exactly one of phone_number and sip_identifier")
        if (self.outbound_username is None) != (self.outbound_password is None):
            raise ValueError(f"agent {self.name}: outbound_username and outbound_password go together")
        return self


@dataclass(frozen=True)
class AgentRoute:
    """One agent as the renderer and the sync see it: the default (`elevenlabs`) or one of `agents`, with the
    shared trunk's values filled in. Built from validated models and not validated again, so the renderer's
    own check stays the second lock on every value."""

    name: str
    phone_number: str
    """The number (or SIP identifier) as imported into ElevenLabs: the Request-URI user of its INVITEs."""
    agent_id: str | None
    phone_number_id: str | None
    outbound_username: str
    outbound_password: str
    max_calls: int | None
    fallback: AgentFallback
    is_default: bool
    endpoint: str
    extension: str | None
    """What softphones dial to reach it (the default agent's: `dialplan.agent_extension`)."""
    """The outbound endpoint that calls it: the default's, unless its credentials differ."""


# --- network ----------------------------------------------------------------------------


class Network(_Strict):
    """Where the gateway sits: the public (Elastic IP) address Asterisk must advertise for NAT."""

    public_address: IPv4 | None = Field(
        default=None, description="the Elastic IP; filled in by provisioning when left empty"
    )
    public_hostname: Hostname | None = None
    local_nets: list[Cidr] = Field(default_factory=lambda: ["10.0.0.0/16"], min_length=1)
    bind_address: IPv4 = "0.0.0.0"
    sip_port: Port = 5060
    tls_port: Port = 5061
    udp_enabled: bool = Field(default=False, description="UDP 5060 for softphones/carriers that need it")
    rtp_port_start: Port = 10000
    rtp_port_end: Port = 20000

    @model_validator(mode="after")
    def _check(self) -> Network:
        _unique(list(self.local_nets), "network.local_nets")
        if self.rtp_port_end - self.rtp_port_start < 2:
            raise ValueError("network.rtp_port_end must be at least rtp_port_start + 2")
        if self.rtp_port_start % 2:
            raise ValueError("network.rtp_port_start must be even (RTP uses even ports)")
        if self.sip_port == self.tls_port:
            raise ValueError("network.sip_port and network.tls_port must differ")
        for port in (self.sip_port, self.tls_port):
            if self.rtp_port_start <= port <= self.rtp_port_end:
                raise ValueError(f"SIP port {port} lies inside the RTP range")
        return self


SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
"""Ubuntu's (and Debian's) bundle of the publicly trusted CAs (package ca-certificates, in the host image)."""


class Tls(_Strict):
    """TLS material on the host (from ACM export, Let's Encrypt or an upload)."""

    enabled: bool = False
    cert_file: AbsolutePath = "/etc/asterisk/keys/asterisk.crt"
    key_file: AbsolutePath = "/etc/asterisk/keys/asterisk.key"
    ca_list_file: AbsolutePath | None = Field(
        default=SYSTEM_CA_BUNDLE,
        description="the CAs outbound TLS trusts (ElevenLabs' public certificates): the host's system bundle",
    )
    verify_server: bool = Field(
        default=True, description="verify the far end's certificate (chain and name) on outbound TLS"
    )


# --- carriers and softphones --------------------------------------------------------------


class CarrierAuth(StrEnum):
    REGISTRATION = "registration"
    IP = "ip"


class Carrier(_Strict):
    """A PSTN carrier trunk: either we register to it, or it is identified by its source networks."""

    name: Name
    host: Host
    port: Port = 5060
    transport: Transport = Transport.UDP
    auth: CarrierAuth = CarrierAuth.REGISTRATION
    username: SipUsername | None = None
    password: SecretRef | None = None
    match: list[Cidr] = Field(default_factory=list, description="source networks (ip auth)")
    dids: list[E164] = Field(default_factory=list, description="numbers this carrier delivers to us")
    codecs: list[AudioCodec] = Field(default_factory=lambda: [AudioCodec.ULAW, AudioCodec.ALAW], min_length=1)
    from_domain: Host | None = Field(
        default=None, description="host of From/P-Asserted-Identity; default the public host name or address"
    )
    caller_id: E164 | None = Field(
        default=None,
        description="number presented on calls out through this carrier (one of its dids); none = pass-through",
    )
    send_pai: bool = Field(default=True, description="send P-Asserted-Identity on calls out")
    privacy: bool = Field(default=False, description="withhold the number: Privacy: id (the number stays in PAI)")

    @model_validator(mode="after")
    def _check(self) -> Carrier:
        _unique(list(self.codecs), f"carrier {self.name}: codecs")
        _unique(list(self.dids), f"carrier {self.name}: dids")
        if self.caller_id is not None and self.caller_id not in self.dids:
            raise ValueError(f"carrier {self.name}: caller_id must be one of the carrier's dids")
        if self.auth is CarrierAuth.REGISTRATION and (self.username is None or self.password is None):
            raise ValueError(f"carrier {self.name}: registration needs username and password")
        if self.auth is CarrierAuth.IP and not self.match:
            raise ValueError(f"carrier {self.name}: ip authentication needs at least one 'match' network")
        return self


class Extension(_Strict):
    """A softphone line (desk, laptop and mobile at once: several contacts)."""

    number: ExtensionNumber
    display_name: DisplayName | None = None
    password: SecretRef
    max_contacts: int = Field(default=3, ge=1, le=10)
    codecs: list[AudioCodec] = Field(default_factory=lambda: [AudioCodec.ULAW, AudioCodec.ALAW], min_length=1)
    video: bool = True
    video_codecs: list[VideoCodec] = Field(default_factory=lambda: [VideoCodec.H264, VideoCodec.VP8])
    max_video_streams: int = Field(default=1, ge=1, le=4)

    @model_validator(mode="after")
    def _check(self) -> Extension:
        _unique(list(self.codecs), f"extension {self.number}: codecs")
        _unique(list(self.video_codecs), f"extension {self.number}: video_codecs")
        return self


# --- dialplan policy --------------------------------------------------------------------


class Destination(_Strict):
    """Where a call goes: an agent (the default one unless `agent` names another), an extension, or the IVR."""

    kind: Literal["agent", "extension", "ivr"]
    extension: ExtensionNumber | None = None
    agent: Name | None = Field(default=None, description="for kind 'agent': which agent; default the default one")

    @model_validator(mode="after")
    def _check(self) -> Destination:
        if (self.kind == "extension") != (self.extension is not None):
            raise ValueError("'extension' is required for kind 'extension' and only there")
        if self.agent is not None and self.kind != "agent":
            raise ValueError("'agent' is allowed only for kind 'agent'")
        return self


class IvrMenu(_Strict):
    enabled: bool = False
    prompt: PromptName = "demo-instruct"
    timeout_s: int = Field(default=5, ge=1, le=60)
    choices: dict[DtmfKey, Destination] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> IvrMenu:
        if self.enabled and not self.choices:
            raise ValueError("ivr.choices must hold at least one DTMF choice when the IVR is enabled")
        if any(d.kind == "ivr" for d in self.choices.values()):
            raise ValueError("an IVR choice cannot lead back to the IVR")
        return self


class SipTransferTarget(_Strict):
    """A SIP destination the agent may transfer a caller to (Refer-To user = its name)."""

    host: Host
    port: Port = 5060
    transport: Literal[Transport.TCP, Transport.UDP, Transport.TLS] = Transport.TCP
    user: SipUsername | None = Field(default=None, description="Request-URI user there; default the name")


class Transfers(_Strict):
    """Blind transfers (SIP REFER) the agent may request; anything else is refused and the caller stays."""

    enabled: bool = Field(default=True, description="accept REFER from the agent at all")
    extensions: bool = Field(default=True, description="Refer-To a softphone extension number")
    numbers: bool = Field(default=True, description="Refer-To an allowlisted number, through the outbound carrier")
    numbers_on_agent_calls: bool = Field(
        default=False,
        description="on calls the agent placed, allow transferring the called party to a number "
        "(on a call to a carrier number this bridges two carrier legs)",
    )
    sip_destinations: dict[Name, SipTransferTarget] = Field(default_factory=dict)
    fallback: Destination = Field(
        default_factory=lambda: Destination(kind="agent"),
        description="where a caller goes when the transfer target is busy, does not answer or fails",
    )


class Dialplan(_Strict):
    """Who may reach what. Trunk contexts can only dial out through the allowlist."""

    did_routes: dict[E164, Destination] = Field(
        default_factory=dict, description="called number (DID) → destination; others go to default_route"
    )
    default_route: Destination = Field(default_factory=lambda: Destination(kind="agent"))
    outbound_allowlist: list[E164Prefix] = Field(
        default_factory=list, description="E.164 prefixes the agent and extensions may call via a carrier"
    )
    outbound_carrier: Name | None = None
    agent_extension: ExtensionNumber = Field(default="800", description="what softphones dial to reach the agent")
    recording: bool = False
    recordings_dir: AbsolutePath = RECORDINGS_DIR
    recording_spool_dir: AbsolutePath = Field(
        default=RECORDING_SPOOL_DIR,
        description="where the hangup handler drops a recording's upload job for the host agent (the image's)",
    )
    call_records: bool = Field(
        default=True, description="one JSON line per call (legs, causes, times, media quality), written at hangup"
    )
    call_records_dir: AbsolutePath = Field(
        default=CALL_RECORDS_DIR,
        description="where Asterisk appends the call records, one file per UTC day, until the host agent ships them",
    )
    ivr: IvrMenu = Field(default_factory=IvrMenu)
    dial_timeout_s: int = Field(default=45, ge=5, le=300)
    transfers: Transfers = Field(default_factory=Transfers)

    @model_validator(mode="after")
    def _check(self) -> Dialplan:
        _unique(list(self.outbound_allowlist), "dialplan.outbound_allowlist")
        if self.outbound_allowlist and self.outbound_carrier is None:
            raise ValueError("dialplan.outbound_allowlist needs dialplan.outbound_carrier")
        return self


# --- the document -------------------------------------------------------------------------


class Settings(_Strict):
    """One deployment. Loaded from YAML/JSON; the same model drives Lambdas, the CLI and local mode."""

    name: Name = Field(description="deployment name; prefixes parameters and resources")
    elevenlabs: ElevenLabsTrunk
    agents: list[Agent] = Field(
        default_factory=list, description="further ElevenLabs numbers, each with its agent (elevenlabs is the default)"
    )
    network: Network = Field(default_factory=Network)
    tls: Tls = Field(default_factory=Tls)
    carriers: list[Carrier] = Field(default_factory=list)
    extensions: list[Extension] = Field(default_factory=list)
    dialplan: Dialplan = Field(default_factory=Dialplan)

    @model_validator(mode="after")
    def _check(self) -> Settings:
        el = self.elevenlabs
        if el.transport is Transport.TLS and not self.tls.enabled:
            raise ValueError("elevenlabs.transport 'tls' needs tls.enabled: true")
        if el.transport is Transport.TLS and self.network.public_hostname is None:
            raise ValueError(
                "network.public_hostname is required with elevenlabs.transport 'tls': ElevenLabs dials that "
                "host name and checks the gateway's certificate against it (an IP address cannot carry the "
                "certificate's name)"
            )
        if el.transport is Transport.UDP and not self.network.udp_enabled:
            raise ValueError("elevenlabs.transport 'udp' needs network.udp_enabled: true")
        for carrier in self.carriers:
            if carrier.transport is Transport.TLS and not self.tls.enabled:
                raise ValueError(f"carrier {carrier.name}: transport 'tls' needs tls.enabled: true")
            if carrier.transport is Transport.UDP and not self.network.udp_enabled:
                raise ValueError(f"carrier {carrier.name}: transport 'udp' needs network.udp_enabled: true")
        for name, target in self.dialplan.transfers.sip_destinations.items():
            if target.transport is Transport.TLS and not self.tls.enabled:
                raise ValueError(f"transfer destination {name}: transport 'tls' needs tls.enabled: true")
            if target.transport is Transport.UDP and not self.network.udp_enabled:
                raise ValueError(f"transfer destination {name}: transport 'udp' needs network.udp_enabled: true")
        numbers = [e.number for e in self.extensions]
        _unique(numbers, "extension numbers")
        _unique([c.name for c in self.carriers], "carrier names")
        routes = self._check_agents(numbers)
        endpoint_names = [*numbers, *(c.name for c in self.carriers), el.inbound_username]
        endpoint_names += [ELEVENLABS_OUTBOUND_ENDPOINT, PROBE_ENDPOINT]
        endpoint_names += [r.endpoint for r in routes if r.endpoint != ELEVENLABS_OUTBOUND_ENDPOINT]
        if self.dialplan.transfers.sip_destinations:
            endpoint_names.append(TRANSFER_ENDPOINT)
        if len(set(endpoint_names)) != len(endpoint_names):
            raise ValueError(
                "endpoint names collide: elevenlabs.inbound_username, carrier names, extension numbers, "
                f"'{ELEVENLABS_OUTBOUND_ENDPOINT}', '{PROBE_ENDPOINT}' (and '{TRANSFER_ENDPOINT}' with transfer "
                f"sip_destinations, '{ELEVENLABS_OUTBOUND_ENDPOINT}-<agent>' for an agent with its own "
                "credentials) must all differ"
            )
        if self.dialplan.agent_extension in numbers:
            raise ValueError("dialplan.agent_extension must not equal a softphone extension number")
        carrier_names = {c.name for c in self.carriers}
        if self.dialplan.outbound_carrier is not None and self.dialplan.outbound_carrier not in carrier_names:
            raise ValueError(f"dialplan.outbound_carrier '{self.dialplan.outbound_carrier}' is not a carrier")
        agent_names = [r.name for r in routes]
        destinations: list[tuple[str, Destination]] = [
            ("dialplan.default_route", self.dialplan.default_route),
            ("dialplan.transfers.fallback", self.dialplan.transfers.fallback),
            *((f"dialplan.did_routes[{did}]", d) for did, d in self.dialplan.did_routes.items()),
            *((f"dialplan.ivr.choices[{key}]", d) for key, d in self.dialplan.ivr.choices.items()),
        ]
        for where, dest in destinations:
            if dest.kind == "extension" and dest.extension not in numbers:
                raise ValueError(f"route to extension {dest.extension}, which is not defined")
            if dest.kind == "ivr" and not self.dialplan.ivr.enabled:
                raise ValueError("a route leads to the IVR, but dialplan.ivr.enabled is false")
            if dest.agent is not None and dest.agent not in agent_names:
                raise ValueError(f"{where}: agent '{dest.agent}' is not defined (agents: {', '.join(agent_names)})")
        return self

    def _check_agents(self, numbers: list[str]) -> list[AgentRoute]:
        """Names and numbers unique, every fallback leads somewhere that exists; the agents as routes."""
        routes = self.agent_routes()
        seen: dict[str, str] = {}
        for r in routes:
            if r.name in seen:
                raise ValueError(f"agent name '{r.name}' is used twice (elevenlabs.name and agents[].name differ)")
            seen[r.name] = r.phone_number
        by_number: dict[str, str] = {}
        for r in routes:
            if r.phone_number in by_number:
                raise ValueError(
                    f"agents '{by_number[r.phone_number]}' and '{r.name}' have the same number {r.phone_number}"
                )
            by_number[r.phone_number] = r.name
        ids = [r.phone_number_id for r in routes if r.phone_number_id is not None]
        _unique(ids, "agents' phone_number_id")
        dialled: dict[str, str] = {}
        for r in routes:
            if r.extension is None:
                continue
            if r.extension in numbers and not r.is_default:  # the default's: dialplan.agent_extension's own check
                raise ValueError(f"agent {r.name}: extension {r.extension} is a softphone's number")
            if r.extension in dialled:
                raise ValueError(
                    f"agents '{dialled[r.extension]}' and '{r.name}' have the same extension {r.extension}"
                )
            dialled[r.extension] = r.name
        for r in routes:
            where = "elevenlabs.fallback" if r.is_default else f"agent {r.name}: fallback"
            fallback = r.fallback
            if fallback.kind == "extension" and fallback.extension not in numbers:
                raise ValueError(f"{where}: extension {fallback.extension} is not defined")
            if fallback.kind == "ivr" and not self.dialplan.ivr.enabled:
                raise ValueError(f"{where} leads to the IVR, but dialplan.ivr.enabled is false")
            if fallback.kind == "agent":
                if fallback.agent not in seen:
                    raise ValueError(f"{where}: agent '{fallback.agent}' is not defined (agents: {', '.join(seen)})")
                if fallback.agent == r.name:
                    raise ValueError(f"{where}: an agent cannot be its own fallback")
        return routes

    def agent_routes(self) -> list[AgentRoute]:
        """Every agent, the default (`elevenlabs`) first, with the shared trunk's values filled in."""
        el = self.elevenlabs
        routes = [
            AgentRoute(
                name=el.name,
                phone_number=el.phone_number,
                agent_id=el.agent_id,
                phone_number_id=el.phone_number_id,
                outbound_username=el.outbound_username,
                outbound_password=el.outbound_password,
                max_calls=el.max_calls,
                fallback=el.fallback,
                is_default=True,
                endpoint=ELEVENLABS_OUTBOUND_ENDPOINT,
                extension=self.dialplan.agent_extension,
            )
        ]
        for agent in self.agents:
            username = agent.outbound_username or el.outbound_username
            password = agent.outbound_password or el.outbound_password
            own = (username, password) != (el.outbound_username, el.outbound_password)
            routes.append(
                AgentRoute(
                    name=agent.name,
                    phone_number=str(agent.phone_number or agent.sip_identifier),
                    agent_id=agent.agent_id,
                    phone_number_id=agent.phone_number_id,
                    outbound_username=username,
                    outbound_password=password,
                    max_calls=agent.max_calls,
                    fallback=agent.fallback,
                    is_default=False,
                    endpoint=f"{ELEVENLABS_OUTBOUND_ENDPOINT}-{agent.name}" if own else ELEVENLABS_OUTBOUND_ENDPOINT,
                    extension=agent.extension,
                )
            )
        return routes

    def agent_route(self, name: str | None) -> AgentRoute:
        """The agent of that name; the default one for None."""
        routes = self.agent_routes()
        if name is None:
            return routes[0]
        found = next((r for r in routes if r.name == name), None)
        if found is None:
            raise SettingsError(f"agent '{name}' is not defined")
        return found

    def secret_refs(self) -> list[str]:
        """Every secret the renderer needs resolved (ordered, unique)."""
        el = self.elevenlabs
        refs = [el.outbound_password, el.inbound_password]
        refs += [a.outbound_password for a in self.agents if a.outbound_password is not None]
        refs += [c.password for c in self.carriers if c.password is not None]
        refs += [e.password for e in self.extensions]
        return list(dict.fromkeys(refs))


ELEVENLABS_OUTBOUND_ENDPOINT = "elevenlabs"
"""Name of the endpoint that places calls to ElevenLabs (inbound calls use the digest user's name)."""

PROBE_ENDPOINT = "probe"
"""The From user of the product's own SIP OPTIONS probes (`sip_trunk.sip.message.DEFAULT_FROM_USER`): an
endpoint of that name identifies them, so they never count as a scanner's unidentified requests."""

TRANSFER_ENDPOINT = "transfer-out"
"""Outbound-only endpoint that places calls to the operator's SIP transfer destinations."""


class Secrets(BaseModel):
    """Resolved secret values by reference. Never logged: values are SecretStr."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: dict[str, SecretStr]

    def reveal(self, ref: str) -> str:
        try:
            return self.values[ref].get_secret_value()
        except KeyError:
            raise SettingsError(f"secret '{ref}' is referenced by the settings but was not provided") from None


# --- loading ------------------------------------------------------------------------------


class SettingsError(ValueError):
    """A settings or secrets document is invalid. The message points at the fields; no secret in it."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    """A field-pointing message without the offending input (which may be a secret)."""
    lines = [f"{source}: {exc.error_count()} problem(s)"]
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)


def _read_document(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise SettingsError(f"{path}: cannot read ({reason})") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except yaml.YAMLError as exc:
        # Only the position: PyYAML's message quotes the offending line, which may hold a secret.
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise SettingsError(f"{path}: not valid YAML{where}") from None


def read_document(path: Path) -> Any:
    """A YAML or JSON document from a file; `SettingsError` (with a position, never content) otherwise."""
    return _read_document(path)


def parse_settings(data: Any, source: str = "settings") -> Settings:
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: the document must be a mapping of fields")
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(format_validation_error(exc, source)) from None


def load_settings(path: Path) -> Settings:
    return parse_settings(_read_document(path), str(path))


def parse_secrets(data: Any, source: str = "secrets") -> Secrets:
    """A secrets document maps each reference to its value; values must use the password alphabet."""
    if not isinstance(data, dict):
        raise SettingsError(f"{source}: the document must map secret references to values")
    problems: list[str] = []
    values: dict[str, SecretStr] = {}
    for ref, value in data.items():
        if not isinstance(ref, str) or not re.fullmatch(SECRET_REF_PATTERN, ref):
            problems.append(f"  - {ref!s:.80}: not a secret reference ('ssm:/…' or 'secretsmanager:…')")
            continue
        if not isinstance(value, str) or not PASSWORD_PATTERN.fullmatch(value):
            problems.append(
                f"  - {ref}: the value must be 12-128 characters from [{PASSWORD_ALPHABET}] (value not shown)"
            )
            continue
        values[ref] = SecretStr(value)
    if problems:
        raise SettingsError("\n".join([f"{source}: {len(problems)} problem(s)", *problems]))
    return Secrets(values=values)


def load_secrets(path: Path) -> Secrets:
    return parse_secrets(_read_document(path), str(path))
