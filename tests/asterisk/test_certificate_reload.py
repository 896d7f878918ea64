"""A renewed certificate reaches new TLS connections of a real Asterisk 22 without ending the ones it has.

`sip_trunk.agent.certificate.install` and `reload_tls` are what `renew-cert` runs after certbot (ADR-40); here they
replace a TLS transport's certificate and key in a running instance.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from sip_trunk.agent import certificate
from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.runtime import AsteriskCli
from support.asterisk import AsteriskInstance
from support.sipp import free_port
from test_harness import MINIMAL, AsteriskFactory, minimal_variables

pytestmark = pytest.mark.asterisk


def _self_signed(directory: Path, name: str) -> tuple[bytes, bytes]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_bytes(), key.read_bytes()


def _connect(port: int) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the test reads which certificate is presented, it does not trust it
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))


def _presented(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    name = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return str(name)


def _options_answered(sock: ssl.SSLSocket, port: int) -> bool:
    branch = "z9hG4bK-cert-reload"
    request = (
        f"OPTIONS sip:127.0.0.1:{port};transport=tls SIP/2.0\r\n"
        f"Via: SIP/2.0/TLS 127.0.0.1:5099;branch={branch}\r\n"
        "Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=1\r\nTo: <sip:127.0.0.1>\r\n"
        "Call-ID: cert-reload@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    sock.sendall(request.encode())
    return sock.recv(4096).startswith(b"SIP/2.0 ")


def _tls_gateway(asterisk_factory: AsteriskFactory, cert: bytes, key: bytes) -> tuple[AsteriskInstance, int]:
    """A started Asterisk whose TLS transport on loopback presents ``cert`` from its keys directory."""
    tls_port = free_port()
    ast: AsteriskInstance = asterisk_factory(MINIMAL, variables=minimal_variables(), start=False)
    keys = f"{ast.chroot_base}/etc/keys"
    ast.extra_files = {
        "keys/server.crt": cert,
        "keys/server.key": key,
        "pjsip_extra.conf": (
            "[transport-tls]\ntype = transport\nprotocol = tls\n"
            f"bind = 127.0.0.1:{tls_port}\ncert_file = {keys}/server.crt\npriv_key_file = {keys}/server.key\n"
            "method = tlsv1_2\n"
        ),
    }
    ast.start()
    return ast, tls_port


def test_a_renewed_certificate_is_presented_to_new_connections_and_old_ones_stay(
    asterisk_factory: AsteriskFactory, tmp_path: Path
) -> None:
    # Given an Asterisk whose TLS transport presents certificate "old", and a client connected to it
    old_cert, old_key = _self_signed(tmp_path, "old")
    new_cert, new_key = _self_signed(tmp_path, "new")
    ast, tls_port = _tls_gateway(asterisk_factory, old_cert, old_key)
    held = _connect(tls_port)
    assert _presented(held) == "old"
    config = AgentConfig(
        config_dir=ast.etc_dir,
        tls_cert_file=ast.etc_dir / "keys" / "server.crt",
        tls_key_file=ast.etc_dir / "keys" / "server.key",
        tls_group="root",
    )
    cli = AsteriskCli(["chroot", str(ast.root), "/usr/sbin/asterisk"], ast.conf_path)
    try:
        cli.rx(certificate.RELOAD_COMMAND)  # a reload with nothing changed does not restart the listener
        # (control) new files alone change nothing: Asterisk read the old ones at start
        certificate.install(config, new_cert, new_key)
        with _connect(tls_port) as probe:
            assert _presented(probe) == "old"

        # When the agent reloads as renew-cert does (pjsip.conf unchanged)
        certificate.reload_tls(cli, timeout_s=15)

        # Then a new connection gets the new certificate, and the connection made before still carries SIP
        with _connect(tls_port) as probe:
            assert _presented(probe) == "new"
        assert _options_answered(held, tls_port)
    finally:
        held.close()


def test_the_operators_certificate_from_the_secret_is_served_with_its_chain(
    asterisk_factory: AsteriskFactory, tmp_path: Path
) -> None:
    """ADR-48 on a real Asterisk 22: `install_from_secret` (with the secret's text from a stand-in source) puts the
    operator's leaf and intermediate where the TLS transport reads them and reloads as `renew-cert` does; a client
    that trusts only the root then completes a verified handshake for the host name, which needs the intermediate
    Asterisk sends. Controls: the same client refuses the self-signed certificate before, and the leaf installed
    without its intermediate."""
    import json

    from sip_trunk.agent.certificate_secret import install_from_secret
    from support.certificates import TestCa

    host = "sip.example.com"
    root = TestCa(tmp_path / "root")
    intermediate = TestCa(tmp_path / "intermediate", name="Test Intermediate CA", issuer=root)
    leaf, key = intermediate.leaf_pem(host)
    secrets = [json.dumps({"certificate": leaf, "private_key": key})]  # first without the intermediate
    old_cert, old_key = _self_signed(tmp_path, "old")
    ast, tls_port = _tls_gateway(asterisk_factory, old_cert, old_key)
    config = AgentConfig(
        config_dir=ast.etc_dir,
        tls_cert_file=ast.etc_dir / "keys" / "server.crt",
        tls_key_file=ast.etc_dir / "keys" / "server.key",
        tls_group="root",
        public_hostname=host,
        tls_certificate_secret_arn="arn:aws:secretsmanager:eu-west-1:123456789012:secret:gateway/tls-AbCdEf",
    )
    cli = AsteriskCli(["chroot", str(ast.root), "/usr/sbin/asterisk"], ast.conf_path)
    trusting_root = ssl.create_default_context(cafile=str(root.ca_file))

    class Source:
        def secret_string(self, arn: str) -> str:
            return secrets[-1]

    def verified_chain() -> None:
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw,
            trusting_root.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.getpeercert()["subjectAltName"] == (("DNS", host),)

    with pytest.raises(ssl.SSLCertVerificationError):
        verified_chain()  # the self-signed "old"
    assert install_from_secret(config, cli, Source())["renewed"] is True
    with pytest.raises(ssl.SSLCertVerificationError):
        verified_chain()  # the operator's leaf is served, but the client cannot reach its root without the intermediate

    secrets.append(json.dumps({"certificate": leaf + intermediate.pem, "private_key": key}))
    result = install_from_secret(config, cli, Source())

    assert (result["renewed"], result["reason"]) == (True, "rotated")
    verified_chain()  # leaf + intermediate from Asterisk, the root from the client's own trust
    # unchanged on the next run: nothing written, nothing reloaded, the same certificate served
    inode = config.tls_cert_file.stat().st_ino
    assert install_from_secret(config, cli, Source())["reason"] == "unchanged"
    assert config.tls_cert_file.stat().st_ino == inode
    verified_chain()
