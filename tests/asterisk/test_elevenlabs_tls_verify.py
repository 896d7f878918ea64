"""The gateway verifies ElevenLabs' certificate on its outbound TLS connection (real Asterisk 22).

The gateway is rendered with transport tls and dials ``sip.rtc.elevenlabs.io`` (mapped to 127.0.0.1 for the
gateway instance only, ``hosts_file``). The far end is a TLS server on loopback that records the name the client
asked for (SNI), whether the client went on after the handshake, the request lines and each INVITE's SDP, and
refuses each request with 503. Its certificate comes from a test CA the gateway trusts through
``tls.ca_list_file`` (in production the settings' default: the host's system bundle), from a CA nobody trusts, or
from the trusted CA for another name.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from standin import ELEVENLABS_HOST, hosts_file, use_private_hosts, wait_for
from support.asterisk import AsteriskInstance
from support.certificates import TestCa
from support.gateway import load_example, loopback_network, merge, render_gateway
from support.rtp import rtp_range
from support.sipp import free_port

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

GATEWAY_IP = "127.0.0.1"
GATEWAY_NAME = "sip.gateway.example"


@dataclass
class SipTlsFarEnd:
    """ElevenLabs' SIP address over TLS: handshakes with one certificate, answers every request with 503."""

    cert_file: Path
    key_file: Path
    server_names: list[str | None] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    offers: list[str] = field(default_factory=list)
    """The SDP of each INVITE."""
    refused: list[str] = field(default_factory=list)
    """Connections the client ended before sending a request: in the handshake (the alert it sent) or right after
    it (pjsip completes the handshake, then checks the verification result and closes)."""

    def __post_init__(self) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert_file, self.key_file)
        self.context.sni_callback = lambda _s, name, _c: self.server_names.append(name)  # type: ignore[assignment,func-returns-value]
        self._listener = socket.create_server((GATEWAY_IP, 0))
        self._listener.settimeout(0.2)  # so `close` is seen: closing does not wake a blocked accept
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._serve, name="far-end-tls", daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._connection, args=(conn,), daemon=True)
            self._threads.append(worker)
            worker.start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                tls = self.context.wrap_socket(conn, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                self.refused.append(f"handshake: {exc}")  # the client aborted: it refused the certificate
                return
            with tls:
                buffer, seen = b"", len(self.requests)
                while not self._stop.is_set():
                    try:
                        chunk = tls.recv(65536)
                    except (OSError, ssl.SSLError) as exc:
                        chunk, reason = b"", str(exc)
                    else:
                        reason = "closed"
                    if not chunk:
                        if len(self.requests) == seen:
                            self.refused.append(f"after the handshake: {reason}")
                        return
                    buffer += chunk
                    while b"\r\n\r\n" in buffer:
                        head, rest = buffer.split(b"\r\n\r\n", 1)
                        lines = head.decode(errors="replace").split("\r\n")
                        length = next(
                            (int(ln.split(":", 1)[1]) for ln in lines if ln.lower().startswith("content-length:")), 0
                        )
                        if len(rest) < length:
                            break  # the body is still on its way
                        body, buffer = rest[:length], rest[length:]
                        if lines[0].startswith("INVITE "):
                            self.offers.append(body.decode(errors="replace"))
                        self.requests.append(lines[0])
                        if lines[0].startswith(("ACK ", "SIP/2.0")):
                            continue
                        copied = [ln for ln in lines[1:] if ln.split(":", 1)[0].lower() in _MIRRORED]
                        answer = "\r\n".join(["SIP/2.0 503 Service Unavailable", *copied, "Content-Length: 0"])
                        tls.sendall(answer.encode() + b"\r\n\r\n")

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=10)


_MIRRORED = {"via", "from", "to", "call-id", "cseq"}


@pytest.fixture
def far_ends() -> Iterator[list[SipTlsFarEnd]]:
    started: list[SipTlsFarEnd] = []
    yield started
    for far_end in started:
        far_end.close()


def start_gateway(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    ca: TestCa,
    far_end: SipTlsFarEnd,
    *,
    elevenlabs: dict[str, Any] | None = None,
    **tls: Any,
) -> AsteriskInstance:
    """A gateway rendered with transport tls towards ``far_end`` (as ``sip.rtc.elevenlabs.io``), trusting ``ca``."""
    settings, secrets = load_example("minimal")
    gw = asterisk_factory(None, start=False)
    keys = f"{gw.chroot_base}/etc/keys"
    gw_cert, gw_key = ca.issue(GATEWAY_NAME)
    settings = merge(
        settings,
        {
            "elevenlabs": {"transport": "tls", "port": far_end.port, **(elevenlabs or {})},
            "tls": {
                "enabled": True,
                "cert_file": f"{keys}/gw.crt",
                "key_file": f"{keys}/gw.key",
                "ca_list_file": f"{keys}/ca.crt",
                **tls,
            },
            "network": {
                **loopback_network(GATEWAY_IP, free_port(GATEWAY_IP), rtp_range(), tls_port=free_port(GATEWAY_IP)),
                "public_hostname": GATEWAY_NAME,
            },
        },
    )
    rendered = render_gateway(settings, secrets, tmp_path / "gateway")
    # the test places the call from the CLI (`channel originate`), a module the product does not load
    modules = rendered.asterisk_dir / "modules.conf"
    modules.write_text(modules.read_text() + "load = res_clioriginate.so\n")
    gw.config_dir = rendered.asterisk_dir
    gw.extra_files = {
        "keys/gw.crt": gw_cert.read_bytes(),
        "keys/gw.key": gw_key.read_bytes(),
        "keys/ca.crt": ca.ca_file.read_bytes(),
        "hosts": hosts_file({ELEVENLABS_HOST: GATEWAY_IP}),
    }
    use_private_hosts(gw)
    gw.start()
    return gw


def call_elevenlabs(gw: AsteriskInstance, far_end: SipTlsFarEnd) -> bool:
    """The gateway places a call to the agent's number; True once the far end saw a request or a refusal."""
    out = gw.rx("channel originate PJSIP/+14155550100@elevenlabs application Wait 1")
    assert "No such command" not in out, out
    return wait_for(lambda: far_end.requests or far_end.refused, timeout=15)


def test_a_far_end_with_a_certificate_the_gateway_trusts_gets_the_invite_with_its_name(
    asterisk_factory: AsteriskFactory, tmp_path: Path, far_ends: list[SipTlsFarEnd]
) -> None:
    # Given ElevenLabs' address presenting a certificate for sip.rtc.elevenlabs.io from a CA the gateway trusts
    ca = TestCa(tmp_path / "ca")
    far_end = SipTlsFarEnd(*ca.issue(ELEVENLABS_HOST))
    far_ends.append(far_end)
    gw = start_gateway(asterisk_factory, tmp_path, ca, far_end)
    # When the gateway calls the agent
    assert call_elevenlabs(gw, far_end)
    # Then the INVITE arrives over TLS, and the gateway asked for ElevenLabs' name
    assert wait_for(lambda: any(r.startswith("INVITE sip:+14155550100@") for r in far_end.requests), timeout=10)
    assert far_end.refused == []
    assert far_end.server_names[0] == ELEVENLABS_HOST


REASONS = {
    "untrusted-ca": "The certificate is untrusted",
    "wrong-name": "The server identity does not match to any identities specified in the certificate",
}
"""What Asterisk 22 (its bundled pjproject) logs when it refuses the far end's certificate."""


@pytest.mark.parametrize("presented", sorted(REASONS))
def test_a_far_end_the_gateway_cannot_verify_never_gets_the_invite(
    asterisk_factory: AsteriskFactory, tmp_path: Path, far_ends: list[SipTlsFarEnd], presented: str
) -> None:
    """Negative control of the test above: the same call to a certificate from another CA, or from the trusted
    CA for another name, ends with the connection: pjsip completes the handshake, finds the verification failed,
    logs why and closes it before any request. Its own control: with ``verify_server: false`` the wrong-name
    certificate gets the INVITE, so the refusal is the verification's."""
    # Given ElevenLabs' address presenting a certificate the gateway cannot verify
    ca = TestCa(tmp_path / "ca")
    if presented == "untrusted-ca":
        cert = TestCa(tmp_path / "other-ca", name="Untrusted Root CA").issue(ELEVENLABS_HOST)
    else:
        cert = ca.issue("sip.elsewhere.example")
    far_end = SipTlsFarEnd(*cert)
    far_ends.append(far_end)
    gw = start_gateway(asterisk_factory, tmp_path, ca, far_end)

    assert call_elevenlabs(gw, far_end)

    # Then the gateway closed the connection without a request, saying why
    reason = REASONS[presented]
    wanted = f"Transport 'transport-tls' to remote '{ELEVENLABS_HOST}' - 127.0.0.1:{far_end.port} - {reason}"
    assert wait_for(lambda: wanted in gw.log_text("messages"), timeout=10), gw.log_text("messages")[-3000:]
    assert far_end.refused, far_end
    assert far_end.requests == []

    if presented == "wrong-name":
        unverified = SipTlsFarEnd(*cert)
        far_ends.append(unverified)
        gw2 = start_gateway(asterisk_factory, tmp_path / "unverified", ca, unverified, verify_server=False)
        assert call_elevenlabs(gw2, unverified)
        assert wait_for(lambda: any(r.startswith("INVITE ") for r in unverified.requests), timeout=10)


@pytest.mark.parametrize("mode", ["disabled", "allowed", "required"])
def test_the_gateway_offers_srtp_to_elevenlabs_as_the_outbound_setting_says(
    asterisk_factory: AsteriskFactory, tmp_path: Path, far_ends: list[SipTlsFarEnd], mode: str
) -> None:
    """Outbound media encryption (gateway -> ElevenLabs) on the real offer: required = SDES only (RTP/SAVP with
    a key), allowed = optimistic SDES (RTP/AVP with a key, plain RTP accepted), disabled = no key. The inbound
    direction is set to the opposite extreme, so an outbound endpoint rendered from the wrong direction fails
    (the negative control: with ``media_encryption_outbound`` ignored, "required" offers no key)."""
    ca = TestCa(tmp_path / "ca")
    far_end = SipTlsFarEnd(*ca.issue(ELEVENLABS_HOST))
    far_ends.append(far_end)
    other = "disabled" if mode == "required" else "required"
    gw = start_gateway(
        asterisk_factory, tmp_path, ca, far_end,
        elevenlabs={"media_encryption_outbound": mode, "media_encryption_inbound": other},
    )  # fmt: skip
    assert call_elevenlabs(gw, far_end)
    assert wait_for(lambda: far_end.offers, timeout=10), far_end
    offer = far_end.offers[0]
    media = next(line for line in offer.splitlines() if line.startswith("m=audio"))
    assert ("RTP/SAVP" in media) is (mode == "required"), offer
    assert ("a=crypto:" in offer) is (mode != "disabled"), offer
