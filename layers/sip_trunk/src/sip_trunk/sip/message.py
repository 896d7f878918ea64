"""SIP OPTIONS requests: the values that may go into one, and the bytes it goes out as.

Everything a caller supplies lands verbatim in a URI or a header, so it is validated here and a bad value
raises `SipValueError` before any byte is built. The errors, transports and size limits every part of
`sip_trunk.sip` shares live here too.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_FROM_USER",
    "DEFAULT_USER_AGENT",
    "MAX_MESSAGE_BYTES",
    "OptionsRequest",
    "SipError",
    "SipParseError",
    "SipValueError",
    "Transport",
    "build_options",
    "validate_host",
    "validate_user",
]

MAX_MESSAGE_BYTES = 65_535
"""Nothing legitimate answering OPTIONS is bigger than a UDP datagram; larger means hostile."""
DEFAULT_USER_AGENT = "aws-sip-trunk-probe"
DEFAULT_FROM_USER = "probe"

_BRANCH_MAGIC = "z9hG4bK"
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2}){1,128}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""ASCII control characters other than HTAB; shared by validation here and by parsing."""


class SipError(Exception):
    """Root of everything `sip_trunk.sip` raises on purpose, so callers can catch one type."""


class SipParseError(SipError, ValueError):
    """The bytes are not a well-formed SIP response; the only exception parsing can raise."""


class SipValueError(SipError, ValueError):
    """A caller-supplied value would break or inject into a header."""


class Transport(StrEnum):
    UDP = "udp"
    TCP = "tcp"
    TLS = "tls"

    @property
    def default_port(self) -> int:
        return 5061 if self is Transport.TLS else 5060


# --------------------------------------------------------------------------------------------------
# Validation of caller-supplied values


def validate_user(value: str, what: str = "user") -> str:
    """Reject anything outside RFC 3261 user characters: the value lands verbatim in a URI."""
    if not isinstance(value, str) or not _USER_RE.fullmatch(value):
        raise SipValueError(f"{what} is not a valid SIP user part: {value!r}")
    return value


def validate_host(value: str) -> str:
    """Return the host as it must appear in a URI (IPv6 bracketed), or raise `SipValueError`."""
    if not isinstance(value, str) or not value or len(value) > 253:
        raise SipValueError(f"host is not a valid hostname or IP address: {value!r}")
    inner = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return f"[{ipaddress.IPv6Address(inner).compressed}]"
    except ValueError:
        pass
    if inner is value and _HOSTNAME_RE.fullmatch(value):
        return value
    raise SipValueError(f"host is not a valid hostname or IP address: {value!r}")


def validate_port(port: int, what: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise SipValueError(f"{what} must be an integer in {low}..65535: {port!r}")
    return port


def validate_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256 or CTL_RE.search(value) or "\t" in value:
        raise SipValueError(f"{what} must be 1..256 printable characters: {value!r}")
    return value


def _hostport(host: str, port: int | None) -> str:
    uri_host = validate_host(host)
    return uri_host if port is None else f"{uri_host}:{port}"


# --------------------------------------------------------------------------------------------------
# Building the request


@dataclass(frozen=True, slots=True)
class OptionsRequest:
    """The wire bytes plus the identifiers a response must echo to be ours."""

    raw: bytes
    request_uri: str
    transport: Transport
    call_id: str
    cseq: int
    branch: str
    from_tag: str


def build_options(
    host: str,
    *,
    local_host: str,
    local_port: int,
    port: int | None = None,
    transport: Transport = Transport.UDP,
    user: str | None = None,
    from_user: str = DEFAULT_FROM_USER,
    user_agent: str = DEFAULT_USER_AGENT,
    cseq: int = 1,
) -> OptionsRequest:
    """Build an RFC 3261 OPTIONS; every probe gets a fresh branch, tag and Call-ID."""
    transport = Transport(transport)
    target = _hostport(host, None if port is None else validate_port(port, "port"))
    user_part = "" if user is None else f"{validate_user(user)}@"
    from_user = validate_user(from_user, "from_user")
    user_agent = validate_text(user_agent, "user_agent")
    local = _hostport(local_host, validate_port(local_port, "local_port"))
    if isinstance(cseq, bool) or not isinstance(cseq, int) or not 1 <= cseq < 2**31:
        raise SipValueError(f"cseq must be in 1..2**31-1: {cseq!r}")
    uri_params = "" if transport is Transport.UDP else f";transport={transport.value}"
    request_uri = f"sip:{user_part}{target}{uri_params}"
    branch = _BRANCH_MAGIC + secrets.token_hex(12)
    from_tag = secrets.token_hex(8)
    call_id = secrets.token_hex(16)
    lines = [
        f"OPTIONS {request_uri} SIP/2.0",
        f"Via: SIP/2.0/{transport.value.upper()} {local};rport;branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:{from_user}@{validate_host(local_host)}>;tag={from_tag}",
        f"To: <sip:{user_part}{target}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} OPTIONS",
        f"Contact: <sip:{from_user}@{local}{uri_params}>",
        "Accept: application/sdp",
        f"User-Agent: {user_agent}",
        "Content-Length: 0",
    ]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    return OptionsRequest(raw, request_uri, transport, call_id, cseq, branch, from_tag)
