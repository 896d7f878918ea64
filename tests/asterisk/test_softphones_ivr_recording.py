"""The product's rendered gateway config, run in a real Asterisk: softphones (several contacts per
extension, video passed through), the IVR menu driven by RFC 4733 DTMF, and call recording with the
hangup handler that hands the file to the host agent.

Every instance binds 127.0.0.1 on free ports. The carrier is IP-authenticated and sits on 127.0.0.2
(so the softphones on 127.0.0.1 are never identified as the carrier); the ElevenLabs endpoint points at
a sipp stand-in on 127.0.0.1, under a host name the instance's resolver maps there
(``resolver_unbound.conf`` with a hosts file of its own: the setting takes host names only).
"""

from __future__ import annotations

import array
import math
import re
import socket
import time
import wave
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from sip_trunk.agent import recordings
from support.asterisk import AsteriskInstance
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.rtp import rtp_range
from support.sipp import (
    SIPP_SHARE,
    Sipp,
    SippResult,
    auth_field,
    free_media_port,
    free_port,
    free_sip_port,
    received_messages,
    received_requests,
    run_sipp,
    scenario_path,
    write_injection,
)

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

CARRIER_IP = "127.0.0.2"
AGENT_NUMBER = "+14155550100"
IVR_DID = "+14155550101"
AGENT_HOST = "agent.gateway.test"
PASSWORDS = {"1001": "phone-1001-Secret", "1002": "phone-1002-Secret"}


def udp_port() -> int:
    return free_port(kind=socket.SOCK_DGRAM)


def build_gateway(
    tmp_path: Path,
    *,
    rtp: tuple[int, int],
    agent_port: int | None = None,
    dialplan: Mapping[str, Any] | None = None,
) -> tuple[Path, int]:
    """Render the product's config for this test: returns (asterisk config dir, SIP port)."""
    settings, secrets = load_example("minimal")
    sip_port = free_sip_port()  # UDP and TCP on the same number
    overrides: dict[str, Any] = {
        "elevenlabs": {"host": AGENT_HOST, "port": agent_port or free_port(), "codecs": ["alaw"]},
        "network": loopback_network("127.0.0.1", sip_port, rtp, udp=True),
        "carriers": [
            ip_carrier(CARRIER_IP, udp_port(), [AGENT_NUMBER, IVR_DID], name="telco", transport="udp", codecs=["alaw"])
        ],
        "extensions": [
            {"number": number, "password": f"ssm:/demo/sip/ext-{number}", "max_contacts": 3} for number in PASSWORDS
        ],
        "dialplan": dict(dialplan or {}),
    }
    for number, password in PASSWORDS.items():
        secrets[f"ssm:/demo/sip/ext-{number}"] = password
    gw = render_gateway(merge(settings, overrides), secrets, tmp_path / "rendered")
    return gw.asterisk_dir, sip_port


def start_gateway(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    *,
    rtp: tuple[int, int],
    agent_port: int | None = None,
    dialplan: Callable[[str], Mapping[str, Any]] | None = None,
    before_start: Callable[[AsteriskInstance], None] | None = None,
) -> tuple[AsteriskInstance, int]:
    """Render the config (``dialplan`` gets the instance's directory as Asterisk sees it) and start it."""
    ast = asterisk_factory(None, start=False)
    config, sip_port = build_gateway(
        tmp_path, rtp=rtp, agent_port=agent_port, dialplan=dialplan(ast.chroot_base) if dialplan else None
    )
    ast.config_dir = config
    ast.extra_files = {
        "agent-hosts": f"127.0.0.1 {AGENT_HOST}\n",
        "resolver_unbound.conf": f"[general]\nhosts = {ast.chroot_base}/etc/agent-hosts\n",
    }
    ast.prepare()
    if before_start is not None:
        before_start(ast)
    ast.start(prepare=False)
    return ast, sip_port


def register(
    tmp_path: Path, label: str, sip_port: int, extension: str, local_port: int, *, stay_ms: int | None = None
) -> Sipp | SippResult:
    """Register one contact of ``extension`` from 127.0.0.1:local_port (UDP).

    With ``stay_ms`` the client stays up that long answering qualify OPTIONS (returns the running sipp);
    otherwise it returns the finished result."""
    users = write_injection(tmp_path / f"{label}.csv", [[extension, auth_field(extension, PASSWORDS[extension])]])
    options: dict[str, Any] = {
        "remote": f"127.0.0.1:{sip_port}",
        "transport": "u1",
        "local_port": local_port,
        "inject": users,
        "extra_args": ["-aa"],
    }
    if stay_ms is None:
        return run_sipp("phone_register.xml", tmp_path / label, timeout=20, **options)
    sipp = Sipp("phone_register.xml", tmp_path / label, duration_ms=stay_ms, global_timeout_s=60, **options)
    return sipp.start()


def phone(tmp_path: Path, label: str, sip_port: int, extension: str, scenario: str) -> Sipp:
    """A softphone that registered from a UDP port and then answers one call there (qualify OPTIONS too)."""
    port = udp_port()
    result = register(tmp_path, f"{label}-register", sip_port, extension, port)
    assert isinstance(result, SippResult)
    assert result.ok, result.describe()
    uas = Sipp(
        scenario,
        tmp_path / label,
        transport="u1",
        local_port=port,
        media_port=free_media_port(),
        extra_args=["-aa"],
        global_timeout_s=60,
    )
    return uas.start()


def contacts(ast: AsteriskInstance, aor: str) -> list[str]:
    out = ast.rx("pjsip show contacts")
    return re.findall(rf"Contact:\s+{aor}/(sip:\S+)", out)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def carrier_scenario(tmp_path: Path, pcap: Path) -> Path:
    """rec_carrier_call.xml with its pcap filled in."""
    path = tmp_path / f"carrier-{pcap.stem}.xml"
    path.write_text(scenario_path("rec_carrier_call.xml").read_text().replace("@PCAP@", str(pcap)))
    return path


def carrier_call(
    tmp_path: Path, label: str, sip_port: int, did: str, pcap: Path, *, caller: str, hold_ms: int
) -> SippResult:
    return run_sipp(
        carrier_scenario(tmp_path, pcap),
        tmp_path / label,
        remote=f"127.0.0.1:{sip_port}",
        transport="u1",
        local_ip=CARRIER_IP,
        service=did,
        keys={"caller": caller},
        duration_ms=hold_ms,
        media_port=free_media_port(CARRIER_IP),
        timeout=40,
    )


def agent_stand_in(tmp_path: Path, label: str, port: int) -> Sipp:
    return Sipp(
        "rec_agent_uas.xml",
        tmp_path / label,
        transport="t1",
        local_port=port,
        media_port=free_media_port(),
        rtp_echo=True,
        global_timeout_s=60,
    ).start()


# ------------------------------------------------------------------------------------------ P6 softphones


def test_three_contacts_per_extension_and_a_fourth_replaces_the_oldest(
    asterisk_factory: AsteriskFactory, tmp_path: Path
) -> None:
    # Given the gateway with extension 1002 (max_contacts 3)
    ast, sip_port = start_gateway(asterisk_factory, tmp_path, rtp=rtp_range())
    ports = [udp_port() for _ in range(4)]
    clients: list[Sipp] = []
    try:
        # When three devices register the extension from three addresses (each answering qualify OPTIONS)
        for index, port in enumerate(ports[:3]):
            sipp = register(tmp_path, f"reg{index}", sip_port, "1002", port, stay_ms=30000)
            assert isinstance(sipp, Sipp)
            clients.append(sipp)
            wait_until(lambda n=index + 1: len(contacts(ast, "1002")) == n, 10, f"contact {index + 1}")
            # "oldest" is decided on expiration times that Asterisk stores in whole seconds
            time.sleep(1.1)
        # Then all three are contacts of 1002
        listed = contacts(ast, "1002")
        assert len(listed) == 3, ast.rx("pjsip show contacts")
        assert {int(re.search(r":(\d+)", c.split("@", 1)[1]).group(1)) for c in listed} == set(ports[:3])
        # When a fourth device registers
        sipp = register(tmp_path, "reg3", sip_port, "1002", ports[3], stay_ms=30000)
        assert isinstance(sipp, Sipp)
        clients.append(sipp)
        wait_until(lambda: any(f":{ports[3]}" in c for c in contacts(ast, "1002")), 10, "the fourth contact")
        # Then it replaced the oldest: still three, the first one gone
        listed = contacts(ast, "1002")
        out = ast.rx("pjsip show contacts")
        assert len(listed) == 3, out
        assert not any(f":{ports[0]}" in c for c in listed), out
        for port in ports[1:]:
            assert any(f":{port}" in c for c in listed), out
    finally:
        for sipp in clients:
            sipp.kill()


def test_video_call_between_extensions_passes_video_through(asterisk_factory: AsteriskFactory, tmp_path: Path) -> None:
    # Given the gateway and extension 1002 registered by a video phone
    ast, sip_port = start_gateway(asterisk_factory, tmp_path, rtp=rtp_range())
    callee = phone(tmp_path, "callee", sip_port, "1002", "phone_video_uas.xml")
    try:
        # When 1001 calls 1002 offering H.264 and VP8 video
        users = write_injection(tmp_path / "caller.csv", [["1001", auth_field("1001", PASSWORDS["1001"])]])
        caller = Sipp(
            "phone_video_uac.xml",
            tmp_path / "caller",
            remote=f"127.0.0.1:{sip_port}",
            transport="u1",
            service="1002",
            inject=users,
            duration_ms=3000,
            media_port=free_media_port(),
            global_timeout_s=30,
        ).start()
        # Then while the call is up both channels carry H.264 natively and nothing is transcoded
        names = wait_until(
            lambda: re.findall(r"^(PJSIP/100[12]-\w+)!.*!Up!", ast.rx("core show channels concise"), re.MULTILINE),
            10,
            "both call legs up",
        )
        names = wait_until(
            lambda: sorted(set(re.findall(r"^(PJSIP/100[12]-\w+)!", ast.rx("core show channels concise"), re.M))),
            5,
            "channel names",
        )
        assert len(names) == 2, names
        for name in names:
            info = ast.rx(f"core show channel {name}")
            native = re.search(r"NativeFormats:\s*\(([^)]*)\)", info)
            assert native, info
            assert "h264" in native.group(1).split("|"), info
            assert re.search(r"WriteTranscode:\s*No", info), info
            assert re.search(r"ReadTranscode:\s*No", info), info
        result = caller.wait(timeout=30)
        assert result.ok, result.describe()
        uas = callee.wait(timeout=15)
        assert uas.ok, uas.describe()
    finally:
        callee.kill()
    # And the callee was offered both video codecs, and the caller's answer carries the same video codec
    invite = uas.messages.split("INVITE sip:", 1)[1].split("\n\n\n", 1)[0]
    assert re.search(r"^m=video [1-9]\d* RTP/AVP", invite, re.M), invite
    assert re.search(r"a=rtpmap:\d+ H264/90000", invite, re.I), invite
    assert re.search(r"a=rtpmap:\d+ VP8/90000", invite, re.I), invite
    # And the gateway's answer to the caller keeps H.264 as the preferred video codec, and a re-INVITE, when
    # the gateway sends one, narrows the caller's video to the callee's choice. Asterisk's simple bridge asks
    # the second leg to adopt the first leg's stream topology, and which leg joins the bridge first is a race
    # inside Asterisk: when the callee's leg is first the caller gets the narrowing re-INVITE (within ms of
    # the ACK); when the caller's leg is first no re-INVITE is sent on either leg, and the answer stands.
    gateway_sdp = [m.split("\n\n", 1)[1] for m in received_messages(result.messages) if "\nm=video" in m]
    assert gateway_sdp, result.messages
    answer, renegotiations = gateway_sdp[0], gateway_sdp[1:]
    video = answer.split("m=video", 1)
    assert len(video) == 2, result.messages
    first = re.match(r" [1-9]\d* RTP/AVP (\d+)", video[1])
    assert first, result.messages
    assert re.search(rf"a=rtpmap:{first.group(1)} H264/90000", video[1], re.I), result.messages
    for sdp in renegotiations:
        offered = sdp.split("m=video", 1)
        assert len(offered) == 2, result.messages
        assert re.search(r"a=rtpmap:\d+ H264/90000", offered[1], re.I), result.messages
        assert not re.search(r"a=rtpmap:\d+ VP8/90000", offered[1], re.I), result.messages


# ------------------------------------------------------------------------------------------------ P7 IVR


def test_ivr_dtmf_routes_to_the_agent_and_to_an_extension(asterisk_factory: AsteriskFactory, tmp_path: Path) -> None:
    # Given a DID routed to the IVR: 1 → the agent (a sipp stand-in), 2 → extension 1002 (a registered phone)
    agent_port = free_port()
    ast, sip_port = start_gateway(
        asterisk_factory,
        tmp_path,
        rtp=rtp_range(),
        agent_port=agent_port,
        dialplan=lambda base: {
            "did_routes": {IVR_DID: {"kind": "ivr"}},
            "ivr": {
                "enabled": True,
                "timeout_s": 5,
                "choices": {"1": {"kind": "agent"}, "2": {"kind": "extension", "extension": "1002"}},
            },
        },
    )
    agent = agent_stand_in(tmp_path, "agent", agent_port)
    softphone = phone(tmp_path, "phone", sip_port, "1002", "phone_uas.xml")
    try:
        # When the carrier calls the DID and presses 1 (RFC 4733)
        one = carrier_call(
            tmp_path, "digit1", sip_port, IVR_DID, SIPP_SHARE / "dtmf_2833_1.pcap", caller="+15550001", hold_ms=3000
        )
        assert one.ok, one.describe() + ast.diagnostics()
        # Then the agent received the call, with the agent's E.164 number in the Request-URI
        agent_result = agent.wait(timeout=15)
        assert agent_result.ok, agent_result.describe()
        invites = received_requests(agent_result.messages, "INVITE")
        assert len(invites) == 1, agent_result.messages
        assert invites[0].startswith(f"INVITE sip:{AGENT_NUMBER}@{AGENT_HOST}:{agent_port}"), invites
        assert not received_requests(softphone.result().messages, "INVITE")
        # When the carrier calls again and presses 2
        two = carrier_call(
            tmp_path, "digit2", sip_port, IVR_DID, SIPP_SHARE / "dtmf_2833_2.pcap", caller="+15550002", hold_ms=3000
        )
        assert two.ok, two.describe()
        # Then the phone registered on 1002 received the call, and the agent nothing more
        phone_result = softphone.wait(timeout=15)
        assert phone_result.ok, phone_result.describe()
        assert re.search(r"^INVITE sip:1002@127\.0\.0\.1:\d+", phone_result.messages, re.M), phone_result.messages
        assert "+15550002" in phone_result.messages
    finally:
        agent.kill()
        softphone.kill()


# ------------------------------------------------------------------------------------------ P8 recording


def wav_closed(path: Path) -> bool:
    """The RIFF and data chunk sizes in the header account for the whole file (written at close)."""
    data = path.read_bytes()
    if len(data) <= 44 or data[:4] != b"RIFF":
        return False
    riff_size = int.from_bytes(data[4:8], "little")
    data_size = int.from_bytes(data[40:44], "little")
    return riff_size == len(data) - 8 and data_size == len(data) - 44


def wav_peak_rms(path: Path) -> tuple[int, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2, w.getparams()
        samples = array.array("h", w.readframes(w.getnframes()))
    assert len(samples) > 8000, len(samples)
    peak = max(abs(s) for s in samples)
    rms = math.isqrt(sum(s * s for s in samples) // len(samples))
    return peak, rms


@pytest.mark.parametrize(
    ("caller", "expected"),
    [("+15551230000", "+15551230000"), ("+1555;rm$(id)&touch/tmp/x", "+1555")],
    ids=["plain", "hostile"],
)
def test_recording_is_written_and_queued_for_the_agent(
    asterisk_factory: AsteriskFactory, tmp_path: Path, caller: str, expected: str
) -> None:
    # Given recording on, with the recordings and the agent's spool directory inside the chroot
    agent_port = free_port()

    def make_directories(ast: AsteriskInstance) -> None:
        ast.host_path(f"{ast.chroot_base}/recordings").mkdir(parents=True, exist_ok=True)
        ast.host_path(f"{ast.chroot_base}/spool").mkdir(parents=True, exist_ok=True)

    ast, sip_port = start_gateway(
        asterisk_factory,
        tmp_path,
        rtp=rtp_range(),
        agent_port=agent_port,
        dialplan=lambda base: {
            "did_routes": {AGENT_NUMBER: {"kind": "agent"}},
            "recording": True,
            "recordings_dir": f"{base}/recordings",
            "recording_spool_dir": f"{base}/spool",
        },
        before_start=make_directories,
    )
    base = ast.chroot_base
    agent = agent_stand_in(tmp_path, "agent", agent_port)
    try:
        # When the carrier calls the agent's number and talks for a few seconds (G.711 A-law)
        result = carrier_call(
            tmp_path, "call", sip_port, AGENT_NUMBER, SIPP_SHARE / "g711a.pcap", caller=caller, hold_ms=3000
        )
        assert result.ok, result.describe()
        agent_result = agent.wait(timeout=15)
        assert agent_result.ok, agent_result.describe()
    finally:
        agent.kill()
    # Then the hangup handler dropped exactly one complete job into the spool, which the agent accepts
    spool = ast.host_path(f"{base}/spool")
    wait_until(lambda: any(spool.glob("*.job")), 10, "the hangup handler to write its job")
    (job_file,) = spool.glob("*.job")
    wait_until(lambda: job_file.read_text().endswith("end=1\n"), 5, "the job to be complete")
    job = recordings.parse_spool_job(job_file.read_text(), Path(f"{base}/recordings"))
    assert job_file.name == f"{job.call_id}.job"
    assert re.fullmatch(r"([\w.-]+-)?[0-9]+\.[0-9]+", job.call_id), job  # ${UNIQUEID}
    assert job.caller == expected, job
    assert job.callee == AGENT_NUMBER, job
    assert int(job.duration) >= 1, job
    # And nothing of the hostile caller id was executed (no shell is involved at all)
    assert not ast.host_path("/tmp/x").exists()
    # And the recording exists and holds audio, not silence
    recording = ast.host_path(str(job.file))
    assert recording.exists(), sorted(p.name for p in recording.parent.iterdir())
    # MixMonitor's thread writes the WAV header's sizes when it closes the file, which can be after the
    # hangup handler has already written the job: read it once the header matches the file
    wait_until(lambda: wav_closed(recording), 10, f"MixMonitor to close {recording.name}")
    peak, rms = wav_peak_rms(recording)
    assert peak > 2000, (peak, rms)
    assert rms > 200, (peak, rms)
