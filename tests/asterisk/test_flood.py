"""A flood of unauthenticated INVITEs does not hurt the calls that are up.

Twenty authenticated calls carry RTP through the product's rendered gateway (a softphone dialling an
allowlisted number through a carrier that echoes the audio) while a stranger sends a bounded burst of
INVITEs without credentials. Every call stays up to its end, its media keeps its rate during the burst,
and every flooding INVITE is only ever challenged: none gets a channel. The gateway's own share is what it
relays of the RTP it receives during the burst; the rate itself also depends on the generators, which share
the machine's cores.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.asterisk import AsteriskInstance
from support.gateway import load_example, merge, render_gateway
from support.rtp import RtpCounter, rtp_range
from support.sipp import Sipp, auth_field, free_media_port, free_port, write_injection

AsteriskFactory = Callable[..., AsteriskInstance]
RtpCounterFactory = Callable[..., RtpCounter]

pytestmark = pytest.mark.asterisk

EXT_PASSWORD = "ext-1001-Secret"
EXT_SECRET_REF = "ssm:/demo/sip/ext-1001"
CALLED = "+14155550111"
CALLS = 20
FLOOD_RATE = 200  # INVITEs per second
FLOOD_REQUESTS = 1000
RELAYED = 0.98  # share of the RTP the gateway receives that it relays during the burst
MEDIA_KEPT = 0.8  # share of the calls' RTP rate during the burst (the generators share the machine's cores)


def _count(ast: AsteriskInstance, what: str) -> int:
    """``core show channels count``'s active channels or calls (a call here is two channels)."""
    match = re.search(rf"(\d+) active {what}", ast.rx("core show channels count"))
    return int(match.group(1)) if match else 0


def _wait_calls(ast: AsteriskInstance, minimum: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while (count := _count(ast, "call")) < minimum and time.monotonic() < deadline:
        time.sleep(0.25)
    return count


def _rtp_rate(counter: RtpCounter, seconds: float) -> float:
    """Packets per second through the gateway's RTP ports, both directions, over ``seconds``."""
    before = counter.counts()
    time.sleep(seconds)
    after = counter.counts()
    return (after.from_range - before.from_range + after.to_range - before.to_range) / seconds


def test_calls_keep_their_media_through_a_flood_of_unauthenticated_invites(
    asterisk_factory: AsteriskFactory, rtp_counter: RtpCounterFactory, tmp_path: Path
) -> None:
    sip_port, tls_port = free_port(), free_port()
    uas_port, uas_media = free_port(), free_media_port()
    uac_media = free_media_port()
    gw_rtp = rtp_range(200)
    settings, secrets = load_example("minimal")
    overrides: dict[str, Any] = {
        "network": {
            "bind_address": "127.0.0.1",
            "sip_port": sip_port,
            "tls_port": tls_port,
            "local_nets": ["127.0.0.0/8"],
            "rtp_port_start": gw_rtp[0],
            "rtp_port_end": gw_rtp[1],
        },
        "extensions": [{"number": "1001", "password": EXT_SECRET_REF, "video": False}],
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
    }
    settings = merge(settings, overrides)
    gateway = render_gateway(settings, {**secrets, EXT_SECRET_REF: EXT_PASSWORD}, tmp_path / "gw")
    counter = rtp_counter(gw_rtp)
    # Given twenty calls up through the gateway, their audio echoed by the carrier
    carrier = Sipp(
        "net_uas_answer.xml",
        tmp_path / "carrier",
        transport="t1",
        local_ip="127.0.0.2",
        local_port=uas_port,
        media_port=uas_media,
        rtp_echo=True,
        calls=CALLS,
        global_timeout_s=90,
        extra_args=["-aa"],
    ).start()
    flood: Sipp | None = None
    try:
        ast = asterisk_factory(gateway.asterisk_dir)
        users = write_injection(tmp_path / "users.csv", [["1001", auth_field("1001", EXT_PASSWORD)]])
        softphone = Sipp(
            "uac_auth_pcap.xml",
            tmp_path / "softphone",
            remote=f"127.0.0.1:{sip_port}",
            transport="t1",
            service=CALLED,
            inject=users,
            calls=CALLS,
            rate=10,
            limit=CALLS,
            duration_ms=20000,
            media_port=uac_media,
            global_timeout_s=90,
        ).start()
        try:
            up = _wait_calls(ast, CALLS, timeout=20)
            assert up >= CALLS, f"only {up} calls up\n{ast.rx('core show channels')}"
            time.sleep(1)
            calm = _rtp_rate(counter, 2.0)
            # When a stranger sends a burst of INVITEs without credentials
            flood = Sipp(
                "uac_noauth.xml",
                tmp_path / "flood",
                remote=f"127.0.0.1:{sip_port}",
                transport="t1",
                local_ip="127.0.0.5",
                service="100",
                keys={"from_user": "100"},
                calls=FLOOD_REQUESTS,
                rate=FLOOD_RATE,
                limit=FLOOD_REQUESTS,
                global_timeout_s=40,
                trace_messages=False,
            ).start()
            time.sleep(0.5)
            before = counter.counts()
            most, started = 0, time.monotonic()
            while time.monotonic() - started < 2.0:
                most = max(most, _count(ast, "channel"))
                time.sleep(0.2)
            after = counter.counts()
            received, relayed = after.to_range - before.to_range, after.from_range - before.from_range
            flooded = (received + relayed) / (time.monotonic() - started)
            flood_result = flood.wait(timeout=45)
            # Then every call is still up and kept its media rate during the burst
            still = _count(ast, "call")
            assert still >= CALLS, f"{up} calls before the flood, {still} after"
            assert relayed >= RELAYED * received, f"the gateway relayed {relayed} of {received} RTP packets"
            assert flooded >= MEDIA_KEPT * calm, f"RTP {calm:.0f} packets/s before, {flooded:.0f} during the flood"
            result = softphone.wait(timeout=60)
        finally:
            softphone.kill()
    finally:
        if flood is not None:
            flood.kill()
        carrier_result = carrier.stop()
    # And every call completed, while the flood was only ever challenged and reached no context
    assert (result.successful, result.failed) == (CALLS, 0), result.describe()
    assert carrier_result.successful == CALLS, carrier_result.describe()
    assert flood_result.successful == FLOOD_REQUESTS, flood_result.describe()
    assert most <= 2 * CALLS, f"a flooding INVITE got a channel: {most} channels for {CALLS} calls"
    print(
        f"{CALLS} calls up: RTP {calm:.0f} packets/s before, {flooded:.0f} during {FLOOD_REQUESTS} INVITEs at "
        f"{FLOOD_RATE}/s ({flood_result.elapsed:.1f} s), relaying {relayed} of {received} packets received; "
        "every flooding INVITE challenged"
    )
