"""Parsing SIP responses, matching them to our request, and framing them out of a TCP/TLS stream.

Strict about structure and lenient only where RFC 3261 tells receivers to be (compact names, folded lines,
bare LF, keepalive CRLFs), so that a hostile or broken peer yields a `SipParseError` and never any other
exception.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sip_trunk.sip.message import CTL_RE, MAX_MESSAGE_BYTES, OptionsRequest, SipParseError

__all__ = [
    "SipResponse",
    "SipStreamFramer",
    "Via",
    "parse_response",
    "response_matches",
]

MAX_HEADERS = 256

_TOKEN_PATTERN = r"[!%'*+\-.0-9A-Z_`a-z~]+"  # noqa: S105 (RFC 3261 token, not a secret)
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
        if CTL_RE.search(line):
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
