"""SIP OPTIONS: build, parse and match messages, and probe a peer over UDP, TCP or TLS.

Standard library only: this runs in Lambda and in the host agent, where a full SIP stack would be
dead weight for a single request type. `message` validates caller values and builds the request,
`parse` turns bytes from a datagram or a stream into a `SipResponse` (raising only `SipParseError`),
and `probe` sends the request and turns whatever happens on the network into a `ProbeResult`
(`OptionsSession` keeps one connection for a peer probed again and again). `certificate` checks the
certificate a TLS peer presents the way ElevenLabs checks the gateway's.
"""

from __future__ import annotations

from sip_trunk.sip.certificate import CertificateReport, CertificateTarget, check_certificate
from sip_trunk.sip.message import (
    DEFAULT_FROM_USER,
    DEFAULT_USER_AGENT,
    MAX_MESSAGE_BYTES,
    OptionsRequest,
    SipError,
    SipParseError,
    SipValueError,
    Transport,
    build_options,
    validate_host,
    validate_user,
)
from sip_trunk.sip.parse import SipResponse, SipStreamFramer, Via, parse_response, response_matches
from sip_trunk.sip.probe import (
    T1_S,
    T2_S,
    OptionsSession,
    ProbeErrorKind,
    ProbeResult,
    ProbeTarget,
    probe_options,
)

__all__ = [
    "DEFAULT_FROM_USER",
    "DEFAULT_USER_AGENT",
    "MAX_MESSAGE_BYTES",
    "T1_S",
    "T2_S",
    "CertificateReport",
    "CertificateTarget",
    "OptionsRequest",
    "OptionsSession",
    "ProbeErrorKind",
    "ProbeResult",
    "ProbeTarget",
    "SipError",
    "SipParseError",
    "SipResponse",
    "SipStreamFramer",
    "SipValueError",
    "Transport",
    "Via",
    "build_options",
    "check_certificate",
    "parse_response",
    "probe_options",
    "response_matches",
    "validate_host",
    "validate_user",
]
