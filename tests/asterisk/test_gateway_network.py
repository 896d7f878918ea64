"""The product's rendered gateway on a real Asterisk 22, on the network: behind the Elastic IP's 1:1 NAT
(the public address in the SDP and the Contact, audio both ways; and the same call failing without the NAT
settings), and a configuration reload under load that drops no call.

Every call follows the product's dialplan: a softphone (extension 1001, digest auth) dials an allowlisted
E.164 number, ``[outbound-allowlisted]``/``[dial-carrier]`` dial the carrier "pstn" (IP-authenticated), and
the carrier is a sipp UAS echoing RTP.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.asterisk import AsteriskInstance
from support.gateway import load_example, merge, render_gateway
from support.netns import ElasticIpTopology, in_ns
from support.rtp import RtpCounter, rtp_range
from support.sipp import Sipp, SippResult, auth_field, free_media_port, free_port, run_sipp, write_injection

AsteriskFactory = Callable[..., AsteriskInstance]
RtpCounterFactory = Callable[..., RtpCounter]

pytestmark = pytest.mark.asterisk

EXT_PASSWORD = "ext-1001-Secret"
EXT_SECRET_REF = "ssm:/demo/sip/ext-1001"
PUBLIC_IP = "203.0.113.10"


CALLED = "+14155550111"


def gateway_settings(carrier_ip: str, carrier_port: int, **overrides: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """The minimal example plus softphone 1001 and carrier "pstn" at ``carrier_ip`` (allowlist +1415),
    with ``overrides`` deep-merged."""
    settings, secrets = load_example("minimal")
    settings = merge(
        settings,
        {
            "extensions": [{"number": "1001", "password": EXT_SECRET_REF, "video": False}],
            "carriers": [
                {
                    "name": "pstn",
                    "host": carrier_ip,
                    "port": carrier_port,
                    "transport": "tcp",
                    "auth": "ip",
                    "match": [f"{carrier_ip}/32"],
                }
            ],
            "dialplan": {"outbound_allowlist": ["+1415"], "outbound_carrier": "pstn"},
        },
    )
    settings = merge(settings, overrides)
    return settings, {**secrets, EXT_SECRET_REF: EXT_PASSWORD}


def invite_answer(result: SippResult) -> str:
    """The 200 OK that answered the authenticated INVITE (CSeq 2), as sipp received it."""
    for chunk in re.split(r"message received \[\d+\] bytes :", result.messages.replace("\r\n", "\n"))[1:]:
        chunk = chunk.lstrip()
        head = chunk.split("\n\n", 1)[0]
        if "SIP/2.0 200 OK" in head and re.search(r"^CSeq:\s*2 INVITE", head, re.MULTILINE | re.IGNORECASE):
            return chunk.split("-----------------------------------------------", 1)[0]
    raise AssertionError(f"no 200 OK to the INVITE in sipp's trace\n{result.describe()}")


def _nat_call(
    asterisk_factory: AsteriskFactory,
    rtp_counter: RtpCounterFactory,
    topo: ElasticIpTopology,
    tmp_path: Path,
    *,
    with_nat: bool,
) -> tuple[SippResult, str, int, int]:
    carrier_ip = "198.51.100.51"
    settings, secrets = gateway_settings(
        carrier_ip,
        5070,
        network={
            "public_address": PUBLIC_IP,
            "local_nets": ["10.0.0.0/24"],
            "bind_address": topo.instance_ip(),
            "rtp_port_start": 20000,
            "rtp_port_end": 20100,
        },
    )
    if not with_nat:
        del settings["network"]["public_address"]
    label = "nat" if with_nat else "nonat"
    gateway = render_gateway(settings, secrets, tmp_path / f"gw-{label}")
    ast = asterisk_factory(gateway.asterisk_dir, netns=topo.instance_ns(), name=f"p5-{label}-{topo.prefix}")
    # the carrier: a second address outside, so it is not the softphone's (carriers are identified by IP)
    in_ns(topo.client, "ip", "addr", "add", f"{carrier_ip}/24", "dev", "eth0")
    uac_port, uas_port = 6000, 6100
    counter = rtp_counter((uac_port, uac_port), interface="eth0", netns=topo.client)
    uas = Sipp(
        "net_uas_answer.xml",
        tmp_path / f"uas-{label}",
        transport="t1",
        local_ip=carrier_ip,
        local_port=5070,
        media_port=uas_port,
        rtp_echo=True,
        netns=topo.client,
        global_timeout_s=40,
        extra_args=["-aa"],  # answer the gateway's qualify OPTIONS
    ).start()
    try:
        time.sleep(0.3)
        users = write_injection(tmp_path / f"users-{label}.csv", [["1001", auth_field("1001", EXT_PASSWORD)]])
        result = run_sipp(
            "uac_auth_pcap.xml",
            tmp_path / f"uac-{label}",
            remote=f"{topo.public_ip}:5060",
            transport="t1",
            local_ip=topo.client_ip,
            service=CALLED,
            inject=users,
            duration_ms=3000,
            media_port=uac_port,
            netns=topo.client,
            timeout=30,
        )
    finally:
        uas.stop()
    assert ast.running
    counts = counter.counts()
    return (
        result,
        invite_answer(result) if "SIP/2.0 200 OK" in result.messages else "",
        counts.from_range,
        counts.to_range,
    )


def test_nat_call_advertises_elastic_ip_and_audio_flows_both_ways(
    asterisk_factory: AsteriskFactory,
    topology_factory: Callable[..., ElasticIpTopology],
    rtp_counter: RtpCounterFactory,
    tmp_path: Path,
) -> None:
    # Given the rendered gateway in the instance namespace behind the 1:1 NAT of 203.0.113.10,
    # the agent's trunk (a sipp UAS echoing RTP) and a softphone both outside, at 198.51.100.50
    topo = topology_factory()
    assert topo.public_ip == PUBLIC_IP
    # When the softphone calls the agent extension through the Elastic IP
    result, answer, sent, back = _nat_call(asterisk_factory, rtp_counter, topo, tmp_path, with_nat=True)
    # Then the 200 OK names the public address in the SDP and the Contact, and audio flows both ways
    assert result.ok, result.describe()
    assert f"c=IN IP4 {PUBLIC_IP}" in answer, answer
    contact = re.search(r"^Contact:.*$", answer, re.MULTILINE | re.IGNORECASE)
    assert contact is not None, answer
    assert PUBLIC_IP in contact.group(0), answer
    assert topo.instance_ip() not in answer, answer
    assert sent >= 100, f"sipp sent too little RTP: {sent}"
    assert back >= 100, f"the echoed audio did not come back through the NAT: {back} packets"

    # Negative control: the same deployment without its public address renders no NAT settings,
    # and the same call then advertises the private address and gets no audio back
    topo2 = topology_factory()
    result2, answer2, sent2, back2 = _nat_call(asterisk_factory, rtp_counter, topo2, tmp_path, with_nat=False)
    assert "SIP/2.0 200 OK" in result2.messages, result2.describe()
    assert f"c=IN IP4 {topo2.instance_ip()}" in answer2, answer2
    contact2 = re.search(r"^Contact:.*$", answer2, re.MULTILINE | re.IGNORECASE)
    assert contact2 is not None, answer2
    assert topo2.instance_ip() in contact2.group(0), answer2
    assert f"c=IN IP4 {PUBLIC_IP}" not in answer2, answer2
    assert sent2 >= 100, f"sipp sent too little RTP: {sent2}"
    assert back2 < 10, f"audio came back although the SDP named the private address: {back2} packets"
    print(f"negative control: {contact2.group(0)!r}, c=IN IP4 {topo2.instance_ip()}, RTP back {back2} of {sent2}")


def _wait_channels(ast: AsteriskInstance, minimum: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = 0
    while time.monotonic() < deadline:
        match = re.search(r"(\d+) active call", ast.rx("core show channels count"))
        count = int(match.group(1)) if match else 0
        if count >= minimum:
            return count
        time.sleep(0.25)
    return count


def test_reload_with_calls_up_drops_none(
    asterisk_factory: AsteriskFactory, rtp_counter: RtpCounterFactory, tmp_path: Path
) -> None:
    calls = 20
    sip_port, tls_port = free_port(), free_port()
    uas_port, uas_media = free_port(), free_media_port()
    uac_media = free_media_port()
    gw_rtp = rtp_range(200)
    overrides: dict[str, Any] = {
        "network": {
            "bind_address": "127.0.0.1",
            "sip_port": sip_port,
            "tls_port": tls_port,
            "local_nets": ["127.0.0.0/8"],
            "rtp_port_start": gw_rtp[0],
            "rtp_port_end": gw_rtp[1],
        },
    }
    # Given the rendered gateway and an agent trunk (sipp UAS echoing RTP) on loopback
    settings, secrets = gateway_settings("127.0.0.2", uas_port, **overrides)
    gateway = render_gateway(settings, secrets, tmp_path / "gw-v1")
    assert "Dial(PJSIP/${EXTEN}@pstn,45," in gateway.file("extensions.conf")  # 45 s, then the pre-dial handler
    counter = rtp_counter(gw_rtp)
    uas = Sipp(
        "net_uas_answer.xml",
        tmp_path / "uas",
        transport="t1",
        local_ip="127.0.0.2",
        local_port=uas_port,
        media_port=uas_media,
        rtp_echo=True,
        calls=calls,
        global_timeout_s=60,
        extra_args=["-aa"],  # answer the gateway's qualify OPTIONS
    ).start()
    try:
        ast = asterisk_factory(gateway.asterisk_dir)
    except BaseException:
        uas.stop()
        raise
    users = write_injection(tmp_path / "users.csv", [["1001", auth_field("1001", EXT_PASSWORD)]])
    uac = Sipp(
        "uac_auth_pcap.xml",
        tmp_path / "uac",
        remote=f"127.0.0.1:{sip_port}",
        transport="t1",
        service=CALLED,
        inject=users,
        calls=calls,
        rate=10,
        limit=calls,
        duration_ms=20000,
        media_port=uac_media,
        global_timeout_s=60,
    ).start()
    try:
        # When all calls are up (two channels each), with RTP flowing
        up = _wait_channels(ast, calls, timeout=15)
        assert up >= calls, f"only {up} calls up\n{ast.rx('core show channels')}"
        time.sleep(1)
        before = counter.counts()
        assert before.from_range > 0, before
        assert before.to_range > 0, before
        # ... and a changed dialplan (other dial timeout, a new DID) is rendered, installed and reloaded
        changed = merge(
            settings,
            {"dialplan": {"dial_timeout_s": 33, "did_routes": {"+14155550199": {"kind": "agent"}}}},
        )
        gateway2 = render_gateway(changed, secrets, tmp_path / "gw-v2")
        assert gateway2.rendered.version != gateway.rendered.version
        for name in ("extensions.conf", "pjsip.conf"):
            shutil.copyfile(gateway2.asterisk_dir / name, ast.etc_dir / name)
        ast.rx("dialplan reload")
        ast.rx("module reload res_pjsip.so")
        # Then the new dialplan is active ...
        route = ast.rx("dialplan show dial-carrier")
        assert "@pstn,33," in route, route
        assert "+14155550199" in ast.rx("dialplan show from-carrier"), ast.rx("dialplan show from-carrier")
        # ... while every call stays up and keeps its media
        time.sleep(2)
        still = _wait_channels(ast, calls, timeout=1)
        assert still == up, f"{up} calls before the reload, {still} after\n{ast.rx('core show channels')}"
        after = counter.counts()
        assert after.from_range - before.from_range > calls * 50, (before, after)
        assert after.to_range - before.to_range > calls * 50, (before, after)
        result = uac.wait(timeout=60)
    finally:
        uac.kill()
        uas_result = uas.stop()
    # And sipp saw every call complete (answered, 20 s of audio, BYE answered)
    assert result.ok, result.describe()
    assert (result.successful, result.failed) == (calls, 0), result.describe()
    assert uas_result.successful == calls, uas_result.describe()
