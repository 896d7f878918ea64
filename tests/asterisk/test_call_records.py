"""One JSON record per call, written by the real Asterisk at hangup, with each leg's media quality.

Everything runs in one network namespace the test creates (its own loopback): the carrier (sipp, G.711
A-law from a pcap), the gateway rendered from examples/minimal.yaml, and the ElevenLabs stand-in's holder
Asterisk, which answers and plays a prompt in a loop (its own stream, so the two directions of the
outbound leg are independent). iptables in that namespace drops a random 5 % of one direction of the
outbound leg; the gateway measures what it receives itself (``rx``) and learns what the holder received
from the holder's RTCP receiver reports (``tx``). The impaired direction must show the loss within the
stated tolerance, every other leg and direction none. Controls: the same call unimpaired is clean, and with
``dialplan.call_records`` off the call still works and no record is written.

This machine's kernel has no ``sch_netem`` (no ``tc netem``): jitter is induced at the source instead, by a
re-timed pcap, in test_call_record_jitter.py; here the jitter figures are asserted small on clean paths.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sip_trunk.agent import calls
from sip_trunk.callrecords import MEDIA_OK, ONE_WAY_IN, media_state
from standin import CONFIG_DIR as STANDIN_CONFIG_DIR
from standin import ELEVENLABS_HOST, hosts_file, use_private_hosts, wait_for
from support.asterisk import AsteriskInstance
from support.deploy import load_template
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.netns import NamespaceSet, in_ns
from support.rtp import rtp_range
from support.sipp import SippResult, run_sipp, scenario_path

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

GATEWAY_IP = "127.0.0.1"
HOLDER_IP = "127.0.0.3"
CARRIER_IP = "127.0.0.5"
GATEWAY_SIP, HOLDER_SIP, CARRIER_SIP, CARRIER_MEDIA = 5060, 5062, 5064, 6000
PCAP = Path("/usr/share/sip-tester/g711a.pcap")
CALLER = "+442071838750"
LOSS = 0.05  # induced on one direction
PDD_TEARDOWN_MS = 100
# 5 % of ~200-400 packets is 10-20 with a binomial spread of about 3-4: the measured fraction must lie within
# 1.5 %..10 % (about 3.5 standard deviations either side); a clean direction must lose nothing.
LOSS_RANGE = (0.015, 0.10)
HOLDER_EXTENSIONS = """[general]
static = yes
writeprotect = yes
autofallthrough = yes

[agent]
exten => {{E164}},1,Log(NOTICE,STANDIN-AGENT-CALL ruri_user=${EXTEN} from=${CALLERID(num)})
 same => n,Answer()
 same => n,Set(TIMEOUT(absolute)={{HOLD_S}})
 same => n(loop),Playback(demo-instruct)
 same => n,Goto(loop)
"""
RECORD_KEYS = {
    "v", "call_id", "start", "setup_ms", "answer_ms", "end_ms", "pdd_ms", "entry", "caller", "called", "route",
    "target", "carrier", "disposition", "hangup_by", "transfer", "caller_leg", "callee_leg",
}  # fmt: skip
LEG_KEYS = {"call_id", "channel", "endpoint", "sip_call_id", "codec", "hangup_cause", "rx", "tx", "rtt_s"}


@dataclass
class Call:
    gateway: AsteriskInstance
    base: str
    result: SippResult
    e164: str

    def record_files(self) -> list[Path]:
        return sorted(self.gateway.host_path(f"{self.base}/calls").glob("calls-*.jsonl"))

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for path in self.record_files() for line in path.read_text().splitlines()]


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace of the test's own: its loopback carries every packet, and its iptables touch nothing else."""
    with NamespaceSet() as nss:
        yield nss.add("calls")


def place_call(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    ns: str,
    *,
    records: bool = True,
    drop: str | None = None,
    caller: str = CALLER,
    agent_hangs_up: bool = False,
    loss: float = LOSS,
    pcap: Path = PCAP,
) -> Call:
    """carrier -> gateway -> holder, ~8 s; ``drop`` = "to-agent" / "from-agent" loses ``loss`` of that direction."""
    settings, secrets = load_example("minimal")
    el = settings["elevenlabs"]
    gw_rtp, holder_rtp = rtp_range(), rtp_range()
    asterisk_factory(
        STANDIN_CONFIG_DIR,
        netns=ns,
        variables={
            "HOLDER_IP": HOLDER_IP, "SIP_PORT": str(HOLDER_SIP),
            "RTP_START": str(holder_rtp[0]), "RTP_END": str(holder_rtp[1]), "E164": el["phone_number"],
            "GATEWAY_OUT_USER": el["outbound_username"], "GATEWAY_OUT_PASSWORD": secrets[el["outbound_password"]],
            "GATEWAY_IN_USER": el["inbound_username"], "GATEWAY_IN_PASSWORD": secrets[el["inbound_password"]],
            "GATEWAY_IP": GATEWAY_IP, "GATEWAY_PORT": str(GATEWAY_SIP),
            # the agent ends the call after 9 s, or never (the carrier hangs up first)
            "HOLD_S": "9" if agent_hangs_up else "0",
        },
        extra_files={
            "extensions.conf": HOLDER_EXTENSIONS,
            # the holder reports its reception every second (Asterisk's default is every 5 s)
            "rtp.conf": f"[general]\nrtpstart={holder_rtp[0]}\nrtpend={holder_rtp[1]}\nrtcpinterval=1000\n",
        },
    )  # fmt: skip
    gateway = asterisk_factory(None, netns=ns, start=False)
    base = gateway.chroot_base
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": HOLDER_SIP},
            "network": loopback_network(GATEWAY_IP, GATEWAY_SIP, gw_rtp),
            "carriers": [ip_carrier(CARRIER_IP, CARRIER_SIP, [el["phone_number"]])],
            "dialplan": {"call_records": records, "call_records_dir": f"{base}/calls"},
        },
    )
    gateway.config_dir = render_gateway(settings, secrets, tmp_path / f"gateway-{ns}").asterisk_dir
    gateway.extra_files = {"hosts": hosts_file({ELEVENLABS_HOST: HOLDER_IP})}
    use_private_hosts(gateway)
    gateway.prepare()
    gateway.host_path(f"{base}/calls").mkdir(parents=True)
    gateway.start(prepare=False)
    holder_ports = f"{holder_rtp[0]}:{holder_rtp[1]}"
    if drop is not None:
        match = {"to-agent": ["--dport", holder_ports], "from-agent": ["--sport", holder_ports]}[drop]
        in_ns(ns, "iptables", "-A", "OUTPUT", "-p", "udp", *match,
              "-m", "statistic", "--mode", "random", "--probability", str(loss), "-j", "DROP")  # fmt: skip
    scenario = tmp_path / "carrier.xml"
    name = "carrier_call_far_bye.xml" if agent_hangs_up else "rec_carrier_call.xml"
    scenario.write_text(scenario_path(name).read_text().replace("@PCAP@", str(pcap)))
    result = run_sipp(
        scenario,
        tmp_path / f"carrier-{ns}",
        remote=f"{GATEWAY_IP}:{GATEWAY_SIP}",
        transport="t1",
        local_ip=CARRIER_IP,
        local_port=CARRIER_SIP,
        service=el["phone_number"],
        keys={"caller": caller},
        duration_ms=8000,
        media_port=CARRIER_MEDIA,
        netns=ns,
        timeout=40,
    )
    assert result.ok, result.describe()
    return Call(gateway=gateway, base=base, result=result, e164=el["phone_number"])


def one_record(call: Call) -> dict[str, Any]:
    assert wait_for(call.records, 5.0), "no call record:\n" + call.gateway.log_text("messages")[-3000:]
    (record,) = call.records()
    (path,) = call.record_files()
    print(f"record ({path.stat().st_size} bytes): {json.dumps(record)}")
    return record


def loss(direction: dict[str, Any]) -> float:
    """The lost fraction of a direction: lost / (packets + lost), ``packets`` being what arrived."""
    lost, packets = direction["lost"], direction["packets"]
    return float(lost) / (packets + lost) if packets + lost else 0.0


def assert_complete(record: dict[str, Any], call: Call, *, hung_up_by: str = "carrier") -> None:
    assert set(record) == RECORD_KEYS, record
    expected = {
        "v": 1, "entry": "carrier", "carrier": "carrier", "caller": CALLER, "called": call.e164, "route": "agent",
        "target": call.e164, "disposition": "ANSWER",
    }  # fmt: skip
    assert {k: record[k] for k in expected} == expected, record
    assert record["transfer"] == {"target": "", "outcome": "none"}, record  # no transfer asked
    assert record["setup_ms"] <= record["answer_ms"] < record["end_ms"]
    # the carrier played its ~4.7 s pcap, then held the call 8 s more; or the agent ended it after 9 s
    low, high = (11000, 16000) if hung_up_by == "carrier" else (8500, 11000)
    assert low <= record["end_ms"] - record["answer_ms"] <= high, record
    # post-dial delay is Dial's time less the talk time; Dial's time also holds the bridge's teardown, a few
    # ms (tens under load) that setup_ms/answer_ms, read from clock times, do not
    assert 0 <= record["pdd_ms"] <= record["answer_ms"] - record["setup_ms"] + PDD_TEARDOWN_MS
    assert record["hangup_by"].startswith(f"PJSIP/{'carrier' if hung_up_by == 'carrier' else 'elevenlabs'}-")
    caller_leg, callee_leg = record["caller_leg"], record["callee_leg"]
    assert (set(caller_leg), set(callee_leg)) == (LEG_KEYS, LEG_KEYS)
    assert (caller_leg["endpoint"], callee_leg["endpoint"]) == ("carrier", "elevenlabs")
    assert caller_leg["codec"] == "alaw"
    assert callee_leg["codec"] in {"ulaw", "alaw", "g722"}
    assert (caller_leg["hangup_cause"], callee_leg["hangup_cause"]) == (16, 16)  # normal clearing
    # the SIP Call-IDs of both legs: the carrier's own, and the one the gateway chose toward the agent
    sipp_call_id = re.search(r"^Call-ID:\s*(\S+)", call.result.messages, re.MULTILINE | re.IGNORECASE)
    assert sipp_call_id is not None
    assert caller_leg["sip_call_id"] == sipp_call_id.group(1)
    assert callee_leg["sip_call_id"]
    assert callee_leg["sip_call_id"] != caller_leg["sip_call_id"]
    # the gateway's call id is the inbound leg's UNIQUEID, and the outbound leg inherited it as CALL_ID
    assert re.fullmatch(r"[\w.-]+-\d+\.\d+", record["call_id"]), record["call_id"]
    assert caller_leg["call_id"] == callee_leg["call_id"] == record["call_id"]
    # media both ways on both legs (the carrier plays ~4.7 s, the holder talks the whole ~13 s)
    assert caller_leg["rx"]["packets"] >= 150, caller_leg
    assert caller_leg["tx"]["packets"] >= 300, caller_leg
    assert callee_leg["rx"]["packets"] >= 300, callee_leg
    assert callee_leg["tx"]["packets"] >= 150, callee_leg


def figures(record: dict[str, Any]) -> str:
    parts = []
    for name in ("caller_leg", "callee_leg"):
        leg = record[name]
        for way in ("rx", "tx"):
            d = leg[way]
            parts.append(
                f"{name}.{way}: packets={d['packets']} lost={d['lost']} jitter_s={d['jitter_s']} mes={d['mes']}"
            )
        parts.append(f"{name}.rtt_s={leg['rtt_s']}")
    return "\n".join(parts)


def test_clean_call_leaves_one_complete_record(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given the gateway with call records on and no impairment
    # When the carrier calls the agent's number for ~8 s
    call = place_call(asterisk_factory, tmp_path, namespace)
    # Then exactly one record describes the call, and no leg or direction lost anything
    record = one_record(call)
    print(figures(record))
    assert_complete(record, call)
    callee = record["callee_leg"]
    assert (record["caller_leg"]["rx"]["lost"], callee["rx"]["lost"], callee["tx"]["lost"]) == (0, 0, 0)
    # the holder's receiver reports reached the gateway: a round-trip time, and media scores near the top
    assert 0 < callee["rtt_s"] < 0.05, callee
    assert min(callee["tx"]["mes"], callee["rx"]["mes"]) > 85, callee
    assert max(callee["tx"]["jitter_s"], callee["rx"]["jitter_s"]) < 0.01, callee
    # and the host agent's media verdict on these figures is ok (the control of the one-way proof below)
    assert media_state(record) == MEDIA_OK
    # and what the agent ships of this real record has exactly the Athena table's columns
    table = load_template()["Resources"]["CallRecordsTable"]["Properties"]["TableInput"]
    assert set(calls.with_media(record)) == {c["Name"] for c in table["StorageDescriptor"]["Columns"]}


def test_audio_lost_one_way_is_judged_one_way(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given every packet from the agent to the gateway dropped (a NAT or firewall that blocks one direction)
    # When the carrier calls the agent's number for ~8 s
    call = place_call(asterisk_factory, tmp_path, namespace, drop="from-agent", loss=1.0)
    record = one_record(call)
    print(figures(record))
    # Then the record shows nothing received from the agent, while the caller's audio reached it
    callee = record["callee_leg"]
    assert callee["rx"]["packets"] == 0, figures(record)
    assert record["caller_leg"]["rx"]["packets"] >= 150, figures(record)
    # and the host agent judges the call one-way (audio only from the caller), which its alarm counts
    assert media_state(record) == ONE_WAY_IN
    assert calls.metrics(record)["MediaProblem"] == 1.0


@pytest.mark.parametrize("direction", ["to-agent", "from-agent"])
def test_loss_on_one_direction_shows_on_that_direction_only(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str, direction: str
) -> None:
    # Given 5 % random loss on one direction of the gateway <-> agent hop
    # When the carrier calls the agent's number for ~8 s
    call = place_call(asterisk_factory, tmp_path, namespace, drop=direction)
    record = one_record(call)
    print(f"induced {LOSS:.0%} on {direction}\n{figures(record)}")
    assert_complete(record, call)
    callee, caller = record["callee_leg"], record["caller_leg"]
    impaired, clean = (callee["tx"], callee["rx"]) if direction == "to-agent" else (callee["rx"], callee["tx"])
    measured = loss(impaired)
    print(f"measured loss {measured:.1%} (tolerance {LOSS_RANGE[0]:.1%}..{LOSS_RANGE[1]:.1%})")
    # Then that direction's figure is within the tolerance of what was induced, and its score drops
    assert LOSS_RANGE[0] <= measured <= LOSS_RANGE[1], figures(record)
    assert impaired["mes"] < clean["mes"] - 3, figures(record)
    # and the other direction of that leg, and what the carrier sent, lost nothing
    assert clean["lost"] == 0, figures(record)
    assert caller["rx"]["lost"] == 0, figures(record)


def test_agent_hanging_up_first_leaves_the_same_complete_record(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given the agent ends the call after 9 s (the two legs' handlers then finish in the other order)
    call = place_call(asterisk_factory, tmp_path, namespace, agent_hangs_up=True)
    # Then the carrier got the gateway's BYE, and one complete record names the agent's side as the one that hung up
    record = one_record(call)
    print(figures(record))
    assert_complete(record, call, hung_up_by="agent")


def test_hostile_caller_id_cannot_break_the_record(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given a carrier whose From user tries to close the JSON string, add a field and start a new line
    hostile = "+1555%22%2C%22injected%22%3A1%5C%0A"
    call = place_call(asterisk_factory, tmp_path, namespace, caller=hostile)
    # Then the record is still one line of valid JSON with exactly the documented fields
    assert wait_for(call.records, 5.0), "no call record:\n" + call.gateway.log_text("messages")[-3000:]
    (path,) = call.record_files()
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert set(record) == RECORD_KEYS, record
    print(f"hostile From user {hostile!r} -> caller {record['caller']!r}, {len(lines[0])} bytes")
    assert re.fullmatch(r"\+1555[0-9+]*", record["caller"]), record["caller"]


def test_records_off_writes_no_record(asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str) -> None:
    # Given call records switched off in the settings
    call = place_call(asterisk_factory, tmp_path, namespace, records=False)
    # Then the call itself still worked (sipp saw it answered and ended) but nothing was written
    assert "SIP/2.0 200 OK" in call.result.messages
    assert not wait_for(call.records, 2.0)
    assert call.gateway.host_path(f"{call.base}/calls").is_dir()
    assert "call-record" not in (call.gateway.etc_dir / "extensions.conf").read_text()
