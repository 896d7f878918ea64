"""SIP OPTIONS: build, parse and match messages, and probe a peer over UDP, TCP or TLS.

Standard library only: this runs in Lambda and in the host agent, where a full SIP stack would be
dead weight for a single request type. Parsing is strict about structure and lenient only where
RFC 3261 tells receivers to be (compact names, folded lines, bare LF, keepalive CRLFs), so that a
hostile or broken peer yields a `SipParseError` and never any other exception.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import re
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_FROM_USER",
    "DEFAULT_USER_AGENT",
    "MAX_MESSAGE_BYTES",
    "T1_S",
    "T2_S",
    "OptionsRequest",
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
    "parse_response",
    "probe_options",
    "response_matches",
    "validate_host",
    "validate_user",
]

T1_S = 0.5
"""RFC 3261 T1: first retransmission interval over UDP."""
T2_S = 4.0
"""RFC 3261 T2: cap of the doubling interval for non-INVITE requests (Timer E)."""
MAX_MESSAGE_BYTES = 65_535
"""Nothing legitimate answering OPTIONS is bigger than a UDP datagram; larger means hostile."""
MAX_HEADERS = 256
DEFAULT_USER_AGENT = "aws-sip-trunk-probe"
DEFAULT_FROM_USER = "probe"

_BRANCH_MAGIC = "z9hG4bK"
_TOKEN_PATTERN = r"[!%'*+\-.0-9A-Z_`a-z~]+"  # noqa: S105 (RFC 3261 token, not a secret)
_TOKEN_RE = re.compile(_TOKEN_PATTERN)
_USER_RE = re.compile(r"(?:[A-Za-z0-9\-_.!~*'()&=+$,;?/]|%[0-9A-Fa-f]{2}){1,128}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_CTL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_STATUS_RE = re.compile(r"[Ss][Ii][Pp]/2\.0 ([1-6][0-9][0-9])(?: (.*))?")
_HEADER_RE = re.compile(rf"({_TOKEN_PATTERN})[ \t]*:(.*)")
_CSEQ_RE = re.compile(rf"([0-9]{{1,10}})[ \t]+({_TOKEN_PATTERN})")
_CALL_ID_RE = re.compile(r"[!-~]{1,256}")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_VIA_RE = re.compile(rf"SIP[ \t]*/[ \t]*2\.0[ \t]*/[ \t]*({_TOKEN_PATTERN})[ \t]+([^;, \t]+)[ \t]*(.*)", re.IGNORECASE)
_SENT_BY_RE = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9\-.]+))(?::([0-9]{1,5}))?")
_VIA_PARAM_RE = re.compile(rf"({_TOKEN_PATTERN})(?:[ \t]*=[ \t]*(\"(?:[^\"\\]|\\.)*\"|[^ \t;\"]+))?")

# RFC 3261 7.3.3 and the registrations that followed it.
_COMPACT = {
    "v": "via",
    "i": "call-id",
    "f": "from",
    "t": "to",
    "l": "content-length",
    "m": "contact",
    "c": "content-type",
    "e": "content-encoding",
    "k": "supported",
    "s": "subject",
    "o": "event",
    "u": "allow-events",
    "r": "refer-to",
    "b": "referred-by",
    "x": "session-expires",
    "a": "accept-contact",
    "j": "reject-contact",
    "d": "request-disposition",
    "y": "identity",
    "n": "identity-info",
}
# A second copy of any of these makes the message ambiguous (and is a smuggling vector on streams).
_SINGLETONS = ("call-id", "cseq", "from", "to", "content-length")


class SipError(Exception):
    """Root of everything this module raises on purpose, so callers can catch one type."""


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


class ProbeErrorKind(StrEnum):
    """Why no final response arrived; strings so they go straight into logs and metrics."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    TLS = "tls"
    PARSE = "parse"
    RESOLVE = "resolve"
    NETWORK = "network"


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


def _validate_port(port: int, what: str, *, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise SipValueError(f"{what} must be an integer in {low}..65535: {port!r}")
    return port


def _validate_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256 or _CTL_RE.search(value) or "\t" in value:
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
    target = _hostport(host, None if port is None else _validate_port(port, "port"))
    user_part = "" if user is None else f"{validate_user(user)}@"
    from_user = validate_user(from_user, "from_user")
    user_agent = _validate_text(user_agent, "user_agent")
    local = _hostport(local_host, _validate_port(local_port, "local_port"))
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


# --------------------------------------------------------------------------------------------------
# Parsing responses


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: tuple[tuple[str, str | None], ...]

    def param(self, name: str) -> str | None:
        """Value of a parameter; None both when absent and when valueless (use `has_param`)."""
        name = name.lower()
        return next((value for key, value in self.params if key == name), None)

    def has_param(self, name: str) -> bool:
        name = name.lower()
        return any(key == name for key, _ in self.params)

    @property
    def branch(self) -> str | None:
        return self.param("branch")


@dataclass(frozen=True, slots=True)
class SipResponse:
    """A parsed response; header names are lower-case full forms, in wire order."""

    status_code: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    call_id: str
    cseq: int
    cseq_method: str
    vias: tuple[Via, ...]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> tuple[str, ...]:
        key = _canonical_name(name)
        return tuple(value for key_, value in self.headers if key_ == key)

    @property
    def branch(self) -> str | None:
        return self.vias[0].branch

    @property
    def server(self) -> str | None:
        """Who answered: servers send Server, but some UAs only send User-Agent."""
        return self.header("server") or self.header("user-agent")

    @property
    def is_provisional(self) -> bool:
        return self.status_code < 200


def _canonical_name(name: str) -> str:
    name = name.lower()
    return _COMPACT.get(name, name)


def _find_head_end(data: bytes | bytearray) -> tuple[int, int] | None:
    """(end of header section, start of body); bare-LF peers exist, so both endings count."""
    found = [(i, i + len(sep)) for sep in (b"\r\n\r\n", b"\n\n") if (i := data.find(sep)) >= 0]
    return min(found) if found else None


def _head_lines(head: bytes) -> list[str]:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SipParseError(f"header section is not UTF-8 at byte {exc.start}") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    for number, line in enumerate(lines):
        if _CTL_RE.search(line):
            raise SipParseError(f"control character in header line {number}")
    return lines


def _parse_header_lines(lines: list[str]) -> list[tuple[str, str]]:
    headers: list[list[str]] = []
    for line in lines:
        if not line:
            raise SipParseError("empty line inside the header section")
        if line[0] in " \t":
            if not headers:
                raise SipParseError("continuation line before any header")
            headers[-1][1] = (headers[-1][1] + " " + line.strip(" \t")).strip(" \t")
            continue
        match = _HEADER_RE.fullmatch(line)
        if match is None:
            raise SipParseError(f"malformed header line: {line[:80]!r}")
        headers.append([_canonical_name(match.group(1)), match.group(2).strip(" \t")])
        if len(headers) > MAX_HEADERS:
            raise SipParseError(f"more than {MAX_HEADERS} headers")
    return [(name, value) for name, value in headers]


def _content_length(headers: list[tuple[str, str]], *, required: bool) -> int | None:
    values = [value for name, value in headers if name == "content-length"]
    if not values:
        if required:
            raise SipParseError("Content-Length is mandatory on stream transports")
        return None
    if len(values) > 1:
        raise SipParseError("more than one Content-Length")
    if not _DIGITS_RE.fullmatch(values[0]):
        raise SipParseError(f"invalid Content-Length: {values[0][:20]!r}")
    length = int(values[0])
    if length > MAX_MESSAGE_BYTES:
        raise SipParseError(f"Content-Length {length} exceeds {MAX_MESSAGE_BYTES}")
    return length


def _split_commas(value: str) -> list[str]:
    """Split a multi-valued header on commas that are not inside a quoted string."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise SipParseError("unterminated quoted string")
    parts.append("".join(current))
    return [part.strip(" \t") for part in parts]


def _parse_via(value: str) -> Via:
    match = _VIA_RE.fullmatch(value)
    if match is None:
        raise SipParseError(f"malformed Via: {value[:80]!r}")
    transport, sent_by, rest = match.groups()
    host_match = _SENT_BY_RE.fullmatch(sent_by)
    if host_match is None:
        raise SipParseError(f"malformed Via sent-by: {sent_by[:80]!r}")
    ipv6, hostname, port_text = host_match.groups()
    port = None if port_text is None else int(port_text)
    if port is not None and not 1 <= port <= 65535:
        raise SipParseError(f"Via port out of range: {port}")
    params: list[tuple[str, str | None]] = []
    rest = rest.strip(" \t")
    if rest:
        if not rest.startswith(";"):
            raise SipParseError(f"garbage after Via sent-by: {rest[:80]!r}")
        for raw in rest[1:].split(";"):
            param = _VIA_PARAM_RE.fullmatch(raw.strip(" \t"))
            if param is None:
                raise SipParseError(f"malformed Via parameter: {raw[:80]!r}")
            params.append((param.group(1).lower(), param.group(2)))
    return Via(transport.upper(), ipv6 or hostname, port, tuple(params))


def _singleton(headers: list[tuple[str, str]], name: str) -> str:
    values = [value for key, value in headers if key == name]
    if not values or not values[0]:
        raise SipParseError(f"missing {name} header")
    return values[0]


def parse_response(data: bytes, *, stream: bool = False) -> SipResponse:
    """Parse one response; with `stream` the bytes must be exactly one framed message."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SipParseError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > MAX_MESSAGE_BYTES:
        raise SipParseError(f"message larger than {MAX_MESSAGE_BYTES} bytes")
    data = data.lstrip(b"\r\n")  # RFC 3261 7.5: CRLFs before the start line are keepalives.
    if not data:
        raise SipParseError("empty message")
    bounds = _find_head_end(data)
    if bounds is None:
        raise SipParseError("no empty line ends the header section")
    lines = _head_lines(data[: bounds[0]])
    status = _STATUS_RE.fullmatch(lines[0])
    if status is None:
        raise SipParseError(f"not a SIP/2.0 status line: {lines[0][:80]!r}")
    headers = _parse_header_lines(lines[1:])
    for name in _SINGLETONS:
        if sum(1 for key, _ in headers if key == name) > 1:
            raise SipParseError(f"more than one {name} header")

    rest = data[bounds[1] :]
    length = _content_length(headers, required=stream)
    if length is None:
        body = rest
    elif len(rest) < length:
        raise SipParseError(f"body shorter than Content-Length ({len(rest)} < {length})")
    elif stream and len(rest) > length:
        raise SipParseError("bytes after the body on a stream message")
    else:
        body = rest[:length]  # RFC 3261 18.3: a datagram's excess bytes are discarded.

    call_id = _singleton(headers, "call-id")
    if not _CALL_ID_RE.fullmatch(call_id):
        raise SipParseError(f"malformed Call-ID: {call_id[:80]!r}")
    cseq = _CSEQ_RE.fullmatch(_singleton(headers, "cseq"))
    if cseq is None or int(cseq.group(1)) >= 2**31:
        raise SipParseError("malformed CSeq")
    _singleton(headers, "from")
    _singleton(headers, "to")
    vias = tuple(_parse_via(part) for key, value in headers if key == "via" for part in _split_commas(value))
    if not vias:
        raise SipParseError("missing via header")
    return SipResponse(
        status_code=int(status.group(1)),
        reason=(status.group(2) or "").strip(" \t"),
        headers=tuple(headers),
        body=body,
        call_id=call_id,
        cseq=int(cseq.group(1)),
        cseq_method=cseq.group(2),
        vias=vias,
    )


def response_matches(request: OptionsRequest, response: SipResponse) -> bool:
    """RFC 3261 17.1.3 client transaction matching, plus Call-ID against stray dialogs."""
    return (
        response.call_id == request.call_id
        and response.cseq == request.cseq
        and response.cseq_method == "OPTIONS"
        and response.branch == request.branch
    )


class SipStreamFramer:
    """Cut a TCP/TLS byte stream into messages: streams have no boundaries but Content-Length.

    After it raises, the stream cannot be resynchronised and the connection should be dropped.
    """

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_message_bytes

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        while True:
            skip = 0
            while skip < len(self._buffer) and self._buffer[skip] in b"\r\n":
                skip += 1
            del self._buffer[:skip]
            bounds = _find_head_end(self._buffer)
            if bounds is None:
                if len(self._buffer) > self._max:
                    raise SipParseError(f"header section larger than {self._max} bytes")
                return messages
            head_end, body_start = bounds
            lines = _head_lines(bytes(self._buffer[:head_end]))
            length = _content_length(_parse_header_lines(lines[1:]), required=True) or 0
            total = body_start + length
            if total > self._max:
                raise SipParseError(f"message larger than {self._max} bytes")
            if len(self._buffer) < total:
                return messages
            messages.append(bytes(self._buffer[:total]))
            del self._buffer[:total]


# --------------------------------------------------------------------------------------------------
# Probing


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Validated on construction, so a bad host fails where it is configured, not mid-probe."""

    host: str
    port: int | None = None
    transport: Transport = Transport.UDP
    user: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "transport", Transport(self.transport))
        validate_host(self.host)
        if self.port is not None:
            _validate_port(self.port, "port")
        if self.user is not None:
            validate_user(self.user)

    @property
    def effective_port(self) -> int:
        return self.transport.default_port if self.port is None else self.port


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """Outcome of one probe. `reachable` means a final SIP response arrived, whatever its code.

    `rtt_ms` runs from the last transmission (UDP) or from sending on the established connection
    (TCP/TLS) to the final response; `elapsed_ms` covers the whole probe including resolution,
    retransmissions, connect and handshake.
    """

    target: ProbeTarget
    reachable: bool
    status_code: int | None = None
    reason: str | None = None
    rtt_ms: float | None = None
    elapsed_ms: float = 0.0
    server: str | None = None
    error: ProbeErrorKind | None = None
    detail: str = ""
    address: str | None = None
    attempts: int = 0
    response: SipResponse | None = None


class _Failure(Exception):
    """Unwinds a probe to `probe_options`, which turns it into a result rather than an exception."""

    def __init__(self, kind: ProbeErrorKind, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(slots=True)
class _Run:
    target: ProbeTarget
    start: float
    deadline: float
    local_host: str | None
    local_port: int
    from_user: str
    user_agent: str
    address: str | None = None
    attempts: int = 0

    def remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _Failure(ProbeErrorKind.TIMEOUT, f"no final response within {self.deadline - self.start:g}s")
        return left

    def request(self, sock: socket.socket) -> OptionsRequest:
        local_host, local_port = sock.getsockname()[:2]
        return build_options(
            self.target.host,
            local_host=local_host,
            local_port=local_port,
            port=self.target.port,
            transport=self.target.transport,
            user=self.target.user,
            from_user=self.from_user,
            user_agent=self.user_agent,
        )

    def failed(self, failure: _Failure) -> ProbeResult:
        return ProbeResult(
            target=self.target,
            reachable=False,
            elapsed_ms=(time.monotonic() - self.start) * 1000.0,
            error=failure.kind,
            detail=failure.detail,
            address=self.address,
            attempts=self.attempts,
        )

    def answered(self, response: SipResponse, sent: float, received: float) -> ProbeResult:
        return ProbeResult(
            target=self.target,
            reachable=True,
            status_code=response.status_code,
            reason=response.reason,
            rtt_ms=(received - sent) * 1000.0,
            elapsed_ms=(time.monotonic() - self.start) * 1000.0,
            server=response.server,
            address=self.address,
            attempts=self.attempts,
            response=response,
        )


def _resolve_ipv4(host: str, port: int, run: _Run) -> str:
    """Resolve once, bounded by the deadline: getaddrinfo itself cannot be interrupted."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.IPv4Address(host))
    if validate_host(host).startswith("["):
        raise _Failure(ProbeErrorKind.RESOLVE, f"{host} is IPv6; only IPv4 is probed")
    box: list[str | OSError] = []

    def lookup() -> None:
        try:
            box.append(str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][4][0]))
        except OSError as exc:
            box.append(exc)
        except Exception as exc:  # e.g. UnicodeError from IDNA; report, never leak from the thread
            box.append(OSError(str(exc)))

    worker = threading.Thread(target=lookup, name=f"sip-resolve-{host}", daemon=True)
    worker.start()
    worker.join(run.remaining())
    if not box:
        raise _Failure(ProbeErrorKind.TIMEOUT, f"resolving {host} did not finish before the deadline")
    if isinstance(box[0], OSError):
        raise _Failure(ProbeErrorKind.RESOLVE, f"cannot resolve {host}: {box[0]}")
    return box[0]


def _tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    if verify:
        context = ssl.create_default_context(cafile=ca_file)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _probe_udp(run: _Run, address: str) -> ProbeResult:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((run.local_host or "0.0.0.0", run.local_port))
            # Connected, so only the target's datagrams arrive and ICMP unreachable surfaces.
            sock.connect((address, run.target.effective_port))
        except OSError as exc:
            raise _Failure(ProbeErrorKind.NETWORK, f"cannot open UDP socket: {exc}") from None
        request = run.request(sock)
        interval, next_send, last_sent = T1_S, time.monotonic(), 0.0
        garbage: str | None = None
        while True:
            try:
                run.remaining()
            except _Failure:
                if garbage is None:
                    raise
                raise _Failure(ProbeErrorKind.PARSE, f"unparseable response: {garbage}") from None
            now = time.monotonic()
            try:
                if now >= next_send:
                    sock.send(request.raw)
                    run.attempts += 1
                    last_sent, next_send = now, now + interval
                    interval = min(interval * 2, T2_S)
                wait = min(next_send, run.deadline) - time.monotonic()
                if wait <= 0:
                    continue
                sock.settimeout(wait)
                data = sock.recv(MAX_MESSAGE_BYTES + 1)
            except TimeoutError:
                continue
            except ConnectionRefusedError:
                raise _Failure(ProbeErrorKind.REFUSED, "ICMP port unreachable") from None
            except OSError as exc:
                raise _Failure(ProbeErrorKind.NETWORK, str(exc)) from None
            received = time.monotonic()
            try:
                response = parse_response(data)
            except SipParseError as exc:
                garbage = str(exc)
                continue
            if not response_matches(request, response):
                continue
            if response.is_provisional:
                interval = T2_S  # RFC 3261 17.1.2.2: Proceeding retransmits at T2.
                continue
            return run.answered(response, last_sent, received)


def _probe_stream(run: _Run, address: str, context: ssl.SSLContext | None) -> ProbeResult:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Without it Nagle holds the request behind the handshake's last flight for a delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = sock
    phase = "connect"
    try:
        if run.local_host is not None or run.local_port:
            sock.bind((run.local_host or "0.0.0.0", run.local_port))
        sock.settimeout(run.remaining())
        sock.connect((address, run.target.effective_port))
        if context is not None:
            phase = "tls"
            server_name = run.target.host.strip("[]")
            conn = context.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)
            conn.settimeout(run.remaining())
            conn.do_handshake()
        phase = "sip"
        request = run.request(conn)
        conn.settimeout(run.remaining())
        sent = time.monotonic()
        conn.sendall(request.raw)
        run.attempts = 1
        framer = SipStreamFramer()
        while True:
            conn.settimeout(run.remaining())
            chunk = conn.recv(65_536)
            if not chunk:
                raise _Failure(ProbeErrorKind.NETWORK, "connection closed before a final response")
            received = time.monotonic()
            for message in framer.feed(chunk):
                response = parse_response(message, stream=True)
                if response_matches(request, response) and not response.is_provisional:
                    return run.answered(response, sent, received)
    except SipParseError as exc:
        raise _Failure(ProbeErrorKind.PARSE, str(exc)) from None
    except TimeoutError:
        raise _Failure(ProbeErrorKind.TIMEOUT, f"timed out during {phase}") from None
    except ConnectionRefusedError:
        raise _Failure(ProbeErrorKind.REFUSED, "connection refused") from None
    except ssl.SSLCertVerificationError as exc:
        raise _Failure(ProbeErrorKind.TLS, f"certificate rejected: {exc.verify_message}") from None
    except OSError as exc:  # ssl.SSLError included
        kind = ProbeErrorKind.TLS if phase == "tls" or isinstance(exc, ssl.SSLError) else ProbeErrorKind.NETWORK
        raise _Failure(kind, f"{phase}: {exc}") from None
    finally:
        conn.close()
        sock.close()


def probe_options(
    target: ProbeTarget,
    timeout_s: float,
    *,
    local_host: str | None = None,
    local_port: int = 0,
    verify: bool = True,
    ca_file: str | None = None,
    from_user: str = DEFAULT_FROM_USER,
    user_agent: str = DEFAULT_USER_AGENT,
) -> ProbeResult:
    """Send one OPTIONS and wait for a final response, never past `timeout_s`.

    Network outcomes (timeout, refusal, TLS failure, garbage) are results, because a health check
    wants a verdict; bad arguments raise `SipValueError`/`ValueError`, because they are bugs.
    `verify=False` exists for self-signed test hosts; `ca_file` pins the trust anchors instead of
    the system store.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise ValueError(f"timeout_s must be a number: {timeout_s!r}")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive and finite: {timeout_s!r}")
    validate_user(from_user, "from_user")
    _validate_text(user_agent, "user_agent")
    _validate_port(local_port, "local_port", allow_zero=True)
    if local_host is not None:
        try:
            ipaddress.IPv4Address(local_host)
        except ValueError:
            raise SipValueError(f"local_host must be an IPv4 address: {local_host!r}") from None
    context = _tls_context(verify, ca_file) if target.transport is Transport.TLS else None

    start = time.monotonic()
    run = _Run(target, start, start + timeout_s, local_host, local_port, from_user, user_agent)
    try:
        run.address = _resolve_ipv4(target.host, target.effective_port, run)
        if target.transport is Transport.UDP:
            return _probe_udp(run, run.address)
        return _probe_stream(run, run.address, context)
    except _Failure as failure:
        return run.failed(failure)
