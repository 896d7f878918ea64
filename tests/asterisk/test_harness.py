"""Smoke tests of the real-Asterisk harness itself: an instance boots from a hand-written config, sipp
places an authenticated call whose RTP is counted both ways, and the Elastic IP topology carries SIP.

The minimal config (tests/asterisk/configs/minimal) loads exactly the modules of tests/asterisk/MODULES.txt
(``autoload = no``), so these tests also prove that module list.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.asterisk import AsteriskInstance, available_modules, module_load_lines, module_names
from support.netns import ElasticIpTopology
from support.rtp import RtpCounter, rtp_range
from support.sipp import (
    Sipp,
    TlsTunnel,
    auth_field,
    free_media_port,
    free_port,
    free_sip_port,
    received_requests,
    run_sipp,
    write_injection,
)

AsteriskFactory = Callable[..., AsteriskInstance]
RtpCounterFactory = Callable[..., RtpCounter]

pytestmark = pytest.mark.asterisk

MINIMAL = Path(__file__).parent / "configs" / "minimal"
PASSWORD = "harness-Secret-1"


def minimal_variables(**overrides: str) -> dict[str, str]:
    """The minimal config's variables: a free SIP port and an RTP range reserved for this test."""
    low, high = rtp_range()
    values = {
        "BIND_IP": "127.0.0.1",
        "SIP_PORT": str(free_sip_port()),  # UDP and TCP transports on one number
        "TRANSPORT_NAT": "",
        "ALICE_PASSWORD": PASSWORD,
        "RTP_START": str(low),
        "RTP_END": str(high),
        "MODULE_LOADS": "\n".join(module_load_lines()),
    }
    values.update(overrides)
    return values


def wait_until(condition: Callable[[], object], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def rtp_ports(variables: dict[str, str]) -> tuple[int, int]:
    return int(variables["RTP_START"]), int(variables["RTP_END"])


def test_minimal_config_boots_and_lists_transports(asterisk_factory: AsteriskFactory) -> None:
    # Given the hand-written minimal config on a free loopback port
    variables = minimal_variables()
    # When Asterisk starts from it
    ast = asterisk_factory(MINIMAL, variables=variables)
    # Then it boots and both transports listen where configured
    out = ast.rx("pjsip show transports")
    port = variables["SIP_PORT"]
    assert re.search(rf"transport-tcp\s+tcp\s+\d+\s+\d+\s+127\.0\.0\.1:{port}", out), out
    assert re.search(rf"transport-udp\s+udp\s+\d+\s+\d+\s+127\.0\.0\.1:{port}", out), out
    assert ast.boot_seconds is not None
    assert ast.boot_seconds < 10


def test_module_list_loads_every_module(asterisk_root: Path, asterisk_factory: AsteriskFactory) -> None:
    # Given the module list the product's modules.conf is built from
    wanted = module_names(module_load_lines())
    assert wanted <= available_modules(asterisk_root), wanted - available_modules(asterisk_root)
    # When Asterisk boots with autoload=no and exactly that list
    ast = asterisk_factory(MINIMAL, variables=minimal_variables())
    # Then every module is running (a missing dependency declines a module silently) and nothing else is
    loaded = ast.loaded_modules()
    assert loaded == wanted, f"not running: {sorted(wanted - loaded)}; unexpected: {sorted(loaded - wanted)}"
    assert "PJSIP" in ast.rx("core show channeltypes")
    assert "Error loading module" not in ast.log_text("messages")


@pytest.mark.parametrize("service", ["echo", "play"])
def test_tcp_call_with_digest_auth_carries_rtp(
    asterisk_factory: AsteriskFactory, rtp_counter: RtpCounterFactory, tmp_path: Path, service: str
) -> None:
    # Given an instance whose dialplan answers with Echo() or Playback(), RTP counted on its range
    variables = minimal_variables()
    ast = asterisk_factory(MINIMAL, variables=variables)
    counter = rtp_counter(rtp_ports(variables))
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", PASSWORD)]])
    # When sipp calls over TCP, answers the digest challenge and streams 3 s of G.711 A-law
    result = run_sipp(
        "uac_auth_pcap.xml",
        tmp_path,
        remote=f"127.0.0.1:{variables['SIP_PORT']}",
        transport="t1",
        service=service,
        inject=users,
        duration_ms=3000,
        media_port=free_media_port(),
        timeout=40,
    )
    # Then the call succeeded, after a challenge, and RTP flowed both ways (≈ 50 packets/s)
    assert result.ok, result.describe()
    assert (result.successful, result.failed) == (1, 0)
    assert "401 Unauthorized" in result.messages
    counts = counter.counts()
    assert counts.from_range >= 100, f"Asterisk sent too little RTP: {counts}"
    if service == "echo":
        assert counts.to_range >= 100, f"sipp's RTP did not reach Asterisk: {counts}"
    assert ast.log_has("security", 'SecurityEvent="SuccessfulAuth"')


def test_wrong_password_is_rejected(
    asterisk_factory: AsteriskFactory, rtp_counter: RtpCounterFactory, tmp_path: Path
) -> None:
    # Given an instance and a caller with the wrong password
    variables = minimal_variables()
    ast = asterisk_factory(MINIMAL, variables=variables)
    counter = rtp_counter(rtp_ports(variables))
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", "not-the-password")]])
    # When sipp tries the call
    result = run_sipp(
        "uac_auth_pcap.xml",
        tmp_path,
        remote=f"127.0.0.1:{variables['SIP_PORT']}",
        transport="t1",
        service="echo",
        inject=users,
        duration_ms=1000,
        timeout=40,
    )
    # Then the harness sees the failure: no call, no media, a security event for fail2ban
    assert not result.ok
    assert result.successful == 0
    assert counter.counts().from_range == 0
    assert ast.log_has("security", 'SecurityEvent="ChallengeResponseFailed"')


def test_options_via_elastic_ip_reach_instance(
    asterisk_factory: AsteriskFactory, elastic_ip_topology: ElasticIpTopology, tmp_path: Path
) -> None:
    topo = elastic_ip_topology
    # Given Asterisk in the instance namespace, bound to its private address, told its public address
    nat = "\n".join(
        [
            f"external_signaling_address = {topo.public_ip}",
            f"external_media_address = {topo.public_ip}",
            f"local_net = {topo.private_cidr}",
        ]
    )
    variables = minimal_variables(BIND_IP=topo.instance_ip(), SIP_PORT="5060", TRANSPORT_NAT=nat)
    asterisk_factory(MINIMAL, variables=variables, netns=topo.instance_ns())
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", PASSWORD)]])
    for transport in ("u1", "t1"):
        # When a client outside sends OPTIONS to the public address
        result = run_sipp(
            "options.xml",
            tmp_path / transport,
            remote=f"{topo.public_ip}:5060",
            transport=transport,
            local_ip=topo.client_ip,
            inject=users,
            netns=topo.client,
            timeout=20,
        )
        # Then the instance answers 200 and names the public address, never the private one
        assert result.ok, result.describe()
        assert "SIP/2.0 200 OK" in result.messages
        received = result.messages.split("SIP/2.0 200 OK", 1)[1]
        assert topo.instance_ip() not in received.split("\n\n", 1)[0], received
    # And the private address is not reachable from outside
    direct = run_sipp(
        "options.xml",
        tmp_path / "direct",
        remote=f"{topo.instance_ip()}:5060",
        transport="u1",
        local_ip=topo.client_ip,
        inject=users,
        netns=topo.client,
        global_timeout_s=2,
        timeout=20,
    )
    assert not direct.ok
    assert not re.search(r"^SIP/2\.0 \d{3}", direct.messages, re.MULTILINE), direct.messages


def _nat_lines(topo: ElasticIpTopology) -> str:
    return "\n".join(
        [
            f"external_signaling_address = {topo.public_ip}",
            f"external_media_address = {topo.public_ip}",
            f"local_net = {topo.private_cidr}",
        ]
    )


def test_call_via_elastic_ip_carries_rtp_both_ways(
    asterisk_factory: AsteriskFactory,
    topology_factory: Callable[..., ElasticIpTopology],
    rtp_counter: RtpCounterFactory,
    tmp_path: Path,
) -> None:
    # Given Asterisk behind the 1:1 NAT, configured with its public address
    topo = topology_factory()
    variables = minimal_variables(BIND_IP=topo.instance_ip(), SIP_PORT="5060", TRANSPORT_NAT=_nat_lines(topo))
    asterisk_factory(MINIMAL, variables=variables, netns=topo.instance_ns())
    # RTP counted where the caller sits: packets to/from sipp's media port on the client's interface
    media_port = 6000
    counter = rtp_counter((media_port, media_port), interface="eth0", netns=topo.client)
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", PASSWORD)]])
    # When the outside client calls the public address over TCP and streams audio to Echo()
    result = run_sipp(
        "uac_auth_pcap.xml",
        tmp_path,
        remote=f"{topo.public_ip}:5060",
        transport="t1",
        local_ip=topo.client_ip,
        service="echo",
        inject=users,
        duration_ms=3000,
        media_port=media_port,
        netns=topo.client,
        timeout=40,
    )
    # Then the SDP answer names the public address and the echoed audio comes back through the NAT
    assert result.ok, result.describe()
    assert f"c=IN IP4 {topo.public_ip}" in result.messages
    assert f"c=IN IP4 {topo.instance_ip()}" not in result.messages
    counts = counter.counts()
    assert counts.from_range >= 100, f"sipp sent too little RTP: {counts}"
    assert counts.to_range >= 100, f"no RTP came back through the NAT: {counts}"


def test_moving_the_public_address_switches_instances(
    asterisk_factory: AsteriskFactory, topology_factory: Callable[..., ElasticIpTopology], tmp_path: Path
) -> None:
    # Given two instances behind the router, the public address mapped to "a"
    topo = topology_factory(instances=(("a", "10.0.0.10"), ("b", "10.0.0.11")))
    instances = {}
    for label in ("a", "b"):
        variables = minimal_variables(BIND_IP=topo.instance_ip(label), SIP_PORT="5060", TRANSPORT_NAT=_nat_lines(topo))
        instances[label] = asterisk_factory(MINIMAL, variables=variables, netns=topo.instance_ns(label))
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", PASSWORD)]])

    def probe(step: str) -> None:
        result = run_sipp(
            "options.xml",
            tmp_path / step,
            remote=f"{topo.public_ip}:5060",
            transport="u1",
            local_ip=topo.client_ip,
            inject=users,
            netns=topo.client,
            timeout=20,
        )
        assert result.ok, result.describe()

    def challenged(label: str) -> int:
        return instances[label].log_text("security").count('SecurityEvent="ChallengeSent"')

    # When a probe goes to the public address, then "a" answers it
    probe("before")
    assert (challenged("a"), challenged("b")) == (1, 0)
    # When the public address moves to "b" (an EIP re-association), then "b" answers the next probe
    topo.move_public_address("b")
    probe("after")
    assert (challenged("a"), challenged("b")) == (1, 1), topo.nat_rules()


def _self_signed(directory: Path, ip: str) -> tuple[Path, Path]:
    cert, key = directory / "server.crt", directory / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ip}",
         "-addext", f"subjectAltName=IP:{ip}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_call_through_tunnel(
    asterisk_factory: AsteriskFactory, rtp_counter: RtpCounterFactory, tmp_path: Path
) -> None:
    # Given an instance with a TLS transport and a certificate the client trusts
    cert, key = _self_signed(tmp_path, "127.0.0.1")
    tls_port = free_port()
    variables = minimal_variables()
    ast = asterisk_factory(MINIMAL, variables=variables, start=False)
    keys = f"{ast.chroot_base}/etc/keys"
    ast.extra_files = {
        "keys/server.crt": cert.read_bytes(),
        "keys/server.key": key.read_bytes(),
        "pjsip_extra.conf": (
            "[transport-tls]\ntype = transport\nprotocol = tls\n"
            f"bind = 127.0.0.1:{tls_port}\ncert_file = {keys}/server.crt\npriv_key_file = {keys}/server.key\n"
            "method = tlsv1_2\n"
        ),
    }
    ast.start()
    assert re.search(rf"transport-tls\s+tls\s+\d+\s+\d+\s+127\.0\.0\.1:{tls_port}", ast.rx("pjsip show transports"))
    counter = rtp_counter(rtp_ports(variables))
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", PASSWORD)]])
    # When sipp (TCP only in Debian) calls through a TLS tunnel that verifies the server certificate
    with TlsTunnel(("127.0.0.1", free_port()), ("127.0.0.1", tls_port), cafile=cert) as tunnel:
        result = run_sipp(
            "uac_auth_pcap.xml",
            tmp_path,
            remote=f"127.0.0.1:{tunnel.listen[1]}",
            transport="t1",
            service="echo",
            inject=users,
            duration_ms=2000,
            media_port=free_media_port(),
            timeout=40,
        )
    # Then the call succeeds over TLS with RTP both ways
    assert result.ok, result.describe()
    counts = counter.counts()
    assert counts.to_range >= 50, counts
    assert counts.from_range >= 50, counts
    assert ast.log_has("security", re.escape(f"IPV4/TLS/127.0.0.1/{tls_port}"))


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_a_sipp_far_end_probed_before_its_call_still_takes_the_call(tmp_path: Path, transport: str) -> None:
    # Given a sipp far end that is to take one call and answers keep-alive probes (-aa), as the stand-ins do
    uas = Sipp(
        "net_uas_answer.xml", tmp_path / "uas", transport=transport, extra_args=["-aa"], global_timeout_s=30
    ).start()
    try:
        remote = f"127.0.0.1:{uas.local_port}"
        # When a qualify OPTIONS reaches it before the INVITE (sipp 3.6.1 makes a call of the probe)
        probe = run_sipp(
            "options.xml",
            tmp_path / "probe",
            remote=remote,
            transport=transport,
            inject=write_injection(tmp_path / "probe.csv", [["gateway", "[authentication]"]]),
            timeout=15,
        )
        assert probe.ok, probe.describe()
        call = run_sipp(
            "carrier_uac_pcap.xml",
            tmp_path / "call",
            remote=remote,
            transport=transport,
            service="+14155550100",
            duration_ms=500,
            timeout=20,
        )
        # Then the call is still taken, and the far end counts one good call and no failure
        assert call.ok, call.describe()
        result = uas.wait(timeout=15)
    finally:
        uas.kill()
    assert result.ok, result.describe()
    assert (result.successful, result.failed, result.probes) == (1, 0, 1), result.describe()


def test_stopping_a_far_end_lets_the_call_it_is_ending_end(tmp_path: Path) -> None:
    # Given a far end in a call that the caller ends (its BYE takes a moment to be answered)
    uas = Sipp("net_uas_answer.xml", tmp_path / "uas", transport="t1", global_timeout_s=30).start()
    try:
        caller = Sipp(
            "carrier_uac_pcap.xml",
            tmp_path / "call",
            remote=f"127.0.0.1:{uas.local_port}",
            transport="t1",
            service="+14155550100",
            duration_ms=1500,
            global_timeout_s=20,
        ).start()
        assert wait_until(lambda: received_requests(uas.result().messages, "ACK"), 10), uas.result().describe()
        # When the test stops the far end while the call is still up
        result = uas.stop(settle_s=10)
        assert caller.wait(timeout=10).ok
    finally:
        uas.kill()
    # Then the far end was stopped only after the call ended, and counted it
    assert (result.successful, result.failed) == (1, 0), result.describe()


def test_sipp_media_ports_never_meet_another_test_port() -> None:
    # Given the ports a test hands out: SIP ports (any, from the kernel) and sipp media bases (four ports each)
    sip_ports = {free_port() for _ in range(50)}
    media_bases = [free_media_port() for _ in range(5)]
    media = {base + offset for base in media_bases for offset in range(4)}
    # Then none is handed out twice, and no media port is a SIP port
    assert len(sip_ports) == 50
    assert len(media) == 20
    assert not sip_ports & media


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_a_far_end_takes_requests_as_soon_as_it_is_started(tmp_path: Path, transport: str) -> None:
    # Given a sipp far end, just started
    uas = Sipp("net_uas_answer.xml", tmp_path / "uas", transport=transport, global_timeout_s=30).start()
    try:
        # Then its SIP socket is already bound (TCP: a connection is accepted at once, never refused)
        kind = socket.SOCK_DGRAM if transport == "u1" else socket.SOCK_STREAM
        assert uas.local_port is not None
        if kind == socket.SOCK_STREAM:
            with socket.create_connection(("127.0.0.1", uas.local_port), timeout=2):
                pass
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe, pytest.raises(OSError, match="in use"):
                probe.bind(("127.0.0.1", uas.local_port))  # the port is taken by the far end
    finally:
        uas.kill()
