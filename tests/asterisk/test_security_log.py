"""Brute-force detection end to end: repeated failed digest authentication against the product's rendered
gateway (real Asterisk 22) writes security events that the product's rendered fail2ban filter matches,
with the attacker's address as the host to ban, over TCP and over TLS.

fail2ban itself runs only as ``fail2ban-regex`` against the instance's security log: nothing is banned.
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.asterisk import AsteriskInstance
from support.gateway import load_example, merge, render_gateway
from support.sipp import TlsTunnel, auth_field, free_port, run_sipp, write_injection

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
    settings, secrets = load_example("minimal")
    overrides: dict[str, Any] = {
        "network": {
            "bind_address": "127.0.0.1",
            "sip_port": sip_port,
            "tls_port": tls_port,
            "local_nets": ["10.0.0.0/16"],
            "rtp_port_start": 33700,
            "rtp_port_end": 33798,
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
        settings = merge(settings, {"tls": {"cert_file": f"{keys}/gw.crt", "key_file": f"{keys}/gw.key"}})
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
    text = log.read_text()
    wanted = f'RemoteAddress="IPV4/{transport.upper()}/{ATTACKER}/'
    failures = [line for line in text.splitlines() if "ChallengeResponseFailed" in line and wanted in line]
    assert len(failures) >= ATTEMPTS, text
    # Then the product's fail2ban filter matches every failure, and the host to ban is the attacker
    ips, report = fail2ban_ips(gateway.rendered.files["fail2ban/filter.d/asterisk-sip-trunk.conf"], log, tmp_path)
    assert len(ips) >= ATTEMPTS, f"{len(ips)} matches; failed-auth lines were:\n" + "\n".join(failures) + report
    assert set(ips) == {ATTACKER}, report
