"""When the agent cannot take a call, on the real Asterisk: the caller reaches the fallback, never a
refusal or silence.

A carrier caller (sipp) calls the DID whose route is the agent; the agent is a sipp at the ElevenLabs host
name that refuses (486, 503, 603: the answers ElevenLabs gives when busy or at the plan's concurrency limit),
never answers, or is not there at all. The fallback is a registered softphone or, by default, an
announcement as early media and then 503 (cause 34). The gateway's own cap (``elevenlabs.max_calls``) sends
the caller beyond it to the fallback without an INVITE to the agent, and frees the place when a call ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from standin import ELEVENLABS_HOST, hosts_file, use_private_hosts, wait_for
from support.asterisk import AsteriskInstance
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.rtp import RtpCounter, rtp_range
from support.sipp import SCENARIO_DIR, Sipp, free_port, free_sip_port, received_requests, registered_phone

AsteriskFactory = Callable[..., AsteriskInstance]
RtpCounterFactory = Callable[..., RtpCounter]
Edit = Callable[[str], str]

pytestmark = pytest.mark.asterisk

GATEWAY_IP = "127.0.0.1"
CARRIER_IP = "127.0.0.5"
PHONE_IP = "127.0.0.7"
AGENT_IP = "127.0.0.9"
EXTENSION = "1001"
PHONE_PASSWORD = "phone-1001-Secret"


@dataclass
class Rig:
    gateway: AsteriskInstance
    sip_port: int
    rtp: tuple[int, int]
    did: str
    workdir: Path
    processes: list[Sipp] = field(default_factory=list)

    def call(self, scenario: str, label: str, **options: Any) -> Sipp:
        sipp = Sipp(
            scenario,
            self.workdir / label,
            remote=f"{GATEWAY_IP}:{self.sip_port}",
            transport="t1",
            local_ip=CARRIER_IP,
            service=self.did,
            global_timeout_s=40,
            extra_args=["-aa"],
            **options,
        ).start()
        self.processes.append(sipp)
        return sipp

    def agent(self, scenario: str | Path, port: int, **options: Any) -> Sipp:
        sipp = Sipp(
            scenario,
            self.workdir / "agent",
            transport="t1",
            local_ip=AGENT_IP,
            local_port=port,
            extra_args=["-aa"],
            global_timeout_s=60,
            **options,
        ).start()
        self.processes.append(sipp)
        return sipp

    def phone(self) -> Sipp:
        phone, _ = registered_phone(
            self.workdir,
            remote=f"{GATEWAY_IP}:{self.sip_port}",
            local_ip=PHONE_IP,
            extension=EXTENSION,
            password=PHONE_PASSWORD,
        )
        self.processes.append(phone)
        return phone


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    items: list[Rig] = []
    yield items
    for rig in items:
        for process in rig.processes:
            process.kill()


def start_gateway(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    rigs: list[Rig],
    *,
    agent_port: int,
    elevenlabs: dict[str, Any] | None = None,
    dial_timeout_s: int = 45,
    edit: Edit | None = None,
    network: dict[str, Any] | None = None,
) -> Rig:
    settings, secrets = load_example("minimal")
    did = str(settings["elevenlabs"]["phone_number"])
    sip_port = free_sip_port(GATEWAY_IP)
    rtp = rtp_range()
    secrets["ssm:/demo/sip/ext-1001"] = PHONE_PASSWORD
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": agent_port, **(elevenlabs or {})},
            "network": {
                **loopback_network(GATEWAY_IP, sip_port, rtp, tls_port=free_port(GATEWAY_IP), udp=True),
                **(network or {}),
            },
            "carriers": [ip_carrier(CARRIER_IP, free_port(CARRIER_IP), [did])],
            "extensions": [{"number": EXTENSION, "password": "ssm:/demo/sip/ext-1001"}],
            "dialplan": {"dial_timeout_s": dial_timeout_s},
        },
    )
    rendered = render_gateway(settings, secrets, tmp_path / "gateway")
    if edit is not None:
        path = rendered.asterisk_dir / "extensions.conf"
        path.write_text(edit(path.read_text()))
    gateway = asterisk_factory(
        rendered.asterisk_dir, start=False, extra_files={"hosts": hosts_file({ELEVENLABS_HOST: AGENT_IP})}
    )
    use_private_hosts(gateway)
    gateway.start()
    rigs.append(Rig(gateway, sip_port, rtp, did, tmp_path))
    return rigs[-1]


def refusing_agent(workdir: Path, status: str) -> Path:
    """The refusing agent's scenario answering with ``status`` (sipp takes no status code from a key)."""
    scenario = SCENARIO_DIR / "el_uas_refuse.xml"
    text = scenario.read_text()
    assert "SIP/2.0 486 Busy Here" in text
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"el_uas_refuse_{status.split()[0]}.xml"
    path.write_text(text.replace("SIP/2.0 486 Busy Here", f"SIP/2.0 {status}"))
    return path


def without_fallback(text: str) -> str:
    """The dialplan before fallbacks existed: the caller was hung up when the agent did not answer."""
    assert " same => n,Goto(agent-unavailable,s,1)\n" in text
    return text.replace(" same => n,Goto(agent-unavailable,s,1)\n", " same => n,Hangup()\n")


def refused_with_fallback(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], status: str, *, edit: Edit | None = None
) -> tuple[Rig, Sipp, Sipp]:
    """The gateway with softphone 1001 as the fallback, an agent answering ``status``, the softphone registered."""
    agent_port = free_port(AGENT_IP)
    rig = start_gateway(
        asterisk_factory,
        tmp_path,
        rigs,
        agent_port=agent_port,
        elevenlabs={"fallback": {"kind": "extension", "extension": EXTENSION}},
        edit=edit,
    )
    agent = rig.agent(refusing_agent(tmp_path, status), agent_port)
    return rig, agent, rig.phone()


@pytest.mark.parametrize(
    ("code", "reason"),
    [("486", "Busy Here"), ("503", "Service Unavailable"), ("603", "Decline")],
    ids=["busy", "at-capacity", "declined"],
)
def test_a_call_the_agent_refuses_goes_to_the_fallback_extension(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], code: str, reason: str
) -> None:
    # Given an agent that refuses every call, and a fallback to softphone 1001
    rig, agent, phone = refused_with_fallback(asterisk_factory, tmp_path, rigs, f"{code} {reason}")
    # When a carrier caller calls the agent's DID
    result = rig.call("carrier_uac_pcap.xml", "caller", duration_ms=1000).wait(timeout=30)
    # Then the agent was asked once, and the softphone took the call instead
    assert result.ok, result.describe() + rig.gateway.diagnostics()
    assert len(received_requests(agent.result().messages, "INVITE")) == 1, agent.result().describe()
    assert received_requests(phone.result().messages, "INVITE"), phone.result().describe()


def test_negative_control_without_the_fallback_the_refusal_reaches_the_caller(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig, _, phone = refused_with_fallback(asterisk_factory, tmp_path, rigs, "486 Busy Here", edit=without_fallback)
    result = rig.call("carrier_uac_pcap.xml", "caller", duration_ms=1000).wait(timeout=30)
    assert not result.ok
    assert not received_requests(phone.result().messages, "INVITE")


@pytest.mark.parametrize("agent", ["no-answer", "unreachable"])
def test_with_nowhere_to_go_the_caller_hears_the_announcement_then_a_clear_refusal(
    asterisk_factory: AsteriskFactory, rtp_counter: RtpCounterFactory, tmp_path: Path, rigs: list[Rig], agent: str
) -> None:
    # Given the default fallback (an announcement) and an agent that never answers, or is not there at all
    agent_port = free_port(AGENT_IP)  # nothing listens on it unless the agent is started
    rig = start_gateway(asterisk_factory, tmp_path, rigs, agent_port=agent_port, dial_timeout_s=5)
    if agent == "no-answer":
        rig.agent(refusing_agent(tmp_path, "100 Trying"), agent_port)
    counter = rtp_counter(rig.rtp)
    # When a carrier caller calls the agent's DID
    result = rig.call("carrier_uac_announced.xml", "caller").wait(timeout=30)
    # Then it heard the announcement as early media (183, RTP from the gateway), then 503: never answered
    assert result.ok, result.describe() + rig.gateway.diagnostics()
    assert counter.counts().from_range >= 50, counter.counts()  # all-circuits-busy-now: about 2 s at 50/s
    assert "SIP/2.0 200" not in "\n".join(m for m in result.messages.split("\n") if m.startswith("SIP/2.0"))


@pytest.mark.parametrize("control", [False, True], ids=["capped", "negative-control-uncapped"])
def test_the_gateway_cap_sends_the_next_caller_to_the_fallback_and_frees_the_place(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], control: bool
) -> None:
    # Given a cap of one call with the agent (an agent that answers and echoes), announcement as fallback
    def uncapped(text: str) -> str:
        lines = [line for line in text.splitlines(keepends=True) if "GROUP_COUNT(agent@gateway)" not in line]
        assert len(lines) == text.count("\n") - 1
        return "".join(lines)

    agent_port = free_port(AGENT_IP)
    rig = start_gateway(
        asterisk_factory,
        tmp_path,
        rigs,
        agent_port=agent_port,
        elevenlabs={"max_calls": 1},
        edit=uncapped if control else None,
    )
    agent = rig.agent("net_uas_answer.xml", agent_port, calls=3, rtp_echo=True)

    def agent_invites() -> int:
        return len(received_requests(agent.result().messages, "INVITE"))

    # When one caller is with the agent and a second one calls
    first = rig.call("carrier_uac_pcap.xml", "first", duration_ms=6000)
    assert wait_for(lambda: agent_invites() == 1, 15), agent.result().describe()
    assert wait_for(lambda: "!Up!" in rig.gateway.rx("core show channels concise"), 10)
    second = rig.call("carrier_uac_announced.xml", "second").wait(timeout=30)
    if control:
        # (without the cap the second caller reaches the agent and is answered)
        assert not second.ok
        assert wait_for(lambda: agent_invites() == 2, 5), agent.result().describe()
        return
    # Then the second caller is announced and refused without an INVITE to the agent
    assert second.ok, second.describe() + rig.gateway.diagnostics()
    assert agent_invites() == 1, agent.result().describe()
    # And once the first call has ended, the place is free again
    assert first.wait(timeout=30).ok
    third = rig.call("carrier_uac_pcap.xml", "third", duration_ms=500).wait(timeout=30)
    assert third.ok, third.describe() + rig.gateway.diagnostics()
    assert agent_invites() == 2, agent.result().describe()
