"""probe_options against tiny SIP responders on 127.0.0.1 (UDP, TCP, TLS)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sip_trunk.sip import (
    OptionsSession,
    ProbeErrorKind,
    ProbeResult,
    ProbeTarget,
    SipStreamFramer,
    Transport,
    probe_options,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LOOPBACK = "127.0.0.1"
SLACK_S = 0.3

# A handler gets the request bytes and how many requests came before it; it returns the replies.
Handler = Callable[[bytes, int], list[bytes]]


def request_headers(raw: bytes) -> dict[str, str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode()
    return {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in head.split("\r\n")[1:])}


def make_reply(raw: bytes, status: str, *, call_id: str | None = None, branch: str | None = None) -> bytes:
    headers = request_headers(raw)
    via = headers["via"]
    if branch is not None:
        via = via.rsplit("branch=", 1)[0] + f"branch={branch}"
    lines = [
        f"SIP/2.0 {status}",
        f"Via: {via};received=127.0.0.1",
        f"From: {headers['from']}",
        f"To: {headers['to']};tag=resp1",
        f"Call-ID: {call_id or headers['call-id']}",
        f"CSeq: {headers['cseq']}",
        "Allow: OPTIONS, INVITE, ACK, BYE, CANCEL",
        "Server: test-responder/1.0",
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(status: str = "200 OK") -> Handler:
    return lambda raw, _index: [make_reply(raw, status)]


@dataclass
class Responder:
    """One SIP peer in a thread; records what it received and when."""

    transport: Transport
    handler: Handler
    tls: ssl.SSLContext | None = None
    requests: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    sources: list[tuple[str, int]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    hang_up_after: frozenset[int] = frozenset()  # requests (0-based) after whose replies a stream is closed

    def __post_init__(self) -> None:
        kind = socket.SOCK_DGRAM if self.transport is Transport.UDP else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind((LOOPBACK, 0))
        if kind == socket.SOCK_STREAM:
            self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        run = self._serve_udp if self.transport is Transport.UDP else self._serve_stream
        self.thread = threading.Thread(target=run, name=f"responder-{self.transport}", daemon=True)
        self.thread.start()

    @property
    def target(self) -> ProbeTarget:
        return ProbeTarget(LOOPBACK, port=self.port, transport=self.transport)

    def _record(self, raw: bytes, source: tuple[str, int]) -> list[bytes]:
        index = len(self.requests)
        self.requests.append(raw)
        self.arrivals.append(time.monotonic())
        self.sources.append(source)
        return self.handler(raw, index)

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                raw, source = self.sock.recvfrom(65_535)
            except TimeoutError:
                continue
            for reply in self._record(raw, source):
                self.sock.sendto(reply, source)

    def _serve_stream(self) -> None:
        while not self._stop.is_set():
            try:
                conn, source = self.sock.accept()
            except TimeoutError:
                continue
            try:
                conn.settimeout(2.0)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else ~40 ms delayed-ACK stalls
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                conn.settimeout(0.05)
                self._serve_connection(conn, source)
            except (OSError, ssl.SSLError) as exc:
                self.errors.append(exc)
            finally:
                conn.close()

    def _serve_connection(self, conn: socket.socket, source: tuple[str, int]) -> None:
        framer = SipStreamFramer()
        while not self._stop.is_set():
            try:
                chunk = conn.recv(65_536)
            except TimeoutError:
                continue
            if not chunk:
                return
            for raw in framer.feed(chunk):
                index = len(self.requests)
                replies = self._record(raw, source)
                if replies:
                    conn.sendall(b"".join(replies))  # several replies in one segment tests framing
                if index in self.hang_up_after:
                    return

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.sock.close()
        assert not self.thread.is_alive()


@pytest.fixture
def responders() -> Iterator[Callable[..., Responder]]:
    started: list[Responder] = []

    def start(
        transport: Transport, handler: Handler, tls: ssl.SSLContext | None = None, hang_up_after: Iterable[int] = ()
    ) -> Responder:
        responder = Responder(transport, handler, tls, hang_up_after=frozenset(hang_up_after))
        started.append(responder)
        return responder

    yield start
    for responder in started:
        responder.close()


@dataclass
class Certs:
    ca_file: Path
    server: ssl.SSLContext
    sni: list[str | None]


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    """A throwaway CA and a leaf for localhost/127.0.0.1, so verification can be exercised for real."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sip-trunk test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address(LOOPBACK))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file = tmp_path / "server.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = tmp_path / "server.key"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    sni: list[str | None] = []

    def remember_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sni.append(name)

    server.sni_callback = remember_sni
    return Certs(ca_file, server, sni)


def closed_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def timed_probe(target: ProbeTarget, timeout_s: float, **kwargs: object) -> tuple[ProbeResult, float]:
    start = time.monotonic()
    result = probe_options(target, timeout_s, **kwargs)  # type: ignore[arg-type]
    return result, time.monotonic() - start


def assert_answered(result: ProbeResult, status: int = 200) -> None:
    assert result.reachable, result
    assert result.error is None
    assert result.status_code == status
    assert result.server == "test-responder/1.0"
    assert result.address == LOOPBACK
    assert result.rtt_ms is not None
    assert 0 <= result.rtt_ms < 250
    assert result.response is not None
    assert result.response.header("allow") == "OPTIONS, INVITE, ACK, BYE, CANCEL"


# --------------------------------------------------------------------------------------------------
# Answers


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_plain_transports_get_200(responders: Callable[..., Responder], transport: Transport) -> None:
    responder = responders(transport, answer())
    result, took = timed_probe(responder.target, 2.0)
    assert_answered(result)
    assert result.reason == "OK"
    assert result.attempts == 1
    assert took < 1.0
    start_line, *_ = responder.requests[0].split(b"\r\n")
    uri_suffix = b"" if transport is Transport.UDP else b";transport=tcp"
    assert start_line == b"OPTIONS sip:127.0.0.1:%d%s SIP/2.0" % (responder.port, uri_suffix)
    assert f"SIP/2.0/{transport.value.upper()} 127.0.0.1:" in request_headers(responder.requests[0])["via"]


def test_tls_without_verification_gets_200(responders: Callable[..., Responder], certs: Certs) -> None:
    responder = responders(Transport.TLS, answer(), certs.server)
    result, took = timed_probe(responder.target, 2.0, verify=False)
    assert_answered(result)
    assert took < 1.0
    assert b";transport=tls SIP/2.0" in responder.requests[0]
    assert "SIP/2.0/TLS" in request_headers(responder.requests[0])["via"]


def test_tls_verified_against_ca_file_sends_sni(responders: Callable[..., Responder], certs: Certs) -> None:
    responder = responders(Transport.TLS, answer(), certs.server)
    target = ProbeTarget("localhost", port=responder.port, transport=Transport.TLS)
    result, _ = timed_probe(target, 2.0, ca_file=str(certs.ca_file))
    assert_answered(result)
    assert certs.sni == ["localhost"]

    by_ip, _ = timed_probe(responder.target, 2.0, ca_file=str(certs.ca_file))
    assert_answered(by_ip)


def test_tls_untrusted_certificate_is_a_tls_result(responders: Callable[..., Responder], certs: Certs) -> None:
    responder = responders(Transport.TLS, answer(), certs.server)
    result, took = timed_probe(responder.target, 2.0)  # system trust store: the test CA is unknown
    assert not result.reachable
    assert result.error is ProbeErrorKind.TLS
    assert "certificate" in result.detail
    assert took < 1.0
    assert responder.requests == []


def test_udp_retransmits_until_answered(responders: Callable[..., Responder]) -> None:
    responder = responders(Transport.UDP, lambda raw, index: [] if index < 2 else [make_reply(raw, "200 OK")])
    result, took = timed_probe(responder.target, 5.0)
    assert_answered(result)
    assert result.attempts == 3
    assert len(responder.requests) == 3
    assert len(set(responder.requests)) == 1  # a retransmission is byte-identical
    assert 1.4 < took < 1.5 + SLACK_S  # sent at 0, 0.5 and 1.5 s
    assert result.rtt_ms is not None
    assert result.rtt_ms < 100  # measured from the transmission that was answered
    assert 1400 < result.elapsed_ms < 1800


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_provisional_is_skipped_for_the_final_404(responders: Callable[..., Responder], transport: Transport) -> None:
    responder = responders(transport, lambda raw, _i: [make_reply(raw, "100 Trying"), make_reply(raw, "404 Not Found")])
    result, _ = timed_probe(responder.target, 2.0)
    assert_answered(result, 404)
    assert result.reason == "Not Found"


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_foreign_responses_are_ignored(responders: Callable[..., Responder], transport: Transport) -> None:
    responder = responders(
        transport,
        lambda raw, _i: [
            make_reply(raw, "500 Wrong Call", call_id="not-ours"),
            make_reply(raw, "500 Wrong Branch", branch="z9hG4bKnotours"),
            make_reply(raw, "200 OK"),
        ],
    )
    result, _ = timed_probe(responder.target, 2.0)
    assert_answered(result, 200)


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_only_wrong_call_id_means_timeout(responders: Callable[..., Responder], transport: Transport) -> None:
    responder = responders(transport, lambda raw, _i: [make_reply(raw, "200 OK", call_id="not-ours")])
    result, took = timed_probe(responder.target, 0.8)
    assert not result.reachable
    assert result.error is ProbeErrorKind.TIMEOUT
    assert result.status_code is None
    assert took < 0.8 + SLACK_S
    assert responder.requests


# --------------------------------------------------------------------------------------------------
# Failures are results


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """Accepted by the kernel, never served: silent to TCP and stuck before the TLS handshake."""
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen(4)
        yield server.getsockname()[1]


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP, Transport.TLS])
def test_silent_peer_times_out_on_time(
    responders: Callable[..., Responder], silent_listener: int, transport: Transport
) -> None:
    if transport is Transport.UDP:
        target = responders(Transport.UDP, lambda _r, _i: []).target
    else:
        target = ProbeTarget(LOOPBACK, port=silent_listener, transport=transport)
    result, took = timed_probe(target, 1.0, verify=False)
    assert not result.reachable
    assert result.error is ProbeErrorKind.TIMEOUT
    assert 1.0 <= took < 1.0 + SLACK_S
    assert 1000 <= result.elapsed_ms < 1000 + SLACK_S * 1000


def test_udp_retransmission_schedule_doubles(responders: Callable[..., Responder]) -> None:
    responder = responders(Transport.UDP, lambda _r, _i: [])
    result, took = timed_probe(responder.target, 3.8)
    assert result.error is ProbeErrorKind.TIMEOUT
    assert result.attempts == 4  # 0, 0.5, 1.5, 3.5 s
    assert len(responder.arrivals) == 4
    gaps = [b - a for a, b in zip(responder.arrivals, responder.arrivals[1:], strict=False)]
    for gap, expected in zip(gaps, [0.5, 1.0, 2.0], strict=True):
        assert expected - 0.05 < gap < expected + 0.15
    assert took < 3.8 + SLACK_S


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP, Transport.TLS])
def test_closed_port_is_refused(transport: Transport) -> None:
    kind = socket.SOCK_DGRAM if transport is Transport.UDP else socket.SOCK_STREAM
    target = ProbeTarget(LOOPBACK, port=closed_port(kind), transport=transport)
    result, took = timed_probe(target, 2.0, verify=False)
    assert not result.reachable
    assert result.error is ProbeErrorKind.REFUSED
    assert took < 0.5


def test_udp_garbage_only_is_a_parse_result(responders: Callable[..., Responder]) -> None:
    responder = responders(Transport.UDP, lambda _r, _i: [b"HTTP/1.1 400 Bad Request\r\n\r\n"])
    result, took = timed_probe(responder.target, 0.7)
    assert result.error is ProbeErrorKind.PARSE
    assert not result.reachable
    assert took < 0.7 + SLACK_S


def test_tcp_garbage_is_a_parse_result_at_once(responders: Callable[..., Responder]) -> None:
    responder = responders(Transport.TCP, lambda _r, _i: [b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n"])
    result, took = timed_probe(responder.target, 2.0)
    assert result.error is ProbeErrorKind.PARSE
    assert took < 0.5


def test_tcp_peer_hanging_up_is_a_network_result() -> None:
    with socket.socket() as server:
        server.bind((LOOPBACK, 0))
        server.listen(1)
        target = ProbeTarget(LOOPBACK, port=server.getsockname()[1], transport=Transport.TCP)

        def hang_up() -> None:
            conn, _ = server.accept()
            conn.recv(65_536)
            conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        result, took = timed_probe(target, 2.0)
        thread.join(timeout=5)
    assert result.error is ProbeErrorKind.NETWORK
    assert "closed" in result.detail
    assert took < 0.5


# --------------------------------------------------------------------------------------------------
# Addressing


@pytest.mark.parametrize("transport", [Transport.UDP, Transport.TCP])
def test_local_source_address_and_port(responders: Callable[..., Responder], transport: Transport) -> None:
    responder = responders(transport, answer())
    kind = socket.SOCK_DGRAM if transport is Transport.UDP else socket.SOCK_STREAM
    local_port = closed_port(kind)
    result, _ = timed_probe(responder.target, 2.0, local_host=LOOPBACK, local_port=local_port)
    assert_answered(result)
    assert responder.sources[0] == (LOOPBACK, local_port)
    assert f"127.0.0.1:{local_port};rport;branch=" in request_headers(responder.requests[0])["via"]


def test_hostname_is_resolved_to_ipv4(responders: Callable[..., Responder]) -> None:
    responder = responders(Transport.UDP, answer())
    result, _ = timed_probe(ProbeTarget("localhost", port=responder.port), 2.0)
    assert_answered(result)


def test_ipv6_target_is_a_resolve_result_without_sending() -> None:
    result, took = timed_probe(ProbeTarget("::1", port=closed_port(socket.SOCK_DGRAM)), 1.0)
    assert not result.reachable
    assert result.error is ProbeErrorKind.RESOLVE
    assert result.attempts == 0
    assert took < 0.1


# --------------------------------------------------------------------------------------------------
# A kept connection (OptionsSession): what the standby's watch-peer probes the primary with


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_session_probes_over_one_connection(
    responders: Callable[..., Responder], certs: Certs, transport: Transport
) -> None:
    # Given a peer over TCP or TLS
    tls = certs.server if transport is Transport.TLS else None
    responder = responders(transport, answer(), tls)
    # When a session probes it five times
    with OptionsSession(responder.target, ca_file=str(certs.ca_file)) as session:
        results = [session.probe(1.0) for _ in range(5)]
        assert session.connected
    # Then every probe is answered, all over the one connection the session opened
    for result in results:
        assert_answered(result)
        assert result.attempts == 1
    assert len(responder.requests) == 5
    assert len(set(responder.sources)) == 1
    assert session.connections == 1
    assert not session.connected  # closed on leaving the block
    assert len({request_headers(r)["call-id"] for r in responder.requests}) == 5  # five transactions


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_session_reconnects_within_the_probe_when_the_kept_connection_was_closed(
    responders: Callable[..., Responder], certs: Certs, transport: Transport
) -> None:
    # Given a peer that closes the connection after answering the first probe (as a restarted Asterisk would)
    tls = certs.server if transport is Transport.TLS else None
    responder = responders(transport, answer(), tls, hang_up_after=[0])
    with OptionsSession(responder.target, ca_file=str(certs.ca_file)) as session:
        first = session.probe(1.0)
        # When the next probe finds the kept connection closed
        second = session.probe(1.0)
        # Then that same probe asks again on a new connection and is answered
        assert_answered(first)
        assert_answered(second)
        assert second.attempts == 2
        assert session.connections == 2
    assert len(set(responder.sources)) == 2


def test_session_timeout_is_a_failure_and_the_next_probe_reconnects(responders: Callable[..., Responder]) -> None:
    # Given a peer that leaves the second request unanswered
    responder = responders(Transport.TCP, lambda raw, i: [] if i == 1 else [make_reply(raw, "200 OK")])
    with OptionsSession(responder.target) as session:
        results = [session.probe(0.5) for _ in range(3)]
    # Then the silent probe is a timeout (not retried: a hung peer is down) and the next one uses a new connection
    assert [r.reachable for r in results] == [True, False, True]
    assert results[1].error is ProbeErrorKind.TIMEOUT
    assert results[1].attempts == 1
    assert session.connections == 2
    assert len(responder.requests) == 3
    assert responder.sources[0] == responder.sources[1] != responder.sources[2]


def test_session_skips_requests_the_peer_sends_on_the_kept_connection(responders: Callable[..., Responder]) -> None:
    # Given a peer that sends a request of its own (a keep-alive OPTIONS) ahead of its answer
    own = b"OPTIONS sip:probe@127.0.0.1 SIP/2.0\r\nCall-ID: theirs\r\nCSeq: 7 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    responder = responders(Transport.TCP, lambda raw, _i: [b"\r\n\r\n", own, make_reply(raw, "200 OK")])
    with OptionsSession(responder.target) as session:
        results = [session.probe(1.0) for _ in range(2)]
    for result in results:
        assert_answered(result)
    assert session.connections == 1


@pytest.mark.parametrize("transport", [Transport.TCP, Transport.TLS])
def test_session_to_a_closed_port_is_refused_and_keeps_nothing(transport: Transport) -> None:
    target = ProbeTarget(LOOPBACK, port=closed_port(socket.SOCK_STREAM), transport=transport)
    with OptionsSession(target, verify=False) as session:
        result = session.probe(1.0)
        assert result.error is ProbeErrorKind.REFUSED
        assert result.attempts == 0
        assert not session.connected
        assert session.connections == 0


def test_session_over_udp_probes_each_time(responders: Callable[..., Responder]) -> None:
    responder = responders(Transport.UDP, answer("404 Not Found"))
    with OptionsSession(responder.target) as session:
        results = [session.probe(1.0) for _ in range(2)]
        assert not session.connected
    for result in results:
        assert_answered(result, 404)
    assert session.connections == 0


def test_session_rejects_a_bad_timeout(responders: Callable[..., Responder]) -> None:
    responder = responders(Transport.TCP, answer())
    with OptionsSession(responder.target) as session, pytest.raises(ValueError, match="positive"):
        session.probe(0)
