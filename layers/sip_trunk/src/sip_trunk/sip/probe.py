"""The OPTIONS probe: send one request to a peer over UDP, TCP or TLS and report what came back.

Network outcomes are results (`ProbeResult`), never exceptions: a health check wants a verdict.
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

from sip_trunk.sip.message import (
    DEFAULT_FROM_USER,
    DEFAULT_USER_AGENT,
    MAX_MESSAGE_BYTES,
    OptionsRequest,
    SipParseError,
    SipValueError,
    Transport,
    build_options,
    validate_host,
    validate_port,
    validate_text,
    validate_user,
)
from sip_trunk.sip.parse import SipResponse, SipStreamFramer, parse_response, response_matches

__all__ = [
    "T1_S",
    "T2_S",
    "OptionsSession",
    "ProbeErrorKind",
    "ProbeResult",
    "ProbeTarget",
    "probe_options",
]

T1_S = 0.5
"""RFC 3261 T1: first retransmission interval over UDP."""
T2_S = 4.0
"""RFC 3261 T2: cap of the doubling interval for non-INVITE requests (Timer E)."""


class ProbeErrorKind(StrEnum):
    """Why no final response arrived; strings so they go straight into logs and metrics."""

    TIMEOUT = "timeout"
    REFUSED = "refused"
    TLS = "tls"
    PARSE = "parse"
    RESOLVE = "resolve"
    NETWORK = "network"


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
            validate_port(self.port, "port")
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


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    """A client context as ElevenLabs' side holds one: TLS 1.2 at least; verifying against the system store
    (or `ca_file`, which tests and local mode set) with the host name checked, unless `verify` is False."""
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


class _StreamErrors:
    """Map socket, TLS and framing errors of a stream probe to `_Failure`s naming the phase they happened in."""

    def __init__(self) -> None:
        self.phase = "connect"

    def __enter__(self) -> _StreamErrors:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None or isinstance(exc, _Failure):
            return
        if isinstance(exc, SipParseError):
            raise _Failure(ProbeErrorKind.PARSE, str(exc)) from None
        if isinstance(exc, TimeoutError):
            raise _Failure(ProbeErrorKind.TIMEOUT, f"timed out during {self.phase}") from None
        if isinstance(exc, ConnectionRefusedError):
            raise _Failure(ProbeErrorKind.REFUSED, "connection refused") from None
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise _Failure(ProbeErrorKind.TLS, f"certificate rejected: {exc.verify_message}") from None
        if isinstance(exc, OSError):  # ssl.SSLError included
            tls = self.phase == "tls" or isinstance(exc, ssl.SSLError)
            raise _Failure(ProbeErrorKind.TLS if tls else ProbeErrorKind.NETWORK, f"{self.phase}: {exc}") from None


def _open_stream(run: _Run, address: str, context: ssl.SSLContext | None) -> socket.socket:
    """Connect (and shake hands) within the probe's deadline; the caller owns the returned socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Without it Nagle holds the request behind the handshake's last flight for a delayed ACK (~40 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = sock
    errors = _StreamErrors()
    try:
        with errors:
            if run.local_host is not None or run.local_port:
                sock.bind((run.local_host or "0.0.0.0", run.local_port))
            sock.settimeout(run.remaining())
            sock.connect((address, run.target.effective_port))
            if context is not None:
                errors.phase = "tls"
                server_name = run.target.host.strip("[]")
                conn = context.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)
                conn.settimeout(run.remaining())
                conn.do_handshake()
    except BaseException:
        conn.close()
        sock.close()
        raise
    return conn


def _exchange(run: _Run, conn: socket.socket, framer: SipStreamFramer) -> ProbeResult:
    """Send one OPTIONS on an open connection and read until its final response (others are skipped)."""
    with _StreamErrors() as errors:
        errors.phase = "sip"
        request = run.request(conn)
        conn.settimeout(run.remaining())
        sent = time.monotonic()
        conn.sendall(request.raw)
        run.attempts += 1
        while True:
            conn.settimeout(run.remaining())
            chunk = conn.recv(65_536)
            if not chunk:
                raise _Failure(ProbeErrorKind.NETWORK, "connection closed before a final response")
            received = time.monotonic()
            for message in framer.feed(chunk):
                if not message.startswith(b"SIP/"):
                    continue  # a request from the peer on a kept connection is not our answer
                response = parse_response(message, stream=True)
                if response_matches(request, response) and not response.is_provisional:
                    return run.answered(response, sent, received)


def _probe_stream(run: _Run, address: str, context: ssl.SSLContext | None) -> ProbeResult:
    conn = _open_stream(run, address, context)
    try:
        return _exchange(run, conn, SipStreamFramer())
    finally:
        conn.close()


def _check_arguments(
    timeout_s: float, from_user: str, user_agent: str, local_port: int = 0, local_host: str | None = None
) -> None:
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise ValueError(f"timeout_s must be a number: {timeout_s!r}")
    if not math.isfinite(timeout_s) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive and finite: {timeout_s!r}")
    validate_user(from_user, "from_user")
    validate_text(user_agent, "user_agent")
    validate_port(local_port, "local_port", allow_zero=True)
    if local_host is not None:
        try:
            ipaddress.IPv4Address(local_host)
        except ValueError:
            raise SipValueError(f"local_host must be an IPv4 address: {local_host!r}") from None


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
    _check_arguments(timeout_s, from_user, user_agent, local_port, local_host)
    context = tls_context(verify, ca_file) if target.transport is Transport.TLS else None

    start = time.monotonic()
    run = _Run(target, start, start + timeout_s, local_host, local_port, from_user, user_agent)
    try:
        run.address = _resolve_ipv4(target.host, target.effective_port, run)
        if target.transport is Transport.UDP:
            return _probe_udp(run, run.address)
        return _probe_stream(run, run.address, context)
    except _Failure as failure:
        return run.failed(failure)


class OptionsSession:
    """Probe one peer again and again over one kept TCP or TLS connection (UDP: one datagram exchange each).

    A watcher that probed with a new connection each time would break calls on an Asterisk 22 peer:
    res_pjsip's idle-connection check schedules a timer per accepted connection, keyed by the transport's
    name, and pjsip names a transport after its memory address, which the next connection reuses. Each short
    probe connection therefore leaves a timer that, Timer B (32 s) later, shuts down whichever connection then
    holds the name and has not sent a request yet — typically a caller that connected and is about to send
    its INVITE. One kept connection accepted once leaves one timer, which finds its own connection active.

    The connection is dropped on any failure and opened again by the next probe. When a *kept* connection
    turns out to be closed, reset or broken (the peer restarted since the last probe), the same probe tries once
    more on a new connection, so the verdict still says whether the peer answers now; a timeout is not retried
    (the deadline has passed, and a peer that accepts but does not answer is down).
    """

    def __init__(
        self,
        target: ProbeTarget,
        *,
        verify: bool = True,
        ca_file: str | None = None,
        from_user: str = DEFAULT_FROM_USER,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        validate_user(from_user, "from_user")
        validate_text(user_agent, "user_agent")
        self.target = target
        self._verify, self._ca_file = verify, ca_file
        self._from_user, self._user_agent = from_user, user_agent
        self._context = tls_context(verify, ca_file) if target.transport is Transport.TLS else None
        self._conn: socket.socket | None = None
        self._framer = SipStreamFramer()
        self._address: str | None = None
        self.connections = 0
        """Connections opened so far (what the peer sees as new transports)."""

    def __enter__(self) -> OptionsSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn, self._address = None, None
        self._framer = SipStreamFramer()

    def probe(self, timeout_s: float) -> ProbeResult:
        """One OPTIONS, never past `timeout_s`; network outcomes are results, as with `probe_options`."""
        if self.target.transport is Transport.UDP:
            return probe_options(
                self.target,
                timeout_s,
                verify=self._verify,
                ca_file=self._ca_file,
                from_user=self._from_user,
                user_agent=self._user_agent,
            )
        _check_arguments(timeout_s, self._from_user, self._user_agent)
        start = time.monotonic()
        run = _Run(self.target, start, start + timeout_s, None, 0, self._from_user, self._user_agent)
        kept = self._conn is not None
        try:
            try:
                return self._exchange(run)
            except _Failure as failure:
                self.close()
                if not kept or failure.kind is ProbeErrorKind.TIMEOUT:
                    raise
            return self._exchange(run)  # the kept connection had gone; ask once on a new one
        except _Failure as failure:
            self.close()
            return run.failed(failure)

    def _exchange(self, run: _Run) -> ProbeResult:
        if self._conn is None:
            self._address = _resolve_ipv4(self.target.host, self.target.effective_port, run)
            run.address = self._address
            self._conn = _open_stream(run, self._address, self._context)
            self._framer = SipStreamFramer()
            self.connections += 1
        run.address = self._address
        return _exchange(run, self._conn, self._framer)
