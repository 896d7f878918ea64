"""The headers the agent puts on its BYE reach the call record, checked, through the real Asterisk's HEP copies.

Asterisk 22.10.1 gives the dialplan only the INVITE's headers: ``PJSIP_HEADER(read,…)`` reads what
``res_pjsip_header_funcs`` stored from the INVITE (its session supplement handles that method only), and no
module stores a BYE's. ``res_hep_pjsip`` does copy every SIP message out (HEP v3 over UDP), so the gateway sends
them to the host agent on the namespace's loopback, the agent's ``bye-headers`` command (the product's service,
run here as a process in the namespace) keeps each BYE's checked X- headers, and ``ship-calls`` adds them to the
record of the leg whose SIP Call-ID they carry (:func:`sip_trunk.callrecords.with_agent_headers`).

The agent is sipp (``el_uas_bye_headers.xml``): Asterisk itself cannot put headers on a BYE, ElevenLabs does
(``X-Conversation-ID`` and the number's ``attributes_to_headers``). The carrier calls, the agent hangs up after
6.5 s with ``X-Conversation-ID``, ``X-Call-Outcome`` and a hostile ``X-Agent-Note``.
Negative control: the same call with ``res_hep_pjsip`` not loaded leaves a record without the headers although the
agent sent them (its trace shows the BYE), and a hangup handler on the agent leg that reads
``PJSIP_HEADER(read,X-Conversation-ID)`` logs an empty value: the dialplan alone never sees them.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sip_trunk.agent import calls
from sip_trunk.callrecords import with_agent_headers
from standin import ELEVENLABS_HOST, hosts_file, use_private_hosts, wait_for
from support.asterisk import AsteriskInstance
from support.deploy import load_template
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.netns import NamespaceSet
from support.rtp import rtp_range
from support.sipp import Sipp, SippResult, free_media_port, run_sipp, scenario_path

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

GATEWAY_IP, AGENT_IP, CARRIER_IP = "127.0.0.1", "127.0.0.3", "127.0.0.5"
GATEWAY_SIP, AGENT_SIP, CARRIER_SIP, CARRIER_MEDIA = 5060, 5062, 5064, 6000
PCAP = Path("/usr/share/sip-tester/g711a.pcap")
CONVERSATION = "conv_01jx7Hk2-a.b"
OUTCOME = "resolved"
HOSTILE_NOTE = 'a" ,{"injected":1}'
PROBE = "BYE-HEADER-PROBE"


@pytest.fixture
def namespace() -> Iterator[str]:
    with NamespaceSet() as nss:
        yield nss.add("bye")


@dataclass
class AgentEndedCall:
    record: dict[str, Any]
    spool: Path
    agent: SippResult
    gateway: AsteriskInstance


def bye_headers_service(ns: str, spool: Path, log: Path) -> subprocess.Popen[bytes]:
    """The host agent's ``bye-headers`` service, in the namespace (its loopback is the gateway's)."""
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "sip_trunk.agent", "bye-headers", "--for-seconds", "60"],
            env={"SIP_TRUNK_CALL_RECORDS_DIR": str(spool), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    assert wait_for(lambda: b"listening" in log.read_bytes() or proc.poll() is not None, 10.0)
    assert proc.poll() is None, log.read_text()
    return proc


def agent_ends_call(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    ns: str,
    *,
    hep: bool = True,
    edit: Callable[[str, str], str] | None = None,
) -> AgentEndedCall:
    settings, secrets = load_example("minimal")
    el = settings["elevenlabs"]
    gateway = asterisk_factory(None, netns=ns, start=False)
    base = gateway.chroot_base
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": AGENT_SIP},
            "network": loopback_network(GATEWAY_IP, GATEWAY_SIP, rtp_range()),
            "carriers": [ip_carrier(CARRIER_IP, CARRIER_SIP, [el["phone_number"]])],
            "dialplan": {"call_records": True, "call_records_dir": f"{base}/calls"},
        },
    )
    gateway.config_dir = render_gateway(settings, secrets, tmp_path / "gateway").asterisk_dir
    for name in ("modules.conf", "extensions.conf"):
        path = gateway.config_dir / name
        path.write_text((edit or (lambda _n, t: t))(name, path.read_text()))
    if not hep:
        modules = gateway.config_dir / "modules.conf"
        modules.write_text(modules.read_text().replace("load = res_hep_pjsip.so\n", ""))
    gateway.extra_files = {"hosts": hosts_file({ELEVENLABS_HOST: AGENT_IP})}
    use_private_hosts(gateway)
    gateway.prepare()
    spool = gateway.host_path(f"{base}/calls")
    spool.mkdir(parents=True)
    gateway.start(prepare=False)
    receiver = bye_headers_service(ns, spool, tmp_path / "bye-headers.log")
    agent = Sipp(
        "el_uas_bye_headers.xml",
        tmp_path / "agent",
        transport="t1",
        local_ip=AGENT_IP,
        local_port=AGENT_SIP,
        media_port=free_media_port(AGENT_IP),
        rtp_echo=True,
        duration_ms=6500,  # the agent talks 6.5 s (after the carrier's re-INVITE window), then hangs up
        keys={"conversation": CONVERSATION, "outcome": OUTCOME, "note": HOSTILE_NOTE},
        netns=ns,
        global_timeout_s=40,
    )
    try:
        agent.start()
        scenario = tmp_path / "carrier.xml"
        scenario.write_text(scenario_path("carrier_call_far_bye.xml").read_text().replace("@PCAP@", str(PCAP)))
        carrier = run_sipp(
            scenario,
            tmp_path / "carrier",
            remote=f"{GATEWAY_IP}:{GATEWAY_SIP}",
            transport="t1",
            local_ip=CARRIER_IP,
            local_port=CARRIER_SIP,
            service=el["phone_number"],
            keys={"caller": "+442071838750"},
            media_port=CARRIER_MEDIA,
            netns=ns,
            timeout=40,
        )
        agent_result = agent.wait(timeout=20)
        assert carrier.ok, carrier.describe()
        assert agent_result.ok, agent_result.describe()

        def records() -> list[dict[str, Any]]:
            return [
                json.loads(line)
                for path in sorted(spool.glob("calls-*.jsonl"))
                for line in path.read_text().splitlines()
            ]

        assert wait_for(records, 5.0), "no call record:\n" + gateway.log_text("messages")[-3000:]
        (record,) = records()
    finally:
        agent.kill()
        receiver.terminate()
        receiver.wait(timeout=10)
    return AgentEndedCall(record=record, spool=spool, agent=agent_result, gateway=gateway)


def test_the_agents_bye_headers_reach_the_record_checked(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given the gateway with call records (and so HEP to the host agent), and the agent's bye-headers service
    # When the carrier calls the agent, and the agent ends the call with its BYE headers
    call = agent_ends_call(asterisk_factory, tmp_path, namespace)
    record = with_agent_headers(call.record, calls.load_bye_headers(call.spool))
    print(f"kept: {[p.read_text() for p in call.spool.glob('agent-headers-*.jsonl')]}")
    print(f"record: conversation_id={record['conversation_id']!r} agent_headers={record['agent_headers']!r}")
    # Then the record has the conversation id as its own field and the other X- header in the map; the hostile
    # value was dropped whole (a quote, a space, a brace), not repaired
    assert record["conversation_id"] == CONVERSATION
    assert record["agent_headers"] == {"x-call-outcome": OUTCOME}
    assert record["route"] == "agent"
    assert record["hangup_by"].startswith("PJSIP/elevenlabs-")
    # and they are joined to the agent's leg by its SIP Call-ID: the one the BYE carried
    bye = re.search(r"^BYE .*?^Call-ID:\s*(\S+)", call.agent.messages, re.MULTILINE | re.DOTALL)
    assert bye is not None
    assert record["callee_leg"]["sip_call_id"] == bye.group(1)
    # and what the agent ships of it has exactly the Athena table's columns
    table = load_template()["Resources"]["CallRecordsTable"]["Properties"]["TableInput"]
    assert set(calls.with_media(record)) == {c["Name"] for c in table["StorageDescriptor"]["Columns"]}


def test_negative_control_without_hep_the_record_has_no_bye_headers(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given res_hep_pjsip not loaded, and a hangup handler on the agent leg that reads the header with
    # PJSIP_HEADER (what the dialplan alone can do)
    def probe(name: str, text: str) -> str:
        if name != "extensions.conf":
            return text
        old = "[call-record-callee-end]\nexten => s,1,"
        assert old in text
        return text.replace(old, f"{old}Log(NOTICE,{PROBE} [${{PJSIP_HEADER(read,X-Conversation-ID)}}])\n same => n,")

    call = agent_ends_call(asterisk_factory, tmp_path, namespace, hep=False, edit=probe)
    # Then the agent did send its headers on the BYE
    assert f"X-Conversation-ID: {CONVERSATION}" in call.agent.messages
    # but the dialplan read nothing from the BYE, and the record has no conversation id or agent header
    probes = re.findall(rf"{PROBE} \[(.*?)\]", call.gateway.log_text("messages"))
    assert probes == [""], probes
    record = with_agent_headers(call.record, calls.load_bye_headers(call.spool))
    assert (record["conversation_id"], record["agent_headers"]) == (None, {})
    assert not list(call.spool.glob("agent-headers-*.jsonl"))
