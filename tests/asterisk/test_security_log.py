"""Brute-force detection end to end: repeated failed digest authentication against the product's rendered
gateway (real Asterisk 22) writes security events that the product's rendered fail2ban filter matches,
with the attacker's address as the host to ban, over TCP and over TLS.

fail2ban itself runs only as ``fail2ban-regex`` against the instance's security log: nothing is banned.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.asterisk import AsteriskInstance, module_load_lines
from support.gateway import load_example, merge, render_gateway
from support.rtp import RtpCounter, rtp_range
from support.sipp import Sipp, TlsTunnel, auth_field, free_media_port, free_port, run_sipp, write_injection

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

ATTACKER = "127.0.0.2"
ATTEMPTS = 6
EXT_SECRET_REF = "ssm:/demo/sip/ext-1001"
DEBIAN_FILTERS = Path("/etc/fail2ban/filter.d")


def _self_signed(directory: Path, ip: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class SourceBoundTlsTunnel(TlsTunnel):
    """The harness's socat TLS tunnel, its outgoing TLS connection bound to the attacker's address."""

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[-1] += f",bind={ATTACKER}"
        return cmd


def fail2ban_ips(rendered_filter: bytes, log: Path, workdir: Path) -> tuple[list[str], str]:
    """Run ``fail2ban-regex`` with our filter next to Debian's shipped ``asterisk`` filter it extends;
    returns the host of every matched line and the full report."""
    filter_dir = workdir / "filter.d"
    filter_dir.mkdir(parents=True)
    for shipped in ("asterisk.conf", "common.conf"):
        shutil.copyfile(DEBIAN_FILTERS / shipped, filter_dir / shipped)
    ours = filter_dir / "asterisk-sip-trunk.conf"
    ours.write_bytes(rendered_filter)
    ips = subprocess.run(
        ["fail2ban-regex", "-o", "ip", str(log), str(ours)], capture_output=True, text=True, check=False, timeout=60
    )
    report = subprocess.run(
        ["fail2ban-regex", "--print-all-matched", str(log), str(ours)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert ips.returncode == 0, ips.stderr
    return ips.stdout.split(), report.stdout + report.stderr


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_failed_auth_from_one_source_is_matched_by_rendered_fail2ban_filter(
    asterisk_factory: AsteriskFactory, tmp_path: Path, transport: str
) -> None:
    if shutil.which("fail2ban-regex") is None:
        pytest.fail("fail2ban is not installed: apt-get install -y fail2ban", pytrace=False)
    sip_port, tls_port = free_port(), free_port()
    # a range from the reserved pool: a fixed one could take in the SIP ports the kernel just handed out
    rtp_start, rtp_end = rtp_range()
    settings, secrets = load_example("minimal")
    overrides: dict[str, Any] = {
        "network": {
            "bind_address": "127.0.0.1",
            "sip_port": sip_port,
            "tls_port": tls_port,
            "local_nets": ["10.0.0.0/16"],
            "rtp_port_start": rtp_start,
            "rtp_port_end": rtp_end,
        },
        "extensions": [{"number": "1001", "password": EXT_SECRET_REF, "video": False}],
    }
    if transport == "tls":
        overrides["tls"] = {"enabled": True}
    settings = merge(settings, overrides)
    secrets = {**secrets, EXT_SECRET_REF: "the-right-Password-1"}
    # Given the rendered gateway (TLS with a certificate of its own when testing TLS)
    ast = asterisk_factory(None, start=False)
    if transport == "tls":
        keys = f"{ast.chroot_base}/etc/keys"
        tls = {"cert_file": f"{keys}/gw.crt", "key_file": f"{keys}/gw.key", "ca_list_file": f"{keys}/gw.crt"}
        settings = merge(settings, {"tls": tls})
    gateway = render_gateway(settings, secrets, tmp_path / "gw")
    ast.config_dir = gateway.asterisk_dir
    if transport == "tls":
        cert, key = _self_signed(tmp_path, "127.0.0.1")
        ast.extra_files = {"keys/gw.crt": cert, "keys/gw.key": key}
    ast.start()
    users = write_injection(tmp_path / "users.csv", [["1001", auth_field("1001", "a-wrong-Guess")]])

    def attack(remote: str) -> None:
        result = run_sipp(
            "uac_auth_pcap.xml",
            tmp_path / "sipp",
            remote=remote,
            transport="t1",
            local_ip=ATTACKER,
            service="800",
            inject=users,
            calls=ATTEMPTS,
            rate=20,
            duration_ms=500,
            timeout=40,
        )
        # every attempt was refused
        assert result.successful == 0, result.describe()
        assert result.failed == ATTEMPTS, result.describe()

    # When one source tries a wrong password again and again
    if transport == "tls":
        with SourceBoundTlsTunnel(("127.0.0.1", free_port()), ("127.0.0.1", tls_port), verify=False) as tunnel:
            attack(f"127.0.0.1:{tunnel.listen[1]}")
    else:
        attack(f"127.0.0.1:{sip_port}")
    log = ast.log_file("security")
    wanted = f'RemoteAddress="IPV4/{transport.upper()}/{ATTACKER}/'

    def failures() -> list[str]:
        text = log.read_text() if log.exists() else ""
        return [line for line in text.splitlines() if "ChallengeResponseFailed" in line and wanted in line]

    # Asterisk's logger thread writes the security events after the responses went out: the last attempt's
    # line can still be on its way when sipp has ended
    deadline = time.monotonic() + 10
    while len(failures()) < ATTEMPTS and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(failures()) >= ATTEMPTS, log.read_text()
    # Then the product's fail2ban filter matches every failure, and the host to ban is the attacker
    ips, report = fail2ban_ips(gateway.rendered.files["fail2ban/filter.d/asterisk-sip-trunk.conf"], log, tmp_path)
    assert len(ips) >= ATTEMPTS, f"{len(ips)} matches; failed-auth lines were:\n" + "\n".join(failures()) + report
    assert set(ips) == {ATTACKER}, report


# --------------------------------------------------------------------------- TLS transport + SRTP (SDES)

TLS_PEER = Path(__file__).parent / "configs" / "tls-peer"
CALLED = "+14155550111"


def _issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, common_name: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for 127.0.0.1 signed by ``ca`` (or a CA certificate when ``ca`` is None)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca[0].subject if ca else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(ca[1] if ca else key, hashes.SHA256()), key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _wait_up(ast: AsteriskInstance, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "!Up!" in ast.rx("core show channels concise"):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    ("gateway_mode", "peer_offer"),
    [("required", "sdes"), ("required", "no"), ("allowed", "sdes"), ("allowed", "no")],
)
def test_tls_call_media_encryption(
    asterisk_factory: AsteriskFactory,
    rtp_counter: Callable[..., RtpCounter],
    tmp_path: Path,
    gateway_mode: str,
    peer_offer: str,
) -> None:
    ca = _issue(None, "aws-sip-trunk test CA")
    gw_cert, gw_key = _pem(*_issue(ca, "gateway"))
    peer_cert, peer_key = _pem(*_issue(ca, "peer"))
    ca_pem = ca[0].public_bytes(serialization.Encoding.PEM)
    sip_port, tls_port, peer_tls_port, uas_port = free_port(), free_port(), free_port(), free_port()
    gw_rtp, peer_rtp = rtp_range(), rtp_range()
    # Given the rendered gateway: ElevenLabs over TLS with media_encryption=<mode>, and a carrier "pstn"
    # (a sipp UAS echoing plain RTP) the agent may call through the outbound allowlist
    settings, secrets = load_example("minimal")
    gw = asterisk_factory(None, start=False, name=f"p4-gw-{gateway_mode}-{peer_offer}")
    keys = f"{gw.chroot_base}/etc/keys"
    settings = merge(
        settings,
        {
            # the inbound direction's own setting; the other direction's (unused here) is left at disabled, so an
            # inbound endpoint rendered from the wrong setting takes plain RTP and fails the 488 case
            "elevenlabs": {
                "transport": "tls",
                "media_encryption": "disabled",
                "media_encryption_inbound": gateway_mode,
            },
            "tls": {
                "enabled": True,
                "cert_file": f"{keys}/gw.crt",
                "key_file": f"{keys}/gw.key",
                "ca_list_file": f"{keys}/ca.crt",
            },
            "network": {
                "bind_address": "127.0.0.1",
                "public_hostname": "sip.gateway.example",  # required with transport tls
                "sip_port": sip_port,
                "tls_port": tls_port,
                "rtp_port_start": gw_rtp[0],
                "rtp_port_end": gw_rtp[1],
            },
            "carriers": [
                {
                    "name": "pstn",
                    "host": "127.0.0.2",
                    "port": uas_port,
                    "transport": "tcp",
                    "auth": "ip",
                    "match": ["127.0.0.2/32"],
                }
            ],
            "dialplan": {"outbound_allowlist": ["+1415"], "outbound_carrier": "pstn"},
        },
    )
    gateway = render_gateway(settings, secrets, tmp_path / "gw")
    # (the carrier listens before the gateway boots and qualifies it)
    uas = Sipp(
        "net_uas_answer.xml",
        tmp_path / "uas",
        transport="t1",
        local_ip="127.0.0.2",
        local_port=uas_port,
        media_port=free_media_port("127.0.0.2"),
        rtp_echo=True,
        global_timeout_s=60,
        # answer the gateway's qualify OPTIONS, so the carrier counts as reachable
        extra_args=["-aa"],
    ).start()
    gw.config_dir = gateway.asterisk_dir
    gw.extra_files = {"keys/gw.crt": gw_cert, "keys/gw.key": gw_key, "keys/ca.crt": ca_pem}
    try:
        gw.start()
    except BaseException:
        uas.stop()
        raise
    # ... and a second Asterisk as the ElevenLabs side, offering SRTP (sdes) or plain RTP (no) over TLS
    peer = asterisk_factory(None, start=False, name=f"p4-peer-{gateway_mode}-{peer_offer}")
    peer_keys = f"{peer.chroot_base}/etc/keys"
    peer.config_dir = TLS_PEER
    peer.variables = {
        "MODULE_LOADS": "\n".join(module_load_lines()),
        "RTP_START": str(peer_rtp[0]),
        "RTP_END": str(peer_rtp[1]),
        "TLS_PORT": str(peer_tls_port),
        "KEYS": peer_keys,
        "MEDIA_ENCRYPTION": peer_offer,
        "GATEWAY_TLS_PORT": str(tls_port),
        "AUTH_USER": settings["elevenlabs"]["inbound_username"],
        "AUTH_PASSWORD": secrets[settings["elevenlabs"]["inbound_password"]],
    }
    peer.extra_files = {"keys/peer.crt": peer_cert, "keys/peer.key": peer_key, "keys/ca.crt": ca_pem}
    peer.start()
    peer.rx("pjsip set logger on")
    counter = rtp_counter(peer_rtp)
    try:
        # When the agent side calls a PSTN number through the gateway, playing audio
        originate = peer.rx(f"channel originate PJSIP/{CALLED}@gateway application Playback demo-congrats")
        assert "No such command" not in originate, originate
        answered = _wait_up(peer, timeout=10)
        time.sleep(2.5 if answered else 0)
        counts = counter.counts()
        peer.rx("channel request hangup all")
        time.sleep(0.5)
    finally:
        uas.stop()
    trace = peer.log_text("full")
    assert gw.log_has("security", re.escape(f"IPV4/TLS/127.0.0.1/{tls_port}")), "the call did not use the TLS transport"
    answer = trace.split("SIP/2.0 200 OK", 1)[1].split("<---", 1)[0] if "SIP/2.0 200 OK" in trace else ""
    if gateway_mode == "required" and peer_offer == "no":
        # Then a plain-RTP offer is refused with 488, and no audio flows
        assert not answered, trace[-6000:]
        assert "SIP/2.0 488 Not Acceptable Here" in trace, trace[-6000:]
        assert counts.to_range == 0, counts
        return
    # Then the call is up over TLS, with SRTP exactly when the peer offered it, and audio flows both ways
    assert answered, trace[-6000:]
    assert "m=audio" in answer, trace[-6000:]
    if peer_offer == "sdes":
        assert "RTP/SAVP" in answer, answer
        assert "a=crypto:" in answer, answer
    else:
        assert "RTP/AVP" in answer, answer
        assert "a=crypto" not in answer, answer
    assert counts.from_range >= 50, f"the peer sent too little audio: {counts}"
    assert counts.to_range >= 50, f"the echoed audio did not come back to the peer: {counts}"
