"""The gateway's certificate checked as ElevenLabs checks it, against real TLS servers on 127.0.0.1.

A test CA (trusted through a CA file) issues the certificates; a second CA nobody trusts issues the
impostor's. The adapter (`sip_trunk.sip.check_certificate`) is proven alone, then inside VerifyTrunk.
"""

from __future__ import annotations

import functools
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sip_trunk.errors import TrunkNotVerified
from sip_trunk.sip import CertificateTarget, check_certificate
from sip_trunk.workflows import clock as workflow_clock
from sip_trunk.workflows import provision
from support.certificates import TestCa, TlsServer
from support.fakes import (
    PRIMARY,
    PUBLIC_IP,
    STANDBY,
    FakeSettings,
    FakeWorld,
    settings_document,
    workflow_config,
)

pytestmark = pytest.mark.integration

GATEWAY_HOST = "sip.gateway.example"
VERSION = "v0123456789abcdef"


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa(tmp_path / "trusted")


@pytest.fixture
def servers() -> Iterator[list[TlsServer]]:
    started: list[TlsServer] = []
    yield started
    for server in started:
        server.close()


def serve(servers: list[TlsServer], cert: tuple[Path, Path]) -> TlsServer:
    server = TlsServer(*cert)
    servers.append(server)
    return server


def target(server: TlsServer, name: str = GATEWAY_HOST) -> CertificateTarget:
    return CertificateTarget(server_name=name, host="127.0.0.1", port=server.port)


# --- the adapter --------------------------------------------------------------------------------------


def test_a_trusted_certificate_for_the_name_is_verified(ca: TestCa, servers: list[TlsServer]) -> None:
    server = serve(servers, ca.issue(GATEWAY_HOST, "alt.gateway.example", days=60))
    report = check_certificate(target(server), 3.0, ca_file=str(ca.ca_file))
    assert report.verified, report.error
    assert report.error is None
    assert report.subject_names == (GATEWAY_HOST, "alt.gateway.example")
    assert report.issuer == "Test Root CA"
    assert report.tls_version in {"TLSv1.2", "TLSv1.3"}
    assert report.days_left(time.time()) in (59, 60)
    assert server.server_names == [GATEWAY_HOST]  # SNI carries the name ElevenLabs dials


def test_a_certificate_for_another_name_is_refused_and_its_names_reported(ca: TestCa, servers: list[TlsServer]) -> None:
    server = serve(servers, ca.issue("other.example"))
    report = check_certificate(target(server), 3.0, ca_file=str(ca.ca_file))
    assert not report.verified
    assert report.error is not None
    assert "Hostname mismatch" in report.error
    assert report.subject_names == ("other.example",)


def test_a_certificate_from_an_untrusted_ca_is_refused(ca: TestCa, servers: list[TlsServer], tmp_path: Path) -> None:
    impostor = TestCa(tmp_path / "impostor", name="Impostor CA")
    server = serve(servers, impostor.issue(GATEWAY_HOST))
    report = check_certificate(target(server), 3.0, ca_file=str(ca.ca_file))
    assert not report.verified
    assert report.error is not None
    assert "unable to get local issuer certificate" in report.error
    assert report.subject_names == ()  # nothing about an untrusted chain is believed


def test_the_system_store_does_not_trust_the_test_ca(ca: TestCa, servers: list[TlsServer]) -> None:
    # Without the CA file override (production), the test CA is just another untrusted issuer
    server = serve(servers, ca.issue(GATEWAY_HOST))
    report = check_certificate(target(server), 3.0)
    assert not report.verified
    assert report.error is not None
    assert "certificate" in report.error


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_server_that_offers_only_tls_1_1_is_refused(ca: TestCa, servers: list[TlsServer]) -> None:
    # Given a server limited to TLS 1.1 (security level 0, so OpenSSL offers it at all)
    server = serve(servers, ca.issue(GATEWAY_HOST))
    server.context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server.context.maximum_version = ssl.TLSVersion.TLSv1_1
    server.context.set_ciphers("DEFAULT:@SECLEVEL=0")
    # that a client allowing TLS 1.1 reaches (the positive control)
    lenient = ssl.create_default_context(cafile=str(ca.ca_file))
    lenient.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock,
        lenient.wrap_socket(sock, server_hostname=GATEWAY_HOST) as tls,
    ):
        assert tls.version() == "TLSv1.1"
    # When checked as ElevenLabs checks, Then the protocol version is refused
    report = check_certificate(target(server), 3.0, ca_file=str(ca.ca_file))
    assert not report.verified
    assert report.error == "TLS handshake failed: TLSV1_ALERT_PROTOCOL_VERSION"


def test_nothing_listening_is_a_result_not_an_exception(ca: TestCa, servers: list[TlsServer]) -> None:
    server = serve(servers, ca.issue(GATEWAY_HOST))
    server.close()
    report = check_certificate(target(server), 1.0, ca_file=str(ca.ca_file))
    assert not report.verified
    assert report.error is not None
    assert "refused" in report.error


# --- inside VerifyTrunk ------------------------------------------------------------------------------


def tls_world(ca: TestCa, server: TlsServer) -> FakeWorld:
    """ElevenLabs over TLS to GATEWAY_HOST, which the test maps to the server; both hosts run the version."""
    document = settings_document(transport="tls")
    document["network"] |= {"public_hostname": GATEWAY_HOST}
    document["tls"] = {"enabled": True}
    config = workflow_config(PROBE_TARGETS={PUBLIC_IP: "127.0.0.1:5099", GATEWAY_HOST: f"127.0.0.1:{server.port}"})
    world = FakeWorld(config=config, settings=FakeSettings(document))
    world.certificates = functools.partial(check_certificate, ca_file=str(ca.ca_file))
    for host in (PRIMARY, STANDBY):
        world.state.beat(host, workflow_clock.now(), VERSION)
    world.prober.answers["127.0.0.1"] = 200
    return world


def verify(world: FakeWorld) -> provision.VerifyResult:
    render = provision.RenderResult(
        version=VERSION, previous_version=None, public_address=PUBLIC_IP, published=True, files=10
    )
    stack = provision.StackCheck(
        ready=True, status="CREATE_COMPLETE", primary_instance_id=PRIMARY, standby_instance_id=STANDBY
    )
    request = provision.VerifyInput(render=render, stack=stack, entered_at=workflow_clock.iso(workflow_clock.now()))
    return provision.verify_trunk(world.deps, request)


def test_verify_passes_and_reports_a_good_certificate(ca: TestCa, servers: list[TlsServer]) -> None:
    server = serve(servers, ca.issue(GATEWAY_HOST, days=90))
    result = verify(tls_world(ca, server))
    cert = result.certificate
    assert (cert.checked, cert.verified, cert.server_name, cert.port) == (True, True, GATEWAY_HOST, 5061)
    assert cert.subject_names == [GATEWAY_HOST]
    assert cert.issuer == "Test Root CA"
    assert cert.days_left in (89, 90)


def test_verify_refuses_a_certificate_for_another_name(ca: TestCa, servers: list[TlsServer]) -> None:
    server = serve(servers, ca.issue("other.example"))
    with pytest.raises(TrunkNotVerified) as caught:
        verify(tls_world(ca, server))
    message = str(caught.value)
    assert f"certificate on {GATEWAY_HOST}:5061 is refused" in message
    assert "Hostname mismatch" in message
    assert "it names other.example" in message


def test_verify_refuses_a_certificate_from_an_untrusted_ca(
    ca: TestCa, servers: list[TlsServer], tmp_path: Path
) -> None:
    server = serve(servers, TestCa(tmp_path / "impostor", name="Impostor CA").issue(GATEWAY_HOST))
    with pytest.raises(TrunkNotVerified, match="unable to get local issuer certificate"):
        verify(tls_world(ca, server))


def test_verify_refuses_a_certificate_about_to_expire(ca: TestCa, servers: list[TlsServer]) -> None:
    server = serve(servers, ca.issue(GATEWAY_HOST, days=3))
    with pytest.raises(TrunkNotVerified) as caught:
        verify(tls_world(ca, server))
    # (3 days from issue, less the moments since: 2 whole days left)
    assert f"certificate on {GATEWAY_HOST}:5061 expires in 2 days" in str(caught.value)
    assert "at least 14 days" in str(caught.value)
