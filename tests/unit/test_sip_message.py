"""Building, parsing and matching SIP OPTIONS messages without touching the network."""

from __future__ import annotations

import contextlib
import random

import pytest
from sip_trunk.sip import (
    OptionsRequest,
    ProbeTarget,
    SipParseError,
    SipStreamFramer,
    SipValueError,
    Transport,
    build_options,
    parse_response,
    probe_options,
    response_matches,
    validate_host,
    validate_user,
)

pytestmark = pytest.mark.unit

EXPECTED_HEADERS = [
    "Via",
    "Max-Forwards",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Accept",
    "User-Agent",
    "Content-Length",
]


def parse_request(raw: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """Deliberately independent of the module: request line, ordered headers, body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    start, *lines = head.decode("ascii").split("\r\n")
    headers = []
    for line in lines:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return start, headers, body


def header(headers: list[tuple[str, str]], name: str) -> str:
    return next(value for key, value in headers if key == name)


def build(**overrides: object) -> OptionsRequest:
    args: dict[str, object] = {"local_host": "10.0.0.5", "local_port": 40000}
    args.update(overrides)
    host = str(args.pop("host", "203.0.113.10"))
    return build_options(host, **args)  # type: ignore[arg-type]


def reply(request: OptionsRequest, status: str = "200 OK", *extra: str, call_id: str | None = None) -> bytes:
    """A response echoing the request's transaction identifiers, as a UAS must."""
    _, headers, _ = parse_request(request.raw)
    lines = [
        f"SIP/2.0 {status}",
        f"Via: {header(headers, 'Via')};received=198.51.100.1",
        f"From: {header(headers, 'From')}",
        f"To: {header(headers, 'To')};tag=as1234",
        f"Call-ID: {call_id or request.call_id}",
        f"CSeq: {request.cseq} OPTIONS",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------------------------------
# Building


def test_built_request_parses_back_with_exact_header_set() -> None:
    request = build(user="agent", port=5080, user_agent="probe/1.0", cseq=7)
    start, headers, body = parse_request(request.raw)

    assert start == "OPTIONS sip:agent@203.0.113.10:5080 SIP/2.0"
    assert [name for name, _ in headers] == EXPECTED_HEADERS
    assert body == b""
    assert header(headers, "Via") == f"SIP/2.0/UDP 10.0.0.5:40000;rport;branch={request.branch}"
    assert header(headers, "Max-Forwards") == "70"
    assert header(headers, "From") == f"<sip:probe@10.0.0.5>;tag={request.from_tag}"
    assert header(headers, "To") == "<sip:agent@203.0.113.10:5080>"
    assert header(headers, "Call-ID") == request.call_id
    assert header(headers, "CSeq") == "7 OPTIONS"
    assert header(headers, "Contact") == "<sip:probe@10.0.0.5:40000>"
    assert header(headers, "Accept") == "application/sdp"
    assert header(headers, "User-Agent") == "probe/1.0"
    assert header(headers, "Content-Length") == "0"
    assert request.request_uri == "sip:agent@203.0.113.10:5080"


def test_request_uses_crlf_only_and_ends_with_empty_line() -> None:
    raw = build().raw
    assert raw.endswith(b"\r\n\r\n")
    assert raw.count(b"\n") == raw.count(b"\r\n")
    assert raw.count(b"\r") == raw.count(b"\r\n")
    assert raw.isascii()


@pytest.mark.parametrize(
    ("transport", "via", "uri_suffix"),
    [(Transport.UDP, "UDP", ""), (Transport.TCP, "TCP", ";transport=tcp"), (Transport.TLS, "TLS", ";transport=tls")],
)
def test_transport_shows_in_via_uri_and_contact(transport: Transport, via: str, uri_suffix: str) -> None:
    request = build(transport=transport, host="sip.example.net")
    start, headers, _ = parse_request(request.raw)
    assert start == f"OPTIONS sip:sip.example.net{uri_suffix} SIP/2.0"
    assert header(headers, "Via").startswith(f"SIP/2.0/{via} 10.0.0.5:40000;")
    assert header(headers, "Contact") == f"<sip:probe@10.0.0.5:40000{uri_suffix}>"
    assert header(headers, "To") == "<sip:sip.example.net>"


def test_ipv6_hosts_are_bracketed() -> None:
    request = build(host="2001:db8::1", local_host="2001:db8::2", port=5060)
    start, headers, _ = parse_request(request.raw)
    assert start == "OPTIONS sip:[2001:db8::1]:5060 SIP/2.0"
    assert "SIP/2.0/UDP [2001:db8::2]:40000;" in header(headers, "Via")


def test_branch_call_id_and_tag_are_unique_and_rfc3261_branch() -> None:
    requests = [build() for _ in range(500)]
    assert len({r.branch for r in requests}) == 500
    assert len({r.call_id for r in requests}) == 500
    assert len({r.from_tag for r in requests}) == 500
    assert all(r.branch.startswith("z9hG4bK") and len(r.branch) > 16 for r in requests)


@pytest.mark.parametrize(
    "user",
    ["a\r\nX-Injected: 1", "a b", "a\nb", "a\rb", "", "a@b", "a>b", "<a", "a:b", 'a"b', "x" * 200, "é", "\x00"],
)
def test_hostile_user_is_rejected(user: str) -> None:
    with pytest.raises(SipValueError):
        build(user=user)
    with pytest.raises(SipValueError):
        build(from_user=user)
    with pytest.raises(SipValueError):
        ProbeTarget("203.0.113.10", user=user)


@pytest.mark.parametrize(
    "host",
    [
        "evil.example\r\nX-Injected: 1",
        "a b",
        "",
        "host\n",
        "-leading.example",
        "a..b",
        "[::1",
        "[example.com]",
        "host;transport=udp",
        "user@host",
        "host:5060",
        "x" * 300,
        "a" * 64 + ".example",
        "exa_mple.com",
    ],
)
def test_hostile_host_is_rejected(host: str) -> None:
    with pytest.raises(SipValueError):
        build(host=host)
    with pytest.raises(SipValueError):
        ProbeTarget(host)


def test_other_caller_values_are_validated() -> None:
    with pytest.raises(SipValueError):
        build(user_agent="ua\r\nX: 1")
    with pytest.raises(SipValueError):
        build(port=0)
    with pytest.raises(SipValueError):
        build(port=65536)
    with pytest.raises(SipValueError):
        build(cseq=0)
    with pytest.raises(SipValueError):
        build(local_host="10.0.0.5\r\n")
    with pytest.raises(SipValueError):
        ProbeTarget("203.0.113.10", port=70000)
    with pytest.raises(SipValueError):
        probe_options(ProbeTarget("127.0.0.1"), 1.0, local_host="not-an-ip")
    with pytest.raises(ValueError, match="timeout"):
        probe_options(ProbeTarget("127.0.0.1"), 0)
    with pytest.raises(ValueError, match="timeout"):
        probe_options(ProbeTarget("127.0.0.1"), float("nan"))


def test_validators_accept_legitimate_values() -> None:
    assert validate_user("+14155550100") == "+14155550100"
    assert validate_user("agent%20one") == "agent%20one"
    assert validate_host("sip.rtc.elevenlabs.io") == "sip.rtc.elevenlabs.io"
    assert validate_host("52.1.2.3") == "52.1.2.3"
    assert validate_host("[2001:db8::1]") == "[2001:db8::1]"
    target = ProbeTarget("sip.example.net", transport="tls")  # type: ignore[arg-type]
    assert target.transport is Transport.TLS
    assert target.effective_port == 5061
    assert ProbeTarget("sip.example.net").effective_port == 5060


# --------------------------------------------------------------------------------------------------
# Parsing real-world responses

ASTERISK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:40000;rport=40000;received=198.51.100.7;branch=z9hG4bKPj1b2c3d4e\r\n"
    b"Call-ID: 5f0c2a8e1d7b4c39a6e0b1f2d3c4e5f6\r\n"
    b"From: <sip:probe@10.0.0.5>;tag=8a1f2e3d4c5b6a79\r\n"
    b"To: <sip:203.0.113.10>;tag=z9hG4bKPj1b2c3d4e\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b"Accept: application/sdp, application/simple-message-summary, application/dialog-info+xml, "
    b"application/xpidf+xml, application/cpim-pidf+xml, application/pidf+xml, message/sipfrag;version=2.0\r\n"
    b"Allow: OPTIONS, REGISTER, SUBSCRIBE, NOTIFY, PUBLISH, INVITE, ACK, BYE, CANCEL, UPDATE, PRACK, "
    b"MESSAGE, REFER\r\n"
    b"Supported: 100rel, timer, replaces, norefersub, histinfo\r\n"
    b"Accept-Encoding: identity\r\n"
    b"Accept-Language: en\r\n"
    b"Server: Asterisk PBX 22.0.0\r\n"
    b"Content-Length:  0\r\n"
    b"\r\n"
)

ASTERISK_401 = (
    b"SIP/2.0 401 Unauthorized\r\n"
    b"Via: SIP/2.0/TCP 10.0.0.5:51234;rport=51234;received=198.51.100.7;branch=z9hG4bKabc\r\n"
    b"Call-ID: abc123\r\n"
    b"From: <sip:probe@10.0.0.5>;tag=f1\r\n"
    b"To: <sip:agent@203.0.113.10>;tag=z9hG4bKabc\r\n"
    b"CSeq: 1 OPTIONS\r\n"
    b'WWW-Authenticate: Digest realm="asterisk",nonce="1718033256/4e8c",opaque="1a2b",'
    b'algorithm=MD5,qop="auth"\r\n'
    b"Server: Asterisk PBX 22.0.0\r\n"
    b"Content-Length:  0\r\n"
    b"\r\n"
)


def test_asterisk_200_ok_to_options() -> None:
    response = parse_response(ASTERISK_200)
    assert response.status_code == 200
    assert response.reason == "OK"
    assert response.call_id == "5f0c2a8e1d7b4c39a6e0b1f2d3c4e5f6"
    assert (response.cseq, response.cseq_method) == (1, "OPTIONS")
    assert response.branch == "z9hG4bKPj1b2c3d4e"
    assert response.server == "Asterisk PBX 22.0.0"
    assert "INVITE" in (response.header("allow") or "")
    assert response.header("SUPPORTED") == "100rel, timer, replaces, norefersub, histinfo"
    assert response.header(
        "accept",
    ).startswith("application/sdp")  # type: ignore[union-attr]
    assert response.header("content-length") == "0"
    assert response.body == b""
    via = response.vias[0]
    assert (via.transport, via.host, via.port) == ("UDP", "10.0.0.5", 40000)
    assert via.param("received") == "198.51.100.7"
    assert via.param("rport") == "40000"
    assert not response.is_provisional


def test_asterisk_401_with_www_authenticate() -> None:
    response = parse_response(ASTERISK_401, stream=True)
    assert (response.status_code, response.reason) == (401, "Unauthorized")
    challenge = response.header("www-authenticate")
    assert challenge is not None
    assert challenge.startswith('Digest realm="asterisk"')
    assert 'qop="auth"' in challenge
    assert response.vias[0].transport == "TCP"


def test_compact_header_forms() -> None:
    raw = (
        b"SIP/2.0 200 OK\r\n"
        b"v: SIP/2.0/UDP 10.0.0.5:40000;branch=z9hG4bKc1;rport=40000\r\n"
        b"i: compact-call-id@host\r\n"
        b"f: <sip:probe@10.0.0.5>;tag=1\r\n"
        b"t: <sip:203.0.113.10>;tag=2\r\n"
        b"CSeq: 3 OPTIONS\r\n"
        b"k: timer\r\n"
        b"l: 4\r\n"
        b"\r\n"
        b"abcd"
    )
    response = parse_response(raw)
    assert response.call_id == "compact-call-id@host"
    assert response.branch == "z9hG4bKc1"
    assert response.header("From") == "<sip:probe@10.0.0.5>;tag=1"
    assert response.header("t") == "<sip:203.0.113.10>;tag=2"
    assert response.header("Content-Length") == "4"
    assert response.header("supported") == "timer"
    assert response.body == b"abcd"


def test_folded_lines_and_case_insensitive_names() -> None:
    raw = (
        b"sip/2.0 200 OK\r\n"
        b"VIA: SIP/2.0/UDP 10.0.0.5:40000\r\n"
        b"  ;branch=z9hG4bKfold\r\n"
        b"cAlL-iD: folded\r\n"
        b"FROM: <sip:probe@10.0.0.5>;tag=1\r\n"
        b"to: <sip:203.0.113.10>\r\n"
        b"cseq: 1 OPTIONS\r\n"
        b"Server: Some\r\n"
        b"\tLong Server Name\r\n"
        b"\r\n"
    )
    response = parse_response(raw)
    assert response.branch == "z9hG4bKfold"
    assert response.call_id == "folded"
    assert response.server == "Some Long Server Name"


def test_missing_content_length_on_udp_takes_rest_as_body() -> None:
    raw = ASTERISK_200.replace(b"Content-Length:  0\r\n", b"") + b"v=0\r\n"
    response = parse_response(raw)
    assert response.header("content-length") is None
    assert response.body == b"v=0\r\n"
    with pytest.raises(SipParseError):
        parse_response(raw, stream=True)


def test_udp_bytes_beyond_content_length_are_discarded() -> None:
    response = parse_response(ASTERISK_200 + b"trailing junk")
    assert response.body == b""
    with pytest.raises(SipParseError):
        parse_response(ASTERISK_200 + b"trailing junk", stream=True)


def test_multiple_vias_in_separate_and_comma_separated_headers() -> None:
    raw = ASTERISK_200.replace(
        b"Call-ID:",
        b"Via: SIP/2.0/TCP proxy.example.net;branch=z9hG4bK2, SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bK3\r\n"
        b"Call-ID:",
    )
    response = parse_response(raw)
    assert [v.transport for v in response.vias] == ["UDP", "TCP", "TLS"]
    assert [v.host for v in response.vias] == ["10.0.0.5", "proxy.example.net", "2001:db8::9"]
    assert [v.port for v in response.vias] == [40000, None, 5061]
    assert response.branch == "z9hG4bKPj1b2c3d4e"
    assert len(response.header_values("v")) == 2


def test_bare_lf_leading_crlf_and_empty_reason_are_tolerated() -> None:
    response = parse_response(b"\r\n\r\n" + ASTERISK_200.replace(b"\r\n", b"\n"))
    assert response.status_code == 200
    no_reason = parse_response(ASTERISK_200.replace(b"200 OK", b"200"))
    assert (no_reason.status_code, no_reason.reason) == (200, "")


def test_server_falls_back_to_user_agent() -> None:
    response = parse_response(ASTERISK_200.replace(b"Server:", b"User-Agent:"))
    assert response.server == "Asterisk PBX 22.0.0"
    assert parse_response(ASTERISK_200.replace(b"Server: Asterisk PBX 22.0.0\r\n", b"")).server is None


def test_provisional_response() -> None:
    response = parse_response(ASTERISK_200.replace(b"200 OK", b"100 Trying"))
    assert response.is_provisional


# --------------------------------------------------------------------------------------------------
# Matching


def test_response_matches_only_its_own_request() -> None:
    request = build()
    assert response_matches(request, parse_response(reply(request)))
    assert not response_matches(request, parse_response(reply(request, call_id="someone-else")))
    assert not response_matches(build(), parse_response(reply(request)))  # other branch and Call-ID
    wrong_cseq = reply(request).replace(b"CSeq: 1 OPTIONS", b"CSeq: 2 OPTIONS")
    assert not response_matches(request, parse_response(wrong_cseq))
    wrong_method = reply(request).replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    assert not response_matches(request, parse_response(wrong_method))
    wrong_branch = reply(request).replace(request.branch.encode(), b"z9hG4bKother")
    assert not response_matches(request, parse_response(wrong_branch))


# --------------------------------------------------------------------------------------------------
# Malformed input

HEAD = b"SIP/2.0 200 OK\r\n"
VIA = b"Via: SIP/2.0/UDP 10.0.0.5:40000;branch=z9hG4bKx\r\n"
REST = b"Call-ID: c\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 OPTIONS\r\n"
GOOD = HEAD + VIA + REST + b"Content-Length: 0\r\n\r\n"

MALFORMED: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("only CRLF", b"\r\n\r\n"),
    ("no blank line", HEAD + VIA + REST),
    ("request not response", GOOD.replace(HEAD, b"OPTIONS sip:a@b SIP/2.0\r\n")),
    ("HTTP status line", GOOD.replace(b"SIP/2.0 200", b"HTTP/1.1 200")),
    ("SIP/3.0", GOOD.replace(b"SIP/2.0 200", b"SIP/3.0 200")),
    ("two-digit status", GOOD.replace(b" 200 ", b" 20 ")),
    ("status 700", GOOD.replace(b" 200 ", b" 700 ")),
    ("status 099", GOOD.replace(b" 200 ", b" 099 ")),
    ("non-digit status", GOOD.replace(b" 200 ", b" 2x0 ")),
    ("missing Via", GOOD.replace(VIA, b"")),
    ("missing Call-ID", GOOD.replace(b"Call-ID: c\r\n", b"")),
    ("missing CSeq", GOOD.replace(b"CSeq: 1 OPTIONS\r\n", b"")),
    ("missing From", GOOD.replace(b"From: <sip:a@b>;tag=1\r\n", b"")),
    ("missing To", GOOD.replace(b"To: <sip:c@d>\r\n", b"")),
    ("empty Call-ID", GOOD.replace(b"Call-ID: c", b"Call-ID:")),
    ("Call-ID with space", GOOD.replace(b"Call-ID: c", b"Call-ID: c d")),
    ("duplicate Call-ID", GOOD.replace(b"Call-ID: c\r\n", b"Call-ID: c\r\ni: d\r\n")),
    ("CSeq without method", GOOD.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1")),
    ("CSeq non-numeric", GOOD.replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")),
    ("CSeq too big", GOOD.replace(b"CSeq: 1 OPTIONS", b"CSeq: 4294967296 OPTIONS")),
    ("negative Content-Length", GOOD.replace(b"Content-Length: 0", b"Content-Length: -1")),
    ("hex Content-Length", GOOD.replace(b"Content-Length: 0", b"Content-Length: 0x10")),
    ("huge Content-Length", GOOD.replace(b"Content-Length: 0", b"Content-Length: 99999999")),
    ("Content-Length beyond body", GOOD.replace(b"Content-Length: 0", b"Content-Length: 10")),
    ("two Content-Lengths", GOOD.replace(b"Content-Length: 0\r\n", b"Content-Length: 0\r\nl: 0\r\n")),
    ("header without colon", GOOD.replace(b"To: <sip:c@d>", b"To <sip:c@d>")),
    ("space in header name", GOOD.replace(b"To:", b"T o:")),
    ("continuation before headers", HEAD + b" folded\r\n" + VIA + REST + b"\r\n"),
    ("NUL in header", GOOD.replace(b"Call-ID: c", b"Call-ID: c\x00")),
    ("bare CR in header", GOOD.replace(b"Call-ID: c", b"Call-ID: c\rX: y")),
    ("escape character", GOOD.replace(b"To: <sip:c@d>", b"To: <sip:c@d>\x1b[31m")),
    ("invalid UTF-8", GOOD.replace(b"To: <sip:c@d>", b"To: <sip:\xff\xfe@d>")),
    ("Via not SIP/2.0", GOOD.replace(b"SIP/2.0/UDP", b"SIP/1.0/UDP")),
    ("Via without host", GOOD.replace(VIA, b"Via: SIP/2.0/UDP\r\n")),
    ("Via port 0", GOOD.replace(b"10.0.0.5:40000", b"10.0.0.5:0")),
    ("Via port 99999", GOOD.replace(b"10.0.0.5:40000", b"10.0.0.5:99999")),
    ("Via garbage after host", GOOD.replace(b"10.0.0.5:40000;", b"10.0.0.5:40000 junk;")),
    ("Via unterminated quote", GOOD.replace(b"branch=z9hG4bKx", b'branch=z9hG4bKx;x="open')),
    ("Via empty param", GOOD.replace(b";branch=z9hG4bKx", b";;branch=z9hG4bKx")),
    ("Via empty element", GOOD.replace(b"branch=z9hG4bKx", b"branch=z9hG4bKx,")),
    ("oversized", GOOD + b"x" * 70_000),
    ("too many headers", GOOD.replace(b"\r\n\r\n", b"\r\n" + b"X-A: 1\r\n" * 300 + b"\r\n")),
    ("blank line inside headers (mixed)", HEAD + VIA + b"\r\n\n" + REST + b"\r\n"),
]


def test_malformed_corpus_is_large_enough() -> None:
    assert len(MALFORMED) >= 20
    parse_response(GOOD)  # the base the corpus mutates really is valid


@pytest.mark.parametrize("raw", [raw for _, raw in MALFORMED], ids=[name for name, _ in MALFORMED])
def test_malformed_response_raises_sip_parse_error(raw: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_response(raw, stream=b"Content-Length" in raw)


def test_non_bytes_input_raises_sip_parse_error() -> None:
    with pytest.raises(SipParseError):
        parse_response("SIP/2.0 200 OK\r\n\r\n")  # type: ignore[arg-type]


def test_random_mutations_only_ever_raise_sip_parse_error() -> None:
    """Any other exception fails; both outcomes are counted so the fuzz is shown to reach each."""
    rng = random.Random(3261)
    outcomes = {"parsed": 0, "refused": 0}
    alphabet = b'\r\n :;,"<>@=\t\x00\xff0123456789SIPVvia/z'
    for _ in range(3000):
        data = bytearray(rng.choice([GOOD, ASTERISK_200, ASTERISK_401]))
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(len(data) + 1)
            action = rng.randrange(3)
            if action == 0 and data:
                del data[pos : pos + rng.randint(1, 10)]
            elif action == 1:
                data[pos:pos] = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
            elif data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
        for stream in (False, True):
            try:
                parse_response(bytes(data), stream=stream)
                outcomes["parsed"] += 1
            except SipParseError:
                outcomes["refused"] += 1
            with contextlib.suppress(SipParseError):
                SipStreamFramer().feed(bytes(data))
    assert outcomes["parsed"] > 300, outcomes
    assert outcomes["refused"] > 3000, outcomes


# --------------------------------------------------------------------------------------------------
# Stream framing


def test_framer_splits_coalesced_and_fragmented_messages() -> None:
    body = ASTERISK_200.replace(b"Content-Length:  0", b"Content-Length: 5") + b"hello"
    stream = b"\r\n\r\n" + ASTERISK_401 + body + ASTERISK_200
    framer = SipStreamFramer()
    assert framer.feed(stream) == [ASTERISK_401, body, ASTERISK_200]

    framer = SipStreamFramer()
    messages = [m for i in range(len(stream)) for m in framer.feed(stream[i : i + 1])]
    assert messages == [ASTERISK_401, body, ASTERISK_200]
    assert parse_response(messages[1], stream=True).body == b"hello"


def test_framer_requires_content_length_and_bounds_size() -> None:
    with pytest.raises(SipParseError):
        SipStreamFramer().feed(ASTERISK_200.replace(b"Content-Length:  0\r\n", b""))
    with pytest.raises(SipParseError):
        SipStreamFramer(max_message_bytes=1024).feed(b"SIP/2.0 200 OK\r\nX: " + b"a" * 2000)
