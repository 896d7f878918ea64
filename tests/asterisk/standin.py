"""A local stand-in for the ElevenLabs Agents SIP trunk, for calls through the real gateway.

Design (the simplest one that lets the BYE-to-Contact proof fail):

* **The holder**: a second Asterisk (``sip_trunk_local/standin`` configs) bound to
  ``HOLDER_IP`` (127.0.0.3), TCP only, no registrar module (a REGISTER finds nothing to accept it).
  It challenges every INVITE and identifies the caller only by digest user name (the gateway's
  ``outbound_username``), routes only the imported number with its ``+`` (anything else: 404 from the
  empty match), offers ulaw/alaw/g722 only, answers and echoes audio. It places calls into the gateway
  with the gateway's ``inbound_username`` and password (``channel originate PJSIP/<exten>@to-gateway``).
  Its 200 OK's Contact names the holder address, because that is the transport it sends from.
* **The shared address**: :class:`SharedAddress`, a small TCP front door on ``SHARED_IP`` (127.0.0.2), the
  address the gateway's ElevenLabs host name resolves to (``hosts_file`` maps the name for the gateway
  instance only, through a bind mount in its private mount namespace). It relays each new INVITE
  transaction (and the ACK of a non-2xx answer) to the holder, relays the answers back, and — like
  ElevenLabs' shared SIP address — answers any other in-dialog request with **481** (an in-dialog ACK is
  dropped). So ACK and BYE sent to the Contact of the 200 OK reach the holder and end the call with 200,
  while a gateway that rewrites the Contact to the packet source sends them here and gets 481.

Everything listens on loopback with ports chosen per test.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sip_trunk_local import topology
from sip_trunk_local.asterisk_runner import hosts_file as hosts_file  # re-exported: the tests import it from here
from sip_trunk_local.asterisk_runner import use_private_hosts as use_private_hosts
from sip_trunk_local.standin import CONFIG_DIR as STANDIN_CONFIG_DIR
from support.asterisk import AsteriskInstance
from support.rtp import rtp_range
from support.sipp import free_port

CONFIG_DIR = STANDIN_CONFIG_DIR  # the same files local mode's stand-in runs
SHARED_IP = "127.0.0.2"
HOLDER_IP = "127.0.0.3"
ELEVENLABS_HOST = topology.ELEVENLABS_HOST

AsteriskFactory = Callable[..., AsteriskInstance]


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.2) -> bool:
    """Poll ``predicate`` until it returns something true or ``timeout`` seconds pass; its last verdict."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# ------------------------------------------------------------------------------------------------ SIP
_HEADER_ALIASES = {"v": "via", "f": "from", "t": "to", "i": "call-id", "l": "content-length"}


@dataclass
class SipMessage:
    raw: bytes
    start: str
    headers: list[tuple[str, str]]

    @property
    def is_request(self) -> bool:
        return not self.start.startswith("SIP/2.0")

    @property
    def method(self) -> str:
        return self.start.split(" ", 1)[0] if self.is_request else ""

    @property
    def status(self) -> int:
        return 0 if self.is_request else int(self.start.split(" ")[1])

    def get(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name]

    def first(self, name: str) -> str:
        values = self.get(name)
        return values[0] if values else ""

    @property
    def to_tag(self) -> str | None:
        m = re.search(r";\s*tag=([^;>\s]+)", self.first("to"))
        return m.group(1) if m else None

    @property
    def cseq_method(self) -> str:
        parts = self.first("cseq").split()
        return parts[1] if len(parts) > 1 else ""


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode(errors="replace").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # folded header line
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
            continue
        if ":" not in line:
            continue
        name, value = line.split(":", 1)
        name = name.strip().lower()
        headers.append((_HEADER_ALIASES.get(name, name), value.strip()))
    return lines[0], headers


class SipStream:
    """Split a TCP byte stream into SIP messages (Content-Length framing, keep-alive CRLFs skipped)."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> list[SipMessage]:
        self.buffer += data
        out: list[SipMessage] = []
        while True:
            stripped = self.buffer.lstrip(b"\r\n")
            if len(stripped) != len(self.buffer):
                self.buffer = stripped
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return out
            start, headers = _parse_head(self.buffer[:end])
            length = int(dict(headers).get("content-length", "0") or 0)
            total = end + 4 + length
            if len(self.buffer) < total:
                return out
            out.append(SipMessage(self.buffer[:total], start, headers))
            self.buffer = self.buffer[total:]


def response_481(request: SipMessage) -> bytes:
    """The answer of a SIP server to an in-dialog request for a dialog it does not hold."""
    lines = ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    lines += [f"Via: {v}" for v in request.get("via")]
    for name, label in (("from", "From"), ("to", "To"), ("call-id", "Call-ID"), ("cseq", "CSeq")):
        lines.append(f"{label}: {request.first(name)}")
    lines += ["Server: elevenlabs-standin-shared", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


@dataclass
class SharedAddress:
    """The shared SIP address in front of the holder (see the module docstring). TCP only.

    ``events`` records what it did: ``("relay", start line)`` for requests passed to the holder,
    ``("481", start line)`` for in-dialog requests it refused and ``("drop", start line)`` for in-dialog
    ACKs it swallowed.
    """

    listen: tuple[str, int]
    holder: tuple[str, int]
    events: list[tuple[str, str]] = field(default_factory=list)
    _server: socket.socket | None = field(default=None, init=False, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False, repr=False)
    _sockets: list[socket.socket] = field(default_factory=list, init=False, repr=False)
    _closed: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    # to-tags of non-2xx final answers to INVITE: their ACK belongs to the INVITE transaction
    _failed_tags: set[str] = field(default_factory=set, init=False, repr=False)

    def start(self) -> SharedAddress:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(16)
        server.settimeout(0.2)
        self._server = server
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _record(self, action: str, msg: SipMessage) -> None:
        with self._lock:
            self.events.append((action, msg.start))

    def _accept_loop(self) -> None:
        assert self._server is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.holder, timeout=5, source_address=(self.listen[0], 0))
            except OSError:
                conn.close()
                continue
            upstream.settimeout(None)
            self._sockets += [conn, upstream]
            self._spawn(self._from_client, conn, upstream)
            self._spawn(self._from_holder, upstream, conn)

    def _from_client(self, conn: socket.socket, upstream: socket.socket) -> None:
        stream = SipStream()
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                for msg in stream.feed(data):
                    if not msg.is_request:
                        upstream.sendall(msg.raw)
                        continue
                    tag = msg.to_tag
                    if tag is None or (msg.method == "ACK" and tag in self._failed_tags):
                        self._record("relay", msg)
                        upstream.sendall(msg.raw)
                    elif msg.method == "ACK":
                        self._record("drop", msg)
                    else:
                        self._record("481", msg)
                        conn.sendall(response_481(msg))
        self._close(conn, upstream)

    def _from_holder(self, upstream: socket.socket, conn: socket.socket) -> None:
        stream = SipStream()
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                for msg in stream.feed(data):
                    if not msg.is_request and msg.cseq_method == "INVITE" and msg.status >= 300 and msg.to_tag:
                        self._failed_tags.add(msg.to_tag)
                conn.sendall(data)
        self._close(conn, upstream)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def stop(self) -> None:
        self._closed.set()
        if self._server is not None:
            self._server.close()
        self._close(*self._sockets)
        for thread in self._threads:
            thread.join(timeout=2)

    def refused(self) -> list[tuple[str, str]]:
        with self._lock:
            return [e for e in self.events if e[0] in ("481", "drop")]

    def __enter__(self) -> SharedAddress:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------------------------- stand-in
@dataclass
class Standin:
    """A running stand-in: the holder Asterisk and the shared address in front of it."""

    inst: AsteriskInstance
    shared: SharedAddress
    holder_port: int
    rtp_range: tuple[int, int]
    e164: str

    @property
    def shared_port(self) -> int:
        return self.shared.listen[1]

    def agent_calls(self) -> list[str]:
        """The Request-URI users of the calls the agent took (one log line per call)."""
        return re.findall(r"STANDIN-AGENT-CALL ruri_user=(\S*)", self.inst.log_text("messages"))

    def agent_call_endpoints(self) -> list[tuple[str, str]]:
        """(Request-URI user, stand-in endpoint) of each call an agent took: the endpoint is the one the
        gateway's digest user name identified, so it says which credentials the INVITE carried."""
        return re.findall(r"STANDIN-AGENT-CALL ruri_user=(\S*) .*endpoint=(\S*)", self.inst.log_text("messages"))

    def originate(self, exten: str, endpoint: str = "to-gateway") -> str:
        """Call ``exten`` on the gateway as the agent does (asynchronous)."""
        out = self.inst.rx(f"channel originate PJSIP/{exten}@{endpoint} extension echo@agent-outbound")
        if "No such command" in out:
            raise RuntimeError(out)
        return out

    def agent_headers(self) -> list[dict[str, str]]:
        """The X- headers (and From) of each call the agent took, as the stand-in logged them."""
        found = re.findall(r"STANDIN-AGENT-HEADERS (.*)$", self.inst.log_text("messages"), re.M)
        return [dict(re.findall(r"(\w+)=(.*?)(?= \w+=|$)", line)) for line in found]

    def refer(self, target: str) -> None:
        """The agent asks for a blind transfer: a REFER with ``Refer-To: target`` on its one call."""
        self.inst.rx(f"dialplan set global REFER_TARGET {target}")
        channels = re.findall(r"^(PJSIP/\S+?)!", self.inst.rx("core show channels concise"), re.M)
        if len(channels) != 1:
            raise RuntimeError(f"the agent should hold exactly one call, not {channels}")
        self.inst.rx(f"channel redirect {channels[0]} agent-refer,s,1")

    def refer_results(self) -> list[tuple[str, str]]:
        """(TRANSFERSTATUS, SIP code) of each REFER the agent sent: the final NOTIFY's or the refusal's."""
        return re.findall(r"STANDIN-REFER-RESULT status=(\S*) protocol=(\S*)", self.inst.log_text("messages"))

    def channel_count(self) -> int:
        out = self.inst.rx("core show channels count")
        m = re.search(r"(\d+) active channels?", out)
        return int(m.group(1)) if m else -1

    def stop(self) -> None:
        self.shared.stop()


def start_standin(
    asterisk_factory: AsteriskFactory,
    *,
    e164: str,
    gateway_out: tuple[str, str],
    gateway_in: tuple[str, str],
    gateway_addr: tuple[str, int],
    name: str | None = None,
    extra_pjsip: str = "",
    numbers: tuple[str, ...] = (),
    extra_dialplan: str = "",
) -> Standin:
    """Start the holder Asterisk and the shared address in front of it.

    ``gateway_out`` = (user, password) the gateway authenticates with when it calls the agent;
    ``gateway_in`` = (user, password) the agent uses to call the gateway at ``gateway_addr``.
    ``numbers`` are further numbers imported with the ``gateway_out`` credentials (each has an agent that
    answers); numbers with other credentials need an endpoint in ``extra_pjsip`` whose context, in
    ``extra_dialplan``, sends only them to ``agent-answer``.
    """
    holder_port = free_port(HOLDER_IP)
    shared_port = free_port(SHARED_IP)
    rtp = rtp_range()
    variables = {
        "HOLDER_IP": HOLDER_IP,
        "SIP_PORT": str(holder_port),
        "RTP_START": str(rtp[0]),
        "RTP_END": str(rtp[1]),
        "E164": e164,
        "GATEWAY_OUT_USER": gateway_out[0],
        "GATEWAY_OUT_PASSWORD": gateway_out[1],
        "GATEWAY_IN_USER": gateway_in[0],
        "GATEWAY_IN_PASSWORD": gateway_in[1],
        "GATEWAY_IP": gateway_addr[0],
        "GATEWAY_PORT": str(gateway_addr[1]),
    }
    extra = {"standin_extra.conf": extra_pjsip} if extra_pjsip else {}
    if numbers:
        extra["standin_numbers.conf"] = "".join(f"exten => {n},1,Goto(agent-answer,${{EXTEN}},1)\n" for n in numbers)
    if extra_dialplan:
        extra["standin_extra_dialplan.conf"] = extra_dialplan
    inst = asterisk_factory(CONFIG_DIR, name=name, variables=variables, extra_files=extra)
    shared = SharedAddress((SHARED_IP, shared_port), (HOLDER_IP, holder_port)).start()
    return Standin(inst=inst, shared=shared, holder_port=holder_port, rtp_range=rtp, e164=e164)
