"""Real calls through the product's rendered gateway config and the ElevenLabs stand-in (standin.py).

Each proof is a function that raises AssertionError when the behaviour breaks. The positive tests run it
against the config exactly as rendered; the negative controls run the same function against a rendered
config post-edited to carry one of the origin project's bugs, and require it to fail:

* host ``sip.elevenlabs.io`` instead of ``sip.rtc.elevenlabs.io``  -> the call never reaches the agent
* ``contact = ...;transport=tcp`` with a bare ``;`` (a comment)     -> the call never reaches the agent
* ElevenLabs identified by host name instead of digest user name    -> its calls never reach the dialplan
* ``rewrite_contact = yes`` on the ElevenLabs endpoint              -> the BYE goes to the shared address (481)
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from standin import (
    ELEVENLABS_HOST,
    SHARED_IP,
    Standin,
    hosts_file,
    start_standin,
    use_private_hosts,
    wait_for,
)
from support.asterisk import AsteriskInstance
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.rtp import RtpCounter, rtp_range
from support.sipp import free_media_port, free_port, free_sip_port, run_sipp

AsteriskFactory = Callable[..., AsteriskInstance]
RtpCounterFactory = Callable[..., RtpCounter]
Edit = Callable[[str], str]

pytestmark = pytest.mark.asterisk

GATEWAY_IP = "127.0.0.1"
CARRIER_IP = "127.0.0.5"  # the carrier's sipp: the only source the carrier endpoint is identified by
INTRUDER_IP = "127.0.0.6"
NOWHERE_IP = "127.0.0.9"  # what names other than the stand-in's resolve to: nothing listens there
WRONG_HOST = "sip.elevenlabs.io"


@dataclass
class Pair:
    gateway: AsteriskInstance
    standin: Standin
    settings: dict[str, Any]
    sip_port: int
    rtp_range: tuple[int, int]

    @property
    def e164(self) -> str:
        return str(self.settings["elevenlabs"]["phone_number"])


def _credentials() -> tuple[dict[str, Any], dict[str, str]]:
    return load_example("minimal")


def start_pair(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    *,
    edit: Edit | None = None,
    inbound_password: str | None = None,
) -> Pair:
    """The stand-in plus a gateway rendered from examples/minimal.yaml (ports, bind address and a
    carrier identified by the carrier sipp's address adapted for the test), optionally post-edited."""
    settings, secrets = _credentials()
    el = settings["elevenlabs"]
    sip_port = free_port(GATEWAY_IP)
    rtp = rtp_range()
    standin = start_standin(
        asterisk_factory,
        e164=el["phone_number"],
        gateway_out=(el["outbound_username"], secrets[el["outbound_password"]]),
        gateway_in=(el["inbound_username"], inbound_password or secrets[el["inbound_password"]]),
        gateway_addr=(GATEWAY_IP, sip_port),
    )
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": standin.shared_port},
            "network": loopback_network(GATEWAY_IP, sip_port, rtp, tls_port=free_port(GATEWAY_IP)),
            "carriers": [ip_carrier(CARRIER_IP, free_port(CARRIER_IP), [el["phone_number"]])],
        },
    )
    rendered = render_gateway(settings, secrets, tmp_path / "gateway")
    if edit is not None:
        path = rendered.asterisk_dir / "pjsip.conf"
        before = path.read_text()
        after = edit(before)
        assert after != before, "the negative control's edit changed nothing"
        path.write_text(after)
    gateway = asterisk_factory(
        rendered.asterisk_dir,
        start=False,
        extra_files={"hosts": hosts_file({ELEVENLABS_HOST: SHARED_IP, WRONG_HOST: NOWHERE_IP})},
    )
    use_private_hosts(gateway)
    gateway.start()
    return Pair(gateway=gateway, standin=standin, settings=settings, sip_port=sip_port, rtp_range=rtp)


@pytest.fixture
def pairs() -> Any:
    started: list[Pair] = []
    yield started
    for pair in started:
        pair.standin.stop()


# ------------------------------------------------------------------------------------------- proofs
def carrier_calls_agent(pair: Pair, workdir: Path, *, duration_ms: int) -> None:
    """The carrier's sipp calls the agent's number through the gateway; the call must succeed."""
    result = run_sipp(
        "carrier_uac_pcap.xml",
        workdir,
        remote=f"{GATEWAY_IP}:{pair.sip_port}",
        transport="t1",
        local_ip=CARRIER_IP,
        service=pair.e164,
        duration_ms=duration_ms,
        media_port=free_media_port(CARRIER_IP),
        timeout=25,
    )
    assert result.ok, result.describe()


def carrier_call_reaches_agent(pair: Pair, rtp_counter: RtpCounterFactory, workdir: Path) -> None:
    """P2: carrier -> gateway -> stand-in over TCP with digest auth; the agent sees the E.164 with '+'
    and audio flows both ways on both legs."""
    gw_counter = rtp_counter(pair.rtp_range)
    el_counter = rtp_counter(pair.standin.rtp_range)
    carrier_calls_agent(pair, workdir, duration_ms=3000)
    assert pair.standin.agent_calls() == [pair.e164], pair.standin.inst.log_text("messages")
    security_log = pair.standin.inst.log_text
    assert pair.standin.inst.log_has("security", 'SecurityEvent="ChallengeSent"'), security_log("security")
    assert pair.standin.inst.log_has("security", r'SecurityEvent="SuccessfulAuth".*AccountID="gateway-out"'), (
        security_log("security")
    )
    el_counts, gw_counts = el_counter.counts(), gw_counter.counts()
    # 3 s of 20 ms packets = 150 per direction; the agent's echo comes back the same way
    assert el_counts.to_range >= 75, f"no audio reached the agent: {el_counts}"
    assert el_counts.from_range >= 75, f"no audio came back from the agent: {el_counts}"
    assert gw_counts.to_range >= 150, f"gateway received too little audio: {gw_counts}"
    assert gw_counts.from_range >= 150, f"gateway sent too little audio: {gw_counts}"


def bye_reaches_call_holder(pair: Pair, workdir: Path) -> None:
    """P10: ACK and BYE of a call to ElevenLabs go to the Contact of its 200 OK (the holder), which
    answers the BYE 200; nothing in-dialog reaches the shared address."""
    carrier_calls_agent(pair, workdir, duration_ms=1500)
    assert pair.standin.agent_calls() == [pair.e164]
    # the holder got the BYE: its channel is gone at once (not after the 32 s ACK timeout)
    assert wait_for(lambda: pair.standin.channel_count() == 0, 3.0), pair.standin.inst.rx("core show channels")
    refused = pair.standin.shared.refused()
    assert refused == [], f"in-dialog requests reached the shared address: {refused}"


def agent_call_lands_in_from_elevenlabs(pair: Pair, exten: str = "1001") -> None:
    """P3: the agent's call, authenticated by digest as inbound_username, reaches [from-elevenlabs]."""
    pair.standin.originate(exten)
    user = pair.settings["elevenlabs"]["inbound_username"]
    landed = re.compile(rf"{re.escape(user)}: Call .*extension '{exten}'.*context 'from-elevenlabs'")
    ok = wait_for(lambda: bool(landed.search(pair.gateway.log_text("messages"))), 8.0)
    assert ok, "the agent's call never reached from-elevenlabs:\n" + pair.gateway.log_text("messages")[-3000:]
    authenticated = rf'SecurityEvent="SuccessfulAuth".*AccountID="{re.escape(user)}"'
    assert pair.gateway.log_has("security", authenticated), pair.gateway.log_text("security")


# -------------------------------------------------------------------------------- negative controls
def wrong_host(text: str) -> str:
    return text.replace(f"contact = sip:{ELEVENLABS_HOST}:", f"contact = sip:{WRONG_HOST}:")


def bare_transport_parameter(text: str) -> str:
    # The origin project's endpoint named no transport, so nothing but the lost URI parameter said TCP
    # (with the product's `transport = transport-tcp` on the endpoint, the bare ';' alone is masked).
    text = re.sub(
        r"(\[elevenlabs\]\ntype = endpoint\n)transport = transport-tcp\n",
        r"\1",
        text,
        count=1,
    )
    return text.replace("\\;transport=", ";transport=")


def identified_by_host(text: str) -> str:
    inbound = _credentials()[0]["elevenlabs"]["inbound_username"]
    section = f"[{inbound}]\ntype = endpoint\n"
    assert section in text
    text = re.sub(
        rf"(\[{re.escape(inbound)}\]\ntype = endpoint\n(?:.*\n)*?)identify_by = auth_username\n",
        r"\1identify_by = ip\n",
        text,
        count=1,
    )
    return text + f"\n[{inbound}-identify]\ntype = identify\nendpoint = {inbound}\nmatch = {ELEVENLABS_HOST}\n"


def rewrite_contact_on_elevenlabs(text: str) -> str:
    return re.sub(
        r"(\[elevenlabs\]\ntype = endpoint\n(?:.*\n)*?)rewrite_contact = no\n",
        r"\1rewrite_contact = yes\n",
        text,
        count=1,
    )


# ------------------------------------------------------------------------------------------- P1
def _self_signed(directory: Path) -> tuple[bytes, bytes]:
    cert, key = directory / "gw.crt", directory / "gw.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_bytes(), key.read_bytes()


@pytest.mark.parametrize("example", ["minimal", "full"])
def test_example_configs_load(asterisk_factory: AsteriskFactory, tmp_path: Path, example: str) -> None:
    # Given an example config with ports (and, for TLS, a throwaway certificate) adapted to this machine
    settings, secrets = load_example(example)
    gw = asterisk_factory(None, name=f"el-p1-{example}", start=False)
    keys = f"{gw.chroot_base}/etc/keys"
    rtp = rtp_range()
    # (the full example also listens on UDP, on the TCP port's number)
    ports = {"sip_port": free_sip_port(GATEWAY_IP), "tls_port": free_port(GATEWAY_IP)}
    overrides: dict[str, Any] = {
        "network": {"bind_address": GATEWAY_IP, "rtp_port_start": rtp[0], "rtp_port_end": rtp[1], **ports},
    }
    extra: dict[str, str | bytes] = {
        "hosts": hosts_file({ELEVENLABS_HOST: NOWHERE_IP, "sip.telco.example": NOWHERE_IP})
    }
    if example == "full":
        cert, key = _self_signed(tmp_path)
        extra |= {"keys/asterisk.crt": cert, "keys/asterisk.key": key}
        overrides["tls"] = {
            "cert_file": f"{keys}/asterisk.crt",
            "key_file": f"{keys}/asterisk.key",
            "ca_list_file": f"{keys}/asterisk.crt",
        }
        overrides["carriers"] = [
            {**c, "port": free_port(NOWHERE_IP)} if c["name"] == "telco" else c for c in settings["carriers"]
        ]
    settings = merge(settings, overrides)
    rendered = render_gateway(settings, secrets, tmp_path / "gateway")
    # When Asterisk starts from the rendered files
    gw.config_dir, gw.extra_files = rendered.asterisk_dir, extra
    use_private_hosts(gw)
    gw.start()
    # Then every transport listens where configured, every endpoint and AOR is loaded
    el = settings["elevenlabs"]
    transports = gw.rx("pjsip show transports")
    expected_transports = {"tcp": ports["sip_port"]}
    if example == "full":
        expected_transports |= {"tls": ports["tls_port"], "udp": ports["sip_port"]}
    for proto, port in expected_transports.items():
        assert re.search(rf"transport-{proto}\s+{proto}\s+\d+\s+\d+\s+{GATEWAY_IP}:{port}\b", transports), transports
    endpoints = gw.rx("pjsip show endpoints")
    aors = gw.rx("pjsip show aors")
    names = ["elevenlabs", el["inbound_username"]]
    names += [c["name"] for c in settings.get("carriers", [])]
    names += [e["number"] for e in settings.get("extensions", [])]
    for endpoint in names:
        assert re.search(rf"Endpoint:\s+{re.escape(endpoint)}\b", endpoints), f"{endpoint}:\n{endpoints}"
    for aor in ["elevenlabs", *names[2:]]:
        assert re.search(rf"Aor:\s+{re.escape(aor)}\b", aors), f"{aor}:\n{aors}"
    # And nothing logged an error
    # (the test root ships no music-on-hold sounds: core's file.c reports their directory missing)
    errors = [
        line
        for line in gw.log_text("messages").splitlines()
        if " ERROR[" in line and "/usr/share/asterisk/moh" not in line
    ]
    assert errors == [], "\n".join(errors)


# ------------------------------------------------------------------------------------------- P2
def test_carrier_call_reaches_agent_with_audio_both_ways(
    asterisk_factory: AsteriskFactory, rtp_counter: RtpCounterFactory, pairs: list[Pair], tmp_path: Path
) -> None:
    pair = start_pair(asterisk_factory, tmp_path)
    pairs.append(pair)
    carrier_call_reaches_agent(pair, rtp_counter, tmp_path / "sipp")


@pytest.mark.parametrize("edit", [wrong_host, bare_transport_parameter], ids=["wrong-host", "bare-transport"])
def test_negative_control_origin_bugs_break_the_call(
    asterisk_factory: AsteriskFactory,
    rtp_counter: RtpCounterFactory,
    pairs: list[Pair],
    tmp_path: Path,
    edit: Edit,
) -> None:
    pair = start_pair(asterisk_factory, tmp_path, edit=edit)
    pairs.append(pair)
    with pytest.raises(AssertionError):
        carrier_call_reaches_agent(pair, rtp_counter, tmp_path / "sipp")
    assert pair.standin.agent_calls() == []
    assert [e for e in pair.standin.shared.events if "INVITE" in e[1]] == []


# ------------------------------------------------------------------------------------------- P3
def test_agent_call_authenticates_into_from_elevenlabs(
    asterisk_factory: AsteriskFactory, pairs: list[Pair], tmp_path: Path
) -> None:
    pair = start_pair(asterisk_factory, tmp_path)
    pairs.append(pair)
    agent_call_lands_in_from_elevenlabs(pair)


def test_agent_call_with_wrong_password_reaches_no_context(
    asterisk_factory: AsteriskFactory, pairs: list[Pair], tmp_path: Path
) -> None:
    pair = start_pair(asterisk_factory, tmp_path, inbound_password="not-the-inbound-password")
    pairs.append(pair)
    with pytest.raises(AssertionError):
        agent_call_lands_in_from_elevenlabs(pair)
    assert pair.gateway.log_has("security", 'SecurityEvent="ChallengeResponseFailed"')
    assert "context '" not in pair.gateway.log_text("messages")


def test_negative_control_identified_by_host_refuses_the_agent(
    asterisk_factory: AsteriskFactory, pairs: list[Pair], tmp_path: Path
) -> None:
    pair = start_pair(asterisk_factory, tmp_path, edit=identified_by_host)
    pairs.append(pair)
    with pytest.raises(AssertionError):
        agent_call_lands_in_from_elevenlabs(pair)
    assert "from-elevenlabs" not in pair.gateway.log_text("messages")


def test_unauthenticated_invite_as_elevenlabs_is_challenged(
    asterisk_factory: AsteriskFactory, pairs: list[Pair], tmp_path: Path
) -> None:
    pair = start_pair(asterisk_factory, tmp_path)
    pairs.append(pair)
    # When an INVITE claims to come from "elevenlabs" (the outbound endpoint's name) without credentials
    result = run_sipp(
        "uac_noauth.xml",
        tmp_path / "sipp",
        remote=f"{GATEWAY_IP}:{pair.sip_port}",
        transport="t1",
        local_ip=INTRUDER_IP,
        service="+442071838750",
        keys={"from_user": "elevenlabs"},
        media_port=free_media_port(INTRUDER_IP),
        timeout=15,
    )
    # Then it is challenged, never identified: no context, no channel, no call to the agent
    assert result.ok, result.describe()
    assert "context '" not in pair.gateway.log_text("messages")
    assert "0 active channels" in pair.gateway.rx("core show channels count")
    assert pair.standin.agent_calls() == []
    assert pair.gateway.log_has("security", 'SecurityEvent="ChallengeSent"')


# ------------------------------------------------------------------------------------------- P10
def test_bye_goes_to_the_contact_of_the_200_ok(
    asterisk_factory: AsteriskFactory, pairs: list[Pair], tmp_path: Path
) -> None:
    pair = start_pair(asterisk_factory, tmp_path)
    pairs.append(pair)
    bye_reaches_call_holder(pair, tmp_path / "sipp")


def test_negative_control_rewrite_contact_sends_bye_to_shared_address(
    asterisk_factory: AsteriskFactory, pairs: list[Pair], tmp_path: Path
) -> None:
    pair = start_pair(asterisk_factory, tmp_path, edit=rewrite_contact_on_elevenlabs)
    pairs.append(pair)
    with pytest.raises(AssertionError):
        bye_reaches_call_holder(pair, tmp_path / "sipp")
    assert any(action == "481" and start.startswith("BYE") for action, start in pair.standin.shared.events)
