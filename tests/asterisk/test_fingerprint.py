"""Nothing a stranger reads from the gateway names the software behind it.

A scanner learns the PBX from the digest realm (Asterisk's default is "asterisk"), the Server and User-Agent
headers, the From user of requests without a caller, and the SDP session name, and then tries that PBX's known
weaknesses. Every message the real Asterisk sends with the product's rendered config is read here: the
challenge and the answer a softphone gets, the answer to an OPTIONS from anybody, and the INVITE and qualify
OPTIONS a carrier gets.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.asterisk import AsteriskInstance
from support.gateway import load_example, merge, render_gateway
from support.netns import ElasticIpTopology, in_ns
from support.sipp import Sipp, auth_field, received_messages, run_sipp, write_injection

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

EXT_PASSWORD = "ext-1001-Secret"
EXT_SECRET_REF = "ssm:/demo/sip/ext-1001"
CARRIER_IP = "198.51.100.51"
CALLED = "+14155550111"
# What names the software: Asterisk itself, and this product's name.
NAMES = re.compile(r"asterisk|aws-sip-trunk|pjsip|digium", re.IGNORECASE)
# Asterisk's defaults the product replaces; the negative control puts them back.
IDENTITY_LINES = re.compile(r"^(user_agent|default_realm|default_from_user|sdp_session) = .*\n", re.MULTILINE)


def _messages_seen(
    asterisk_factory: AsteriskFactory, topo: ElasticIpTopology, tmp_path: Path, *, product_identity: bool
) -> dict[str, str]:
    """Everything the gateway sent to a softphone (challenge, answer), a stranger (OPTIONS) and a carrier."""
    settings, secrets = load_example("minimal")
    settings = merge(
        settings,
        {
            "extensions": [{"number": "1001", "password": EXT_SECRET_REF, "video": False}],
            "carriers": [
                {
                    "name": "pstn",
                    "host": CARRIER_IP,
                    "port": 5070,
                    "transport": "tcp",
                    "auth": "ip",
                    "match": [f"{CARRIER_IP}/32"],
                }
            ],
            "dialplan": {"outbound_allowlist": ["+1415"], "outbound_carrier": "pstn"},
            "network": {"bind_address": topo.instance_ip(), "rtp_port_start": 20000, "rtp_port_end": 20100},
        },
    )
    label = "product" if product_identity else "defaults"
    gateway = render_gateway(settings, {**secrets, EXT_SECRET_REF: EXT_PASSWORD}, tmp_path / f"gw-{label}")
    if not product_identity:
        pjsip = gateway.asterisk_dir / "pjsip.conf"
        pjsip.write_text(IDENTITY_LINES.sub("", pjsip.read_text()))
    asterisk_factory(gateway.asterisk_dir, netns=topo.instance_ns(), name=f"fp-{label}-{topo.prefix}")
    in_ns(topo.client, "ip", "addr", "add", f"{CARRIER_IP}/24", "dev", "eth0")
    carrier = Sipp(
        "net_uas_answer.xml",
        tmp_path / f"carrier-{label}",
        transport="t1",
        local_ip=CARRIER_IP,
        local_port=5070,
        media_port=6100,
        rtp_echo=True,
        netns=topo.client,
        global_timeout_s=40,
        extra_args=["-aa"],  # answers the gateway's qualify OPTIONS
    ).start()
    try:
        time.sleep(0.3)
        users = write_injection(tmp_path / f"users-{label}.csv", [["1001", auth_field("1001", EXT_PASSWORD)]])
        softphone = run_sipp(
            "uac_auth_pcap.xml",
            tmp_path / f"softphone-{label}",
            remote=f"{topo.public_ip}:5060",
            transport="t1",
            local_ip=topo.client_ip,
            service=CALLED,
            inject=users,
            duration_ms=1000,
            media_port=6000,
            netns=topo.client,
            timeout=30,
        )
        stranger = run_sipp(
            "options.xml",
            tmp_path / f"stranger-{label}",
            remote=f"{topo.public_ip}:5060",
            transport="t1",
            local_ip=topo.client_ip,
            inject=write_injection(tmp_path / f"stranger-{label}.csv", [["scanner", "[authentication]"]]),
            netns=topo.client,
            timeout=15,
        )
    finally:
        carrier_result = carrier.stop()
    assert softphone.ok, softphone.describe()
    assert "WWW-Authenticate" in softphone.messages, softphone.describe()
    assert "SIP/2.0 200 OK" in softphone.messages, softphone.describe()
    # the stranger is challenged (anonymous OPTIONS are not answered): the challenge is what it reads
    assert any(m.startswith("SIP/2.0 401") for m in received_messages(stranger.messages)), stranger.describe()
    assert re.search(r"^INVITE sip:", carrier_result.messages, re.MULTILINE), carrier_result.describe()
    return {"softphone": softphone.messages, "stranger": stranger.messages, "carrier": carrier_result.messages}


def _names(seen: dict[str, str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for peer, trace in seen.items():
        for message in received_messages(trace):
            for line in message.splitlines():
                if NAMES.search(line):
                    found.setdefault(peer, []).append(line)
    return found


def test_nothing_the_gateway_sends_names_the_software(
    asterisk_factory: AsteriskFactory, topology_factory: Callable[..., ElasticIpTopology], tmp_path: Path
) -> None:
    # Given the product's rendered gateway, a softphone, a stranger and a carrier outside
    # When the softphone is challenged and calls the carrier, and the stranger sends OPTIONS
    seen = _messages_seen(asterisk_factory, topology_factory(), tmp_path, product_identity=True)
    # Then no line of anything the gateway sent names Asterisk or the product
    assert _names(seen) == {}, _names(seen)
    challenges = re.findall(r"^WWW-Authenticate:.*$", seen["softphone"], re.MULTILINE | re.IGNORECASE)
    assert challenges, seen["softphone"]
    assert all('realm="sip"' in c for c in challenges), challenges
    assert re.search(r"^s=-$", "\n".join(received_messages(seen["carrier"])), re.MULTILINE), (
        "the SDP session is unnamed"
    )

    # Negative control: with Asterisk's defaults back, the same exchanges name it
    defaults = _names(_messages_seen(asterisk_factory, topology_factory(), tmp_path, product_identity=False))
    joined = "\n".join(line for lines in defaults.values() for line in lines)
    assert 'realm="asterisk"' in joined, defaults
    assert "s=Asterisk" in joined, defaults
    assert re.search(r"^(Server|User-Agent): Asterisk", joined, re.MULTILINE), defaults
    print(f"with Asterisk's defaults: {sum(map(len, defaults.values()))} lines name it, e.g. {joined[:300]!r}")
