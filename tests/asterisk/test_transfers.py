"""Transfers the agent requests with SIP REFER, call context to the agent, and caller ID on calls out,
through the product's rendered gateway with the stand-in of standin.py as ElevenLabs.

The gateway is examples/minimal.yaml plus an IP-identified carrier (two sipps on CARRIER_IP: a UAS that
answers every call, and the caller), softphone extension 1001 (never registered here) and the outbound
allowlist ``+1415``/``+44``. The stand-in sends REFER the way ElevenLabs' "transfer to number" does
(``Transfer()`` on its side of the call: Refer-To as given, progress read from the NOTIFYs).

The root's res_pjsip_refer.so carries the product's patch (ADR-47): a ``tel:`` Refer-To is a blind transfer to
its number, and a target the transfer context does not offer is refused with 403. The negative control runs
Debian's module as shipped (``unpatched_module_dir``): 400 for ``tel:``, 404 for an unknown target.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from standin import ELEVENLABS_HOST, SHARED_IP, Standin, hosts_file, start_standin, use_private_hosts, wait_for
from support.asterisk import AsteriskInstance, unpatched_module_dir
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.rtp import RtpCounter, rtp_range
from support.sipp import (
    Sipp,
    free_media_port,
    free_port,
    free_sip_port,
    received_messages,
    received_requests,
    registered_phone,
)

AsteriskFactory = Callable[..., AsteriskInstance]
Edit = Callable[[str], str]

pytestmark = pytest.mark.asterisk

GATEWAY_IP = "127.0.0.1"
CARRIER_IP = "127.0.0.5"
PHONE_IP = "127.0.0.7"
PHONE_PASSWORD = "phone-1001-Secret"
AGENT_IP = "127.0.0.9"  # a sipp agent that sends REFER with ElevenLabs' headers
EXTENSION = "1001"
ALLOWLIST = ["+1415", "+44"]
CALLER = "+442071838750"
TARGET = "+14155550199"
GATEWAY_HOST = "gw.example.com"  # the public host name: From / PAI must carry it, never an address of the host


@dataclass
class Gateway:
    gateway: AsteriskInstance
    standin: Standin
    carrier: Sipp
    settings: dict[str, Any]
    sip_port: int
    workdir: Path
    callers: list[Sipp]

    def carrier_invite_headers(self, name: str) -> list[str]:
        """Values of header ``name`` on the INVITEs the carrier received."""
        return [
            m.group(1)
            for b in received_messages(self.carrier.result().messages)
            if b.startswith("INVITE")
            for m in [re.search(rf"^{re.escape(name)}: (.*)$", b, re.M | re.I)]
            if m
        ]

    def carrier_invites(self) -> list[str]:
        """Request lines of the new calls the carrier received (re-INVITEs of a call, sent to its Contact
        without a user, are not new calls)."""
        return [r for r in received_requests(self.carrier.result().messages, "INVITE") if "@" in r.split()[1]]

    def carrier_from_headers(self) -> list[str]:
        """From header of each INVITE the carrier received."""
        blocks = received_messages(self.carrier.result().messages)
        return [m.group(1) for b in blocks if b.startswith("INVITE") and (m := re.search(r"^From: (.*)$", b, re.M))]

    def channels(self) -> str:
        return self.gateway.rx("core show channels concise")

    def call_from_carrier(
        self, did: str, *, caller: str = CALLER, scenario: str = "carrier_uac_hold.xml", media_port: int | None = None
    ) -> Sipp:
        """A carrier caller calls ``did`` and holds the call ~12 s (answering re-INVITEs), then hangs up."""
        sipp = Sipp(
            scenario,
            self.workdir / f"caller{len(self.callers)}",
            remote=f"{GATEWAY_IP}:{self.sip_port}",
            transport="t1",
            local_ip=CARRIER_IP,
            service=did,
            keys={"from_user": caller},
            media_port=media_port or free_media_port(CARRIER_IP),
            extra_args=["-aa"],
            global_timeout_s=40,
        ).start()
        self.callers.append(sipp)
        assert wait_for(lambda: len(self.standin.agent_calls()) >= 1 and self.standin.channel_count() == 1, 15), (
            sipp.result().describe() + self.gateway.diagnostics()
        )
        assert wait_for(lambda: "!Up!" in self.channels(), 10), self.channels()
        return sipp


def start_gateway(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    started: list[Gateway],
    *,
    overrides: dict[str, Any] | None = None,
    edit: Edit | None = None,
    agent_port: int | None = None,
    carrier_scenario: str = "net_uas_ring_answer.xml",
    modules: str | None = None,
) -> Gateway:
    """The gateway, the stand-in, the carrier UAS; with ``agent_port`` the agent's host name resolves to a
    sipp agent on AGENT_IP:agent_port instead of the stand-in."""
    settings, secrets = load_example("minimal")
    el = settings["elevenlabs"]
    overrides = dict(overrides or {})
    extra = {k: overrides.pop(k) for k in ("carrier_caller_id", "carrier_port") if k in overrides}
    sip_port = free_sip_port(GATEWAY_IP)
    carrier_port = extra.pop("carrier_port", None) or free_port(CARRIER_IP)
    rtp = rtp_range()
    standin = start_standin(
        asterisk_factory,
        e164=el["phone_number"],
        gateway_out=(el["outbound_username"], secrets[el["outbound_password"]]),
        gateway_in=(el["inbound_username"], secrets[el["inbound_password"]]),
        gateway_addr=(GATEWAY_IP, sip_port),
    )
    secrets["ssm:/demo/sip/ext-1001"] = PHONE_PASSWORD
    network = loopback_network(GATEWAY_IP, sip_port, rtp, tls_port=free_port(GATEWAY_IP), udp=True)
    network["public_hostname"] = GATEWAY_HOST
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": agent_port or standin.shared_port},
            "network": network,
            "carriers": [ip_carrier(CARRIER_IP, carrier_port, [el["phone_number"]])],
            "extensions": [{"number": EXTENSION, "password": "ssm:/demo/sip/ext-1001"}],
            "dialplan": {"outbound_allowlist": ALLOWLIST, "outbound_carrier": "carrier"},
        },
    )
    if caller_id := extra.pop("carrier_caller_id", None):
        settings["carriers"][0]["caller_id"] = caller_id
    if overrides:
        settings = merge(settings, overrides)
    rendered = render_gateway(settings, secrets, tmp_path / "gateway")
    if edit is not None:
        for name in ("extensions.conf", "pjsip.conf"):
            path = rendered.asterisk_dir / name
            path.write_text(edit(path.read_text()))
    carrier = Sipp(
        carrier_scenario,
        tmp_path / "carrier",
        transport="t1",
        local_ip=CARRIER_IP,
        local_port=carrier_port,
        media_port=free_media_port(CARRIER_IP),
        rtp_echo=True,
        global_timeout_s=120,
        extra_args=["-aa"],
    ).start()
    gateway = asterisk_factory(
        rendered.asterisk_dir,
        start=False,
        extra_files={"hosts": hosts_file({ELEVENLABS_HOST: AGENT_IP if agent_port else SHARED_IP})},
        modules=modules,
    )
    started.append(Gateway(gateway, standin, carrier, settings, sip_port, tmp_path, []))
    use_private_hosts(gateway)
    gateway.start()
    return started[-1]


@pytest.fixture
def started() -> Iterator[list[Gateway]]:
    items: list[Gateway] = []
    yield items
    for item in items:
        for caller in item.callers:
            caller.kill()
        item.carrier.kill()
        item.standin.stop()


@pytest.fixture
def gw(asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]) -> Gateway:
    return start_gateway(asterisk_factory, tmp_path, started)


def e164(gw: Gateway) -> str:
    return str(gw.settings["elevenlabs"]["phone_number"])


def refer_answer(gw: Gateway) -> tuple[str, str]:
    assert wait_for(gw.standin.refer_results, 20), gw.standin.inst.log_text("messages")
    return gw.standin.refer_results()[0]


def caller_kept_by_agent(gw: Gateway, caller: Sipp) -> None:
    """The caller is still talking to the agent: both gateway legs up, the stand-in holds its call, and the
    caller's sipp ends the call itself (a BYE from the gateway would fail it)."""
    assert gw.standin.channel_count() == 1, gw.standin.inst.rx("core show channels")
    assert len(re.findall(r"!Up!", gw.channels())) == 2, gw.channels()
    result = caller.wait(timeout=30)
    assert result.ok, result.describe()


# ------------------------------------------------------------------------------- carrier caller -> agent
@pytest.mark.parametrize(
    "refer_to",
    [
        f"sip:{TARGET}@{GATEWAY_HOST}",
        f"<sip:{TARGET}@{GATEWAY_HOST}:5060;transport=tcp;user=phone>",
        f"sip:{TARGET.removeprefix('+')}@{GATEWAY_HOST}",
    ],
    ids=["e164", "e164-with-parameters", "without-plus"],
)
def test_refer_to_allowlisted_number_connects_the_caller_through_the_carrier(gw: Gateway, refer_to: str) -> None:
    # Given a carrier caller talking to the agent
    caller = gw.call_from_carrier(e164(gw))
    # When the agent transfers the call to an allowlisted number
    gw.standin.refer(refer_to)
    # Then the carrier receives an INVITE for that number, presenting the original caller's number
    assert wait_for(lambda: len(gw.carrier_invites()) == 1, 15), gw.carrier.result().describe() + gw.channels()
    assert gw.carrier_invites()[0].startswith(f"INVITE sip:{TARGET}@{CARRIER_IP}:"), gw.carrier_invites()
    assert f"sip:{CALLER}@{GATEWAY_HOST}" in gw.carrier_from_headers()[0], gw.carrier_from_headers()
    # And the agent learns from the final NOTIFY that the target answered (sipfrag 200), and leaves
    assert refer_answer(gw)[0] == "SUCCESS", gw.standin.inst.log_text("messages")
    assert wait_for(lambda: gw.standin.channel_count() == 0, 10)
    # And the caller stays connected to the target until it hangs up itself
    assert re.search(rf"^PJSIP/carrier-\w+!transfer-number!{re.escape(TARGET)}!\d+!Up!Dial!", gw.channels(), re.M), (
        gw.channels()
    )
    result = caller.wait(timeout=30)
    assert result.ok, result.describe()


@pytest.mark.parametrize(
    "target", ["+33142685300", "+4420718387501234567", "support", "s"], ids=["not-allowlisted", "too-long", "name", "s"]
)
def test_refer_to_a_target_not_allowed_is_refused_and_the_caller_stays(gw: Gateway, target: str) -> None:
    caller = gw.call_from_carrier(e164(gw))
    # When the agent asks for a transfer to a target no rule allows
    gw.standin.refer(f"sip:{target}@{GATEWAY_HOST}")
    # Then Asterisk refuses the REFER before accepting it (403: no such extension in the transfer context)
    assert refer_answer(gw) == ("FAILURE", "403"), gw.standin.inst.log_text("messages")
    assert "transfer-from-agent" in gw.gateway.log_text("messages")
    # And nothing is dialled, and the caller stays with the agent
    assert gw.carrier_invites() == []
    caller_kept_by_agent(gw, caller)


CALLER_AUDIO = "caller-audio.pcma"  # what carrier_uac_hold_audio.xml streams, relative to the caller's directory


@pytest.mark.parametrize(
    "refer_to",
    [f"<tel:{TARGET}>", "<tel:+1-415-555-0199;isub=7>", "<tel:+1(415)555.0199>"],
    ids=["e164", "separators-and-parameter", "parentheses"],
)
def test_refer_to_tel_uri_of_an_allowlisted_number_connects_the_caller_with_audio_both_ways(
    gw: Gateway, refer_to: str
) -> None:
    """A ``tel:`` Refer-To is a blind transfer to its number: the global number with its '+', visual separators
    removed, parameters ignored, looked up in the same transfer context as ``sip:`` targets. Negative control:
    ``test_negative_control_debian_refer_module_refuses_tel_with_400`` (Debian's module answers 400)."""
    # Given a carrier caller that streams audio the whole call, talking to the agent
    caller_port, target_port = free_media_port(CARRIER_IP), int(gw.carrier.media_port or 0)
    assert target_port, "the carrier UAS has no media port"
    (gw.workdir / f"caller{len(gw.callers)}").mkdir(parents=True, exist_ok=True)
    (gw.workdir / f"caller{len(gw.callers)}" / CALLER_AUDIO).write_bytes(b"\xd5" * 8000)
    with RtpCounter((caller_port, caller_port)) as at_caller, RtpCounter((target_port, target_port)) as at_target:
        caller = gw.call_from_carrier(e164(gw), scenario="carrier_uac_hold_audio.xml", media_port=caller_port)
        # When the agent transfers the call to a tel: URI of an allowlisted number
        gw.standin.refer(refer_to)
        # Then the carrier receives an INVITE for that number, and the agent learns it answered (sipfrag 200)
        assert wait_for(lambda: len(gw.carrier_invites()) == 1, 15), gw.carrier.result().describe() + gw.channels()
        assert gw.carrier_invites()[0].startswith(f"INVITE sip:{TARGET}@{CARRIER_IP}:"), gw.carrier_invites()
        # (the stand-in's Transfer() reports SUCCESS only on a final NOTIFY sipfrag 200; the sipp agent's test
        # below reads the sipfrags themselves)
        assert refer_answer(gw)[0] == "SUCCESS", gw.standin.inst.log_text("messages")
        assert wait_for(lambda: gw.standin.channel_count() == 0, 10)
        # And, with the agent gone, audio flows both ways between the caller and the target (1 s of 20 ms packets)
        at_caller.reset()
        assert wait_for(lambda: at_caller.counts().to_range >= 50, 10), (
            f"no audio reached the caller: {at_caller.counts()}"
        )
        assert wait_for(lambda: at_target.counts().to_range >= 50, 5), (
            f"no audio reached the target: {at_target.counts()}"
        )
        assert at_target.counts().from_range >= 50, f"the target's audio never left it: {at_target.counts()}"
        assert re.search(
            rf"^PJSIP/carrier-\w+!transfer-number!{re.escape(TARGET)}!\d+!Up!Dial!", gw.channels(), re.M
        ), gw.channels()
    result = caller.wait(timeout=30)
    assert result.ok, result.describe()


def test_refer_to_tel_uri_of_a_number_not_allowed_is_refused_with_403_and_the_caller_stays(gw: Gateway) -> None:
    """The tel: number meets the same allowlist as a sip: target: one no rule allows is refused."""
    caller = gw.call_from_carrier(e164(gw))
    gw.standin.refer("<tel:+33142685300>")
    assert refer_answer(gw) == ("FAILURE", "403"), gw.standin.inst.log_text("messages")
    assert gw.carrier_invites() == []
    caller_kept_by_agent(gw, caller)


@pytest.mark.parametrize(
    ("refer_to", "code"),
    [(f"<tel:{TARGET}>", "400"), ("sip:+33142685300@" + GATEWAY_HOST, "404")],
    ids=["tel-400", "unknown-404"],
)
def test_negative_control_debian_refer_module_refuses_tel_with_400_and_unknown_with_404(
    asterisk_factory: AsteriskFactory,
    asterisk_root: Path,
    tmp_path: Path,
    started: list[Gateway],
    refer_to: str,
    code: str,
) -> None:
    """Debian's res_pjsip_refer.so as shipped (the unpatched module set): only sip:/sips: Refer-To URIs (400 for
    tel:), and 404 for a target not in the transfer context. What the patched module changes."""
    gw = start_gateway(asterisk_factory, tmp_path, started, modules=unpatched_module_dir(asterisk_root))
    caller = gw.call_from_carrier(e164(gw))
    gw.standin.refer(refer_to)
    assert refer_answer(gw) == ("FAILURE", code), gw.standin.inst.log_text("messages")
    assert gw.carrier_invites() == []
    caller_kept_by_agent(gw, caller)


def without_transfer_context(text: str) -> str:
    return re.sub(r"^ same => n,Set\(TRANSFER_CONTEXT=[a-z-]+\)\n", "", text, flags=re.M)


def test_negative_control_without_transfer_context_the_refer_hangs_up_the_caller(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    # Given the gateway without its transfer context: the REFER runs in the endpoint's refuse-inbound
    gw = start_gateway(asterisk_factory, tmp_path, started, edit=without_transfer_context)
    caller = gw.call_from_carrier(e164(gw))
    gw.standin.refer(f"sip:{TARGET}@{GATEWAY_HOST}")
    # Then the carrier is never called, the agent hears a failure, and the caller is hung up
    assert wait_for(gw.standin.refer_results, 20), gw.standin.inst.log_text("messages")
    assert gw.standin.refer_results()[0][0] == "FAILURE", gw.standin.refer_results()
    assert gw.carrier_invites() == []
    result = caller.wait(timeout=30)
    assert not result.ok, result.describe()


def test_refer_to_an_extension_connects_the_caller_to_the_softphone(gw: Gateway) -> None:
    # Given softphone 1001 registered
    phone, _ = registered_phone(
        gw.workdir,
        remote=f"{GATEWAY_IP}:{gw.sip_port}",
        local_ip=PHONE_IP,
        extension=EXTENSION,
        password=PHONE_PASSWORD,
    )
    try:
        caller = gw.call_from_carrier(e164(gw))
        # When the agent transfers the caller to extension 1001
        gw.standin.refer(f"sip:{EXTENSION}@{GATEWAY_HOST}")
        # Then the phone rings with the caller's number, answers, and the agent is told (final NOTIFY 200)
        assert wait_for(lambda: received_requests(phone.result().messages, "INVITE"), 15), gw.channels()
        assert re.search(rf"^From: .*<sip:{re.escape(CALLER)}@", phone.result().messages, re.M | re.I), (
            phone.result().messages
        )
        assert refer_answer(gw)[0] == "SUCCESS", gw.standin.refer_results()
        assert wait_for(lambda: gw.standin.channel_count() == 0, 10)
        # And caller and phone talk until the caller hangs up; the phone gets the BYE
        assert caller.wait(timeout=30).ok
        assert phone.wait(timeout=15).ok, phone.result().describe()
    finally:
        phone.kill()


def test_failed_transfer_target_gives_the_caller_back_to_the_agent(gw: Gateway) -> None:
    # Given extension 1001 with no phone registered
    caller = gw.call_from_carrier(e164(gw))
    # When the agent transfers the caller to it
    gw.standin.refer(f"sip:{EXTENSION}@{GATEWAY_HOST}")
    # Then the REFER is accepted, and the caller is given back to the agent (a new call to it), never silence
    assert wait_for(lambda: len(gw.standin.agent_calls()) == 2, 20), gw.gateway.log_text("messages")
    assert wait_for(lambda: gw.standin.channel_count() == 1, 10)
    assert gw.carrier_invites() == []
    result = caller.wait(timeout=30)
    assert result.ok, result.describe()


def test_busy_transfer_target_gives_the_caller_back_to_the_agent(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    # Given a carrier that answers the target number with 486 Busy Here
    gw = start_gateway(asterisk_factory, tmp_path, started, carrier_scenario="net_uas_busy.xml")
    caller = gw.call_from_carrier(e164(gw))
    gw.standin.refer(f"sip:{TARGET}@{GATEWAY_HOST}")
    # Then the target was tried, and the caller is given back to the agent (a new call to it) until the
    # caller hangs up. Dial() consumes the busy signal, so Asterisk's progress monitor sees the caller enter
    # the fallback's bridge and sends the transferring agent a final 200: its conversation ends there.
    assert wait_for(lambda: len(gw.carrier_invites()) == 1, 15), gw.carrier.result().describe()
    assert wait_for(lambda: len(gw.standin.agent_calls()) == 2, 20), gw.gateway.log_text("messages")
    assert refer_answer(gw)[0] == "SUCCESS", gw.standin.refer_results()
    assert caller.wait(timeout=30).ok


# ------------------------------------------------------------------------------- agent-placed calls
def agent_calls_number(gw: Gateway, number: str) -> None:
    gw.standin.originate(number)
    assert wait_for(lambda: len(gw.carrier_invites()) == 1, 15), gw.carrier.result().describe()
    assert wait_for(lambda: "!Up!" in gw.channels() and gw.standin.channel_count() == 1, 10), gw.channels()


def test_refer_on_an_agent_call_never_bridges_two_carrier_legs(gw: Gateway) -> None:
    # Given the agent called an allowlisted number through the carrier
    agent_calls_number(gw, "+14155550123")
    # When it asks to transfer the called party to another allowlisted number
    gw.standin.refer(f"sip:{TARGET}@{GATEWAY_HOST}")
    # Then the REFER is refused (numbers_on_agent_calls is off) and the carrier gets no second INVITE
    assert refer_answer(gw) == ("FAILURE", "403"), gw.standin.inst.log_text("messages")
    assert "transfer-agent-call" in gw.gateway.log_text("messages")
    assert len(gw.carrier_invites()) == 1, gw.carrier_invites()


def test_called_party_given_back_to_the_agent_keeps_the_agent_call_rules(gw: Gateway) -> None:
    given_back_then_referred_to_a_number(gw)
    # Then that is refused too: two carrier legs stay impossible without numbers_on_agent_calls
    assert wait_for(lambda: len(gw.standin.refer_results()) == 2, 20), gw.standin.inst.log_text("messages")
    assert gw.standin.refer_results()[1] == ("FAILURE", "403"), gw.standin.refer_results()
    assert len(gw.carrier_invites()) == 1, gw.carrier_invites()


def test_negative_control_without_the_agent_call_mark_the_fallback_accepts_a_refer_to_a_number(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    gw = start_gateway(
        asterisk_factory,
        tmp_path,
        started,
        edit=lambda t: re.sub(r"^ same => n,Set\(__GW_AGENT_CALL=1\)\n", "", t, flags=re.M),
    )
    given_back_then_referred_to_a_number(gw)
    # the REFER runs in transfer-from-agent, whose allowlist accepts the number (the carrier's sipp, which
    # takes one call, has ended by then: the refusal the proof above requires is what is missing)
    assert wait_for(lambda: len(gw.standin.refer_results()) == 2, 20), gw.standin.inst.log_text("messages")
    assert gw.standin.refer_results()[1] != ("FAILURE", "403"), gw.standin.refer_results()


def given_back_then_referred_to_a_number(gw: Gateway) -> None:
    # Given the agent called a number, then transferred the called party to extension 1001, which has no
    # phone: the called party is given back to the agent in a new call
    agent_calls_number(gw, "+14155550123")
    gw.standin.refer(f"sip:{EXTENSION}@{GATEWAY_HOST}")
    assert wait_for(lambda: len(gw.standin.agent_calls()) == 1 and gw.standin.channel_count() == 1, 20), (
        gw.gateway.log_text("messages")
    )
    assert wait_for(lambda: len(gw.standin.refer_results()) == 1, 10)
    # When the agent now asks to transfer it to a number
    gw.standin.refer(f"sip:{TARGET}@{GATEWAY_HOST}")


def test_negative_control_agent_call_without_transfer_context_bridges_two_carrier_legs(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    # Given the gateway without its transfer contexts: the REFER runs in from-elevenlabs
    gw = start_gateway(asterisk_factory, tmp_path, started, edit=without_transfer_context)
    agent_calls_number(gw, "+14155550123")
    gw.standin.refer(f"sip:{TARGET}@{GATEWAY_HOST}")
    # Then its allowlist dials the carrier a second time for the called party: two carrier legs
    assert wait_for(lambda: len(gw.carrier_invites()) == 2, 15), gw.carrier.result().describe()
    assert gw.carrier_invites()[1].startswith(f"INVITE sip:{TARGET}@{CARRIER_IP}:"), gw.carrier_invites()


def test_refer_on_an_agent_call_to_a_number_when_the_operator_allows_it(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    # Given numbers_on_agent_calls: the operator accepts two carrier legs
    allow = {"dialplan": {"transfers": {"numbers_on_agent_calls": True}}}
    gw = start_gateway(asterisk_factory, tmp_path, started, overrides=allow)
    agent_calls_number(gw, "+14155550123")
    gw.standin.refer(f"sip:{TARGET}@{GATEWAY_HOST}")
    # Then the called party is connected to the target and the agent told so (final NOTIFY 200)
    assert wait_for(lambda: len(gw.carrier_invites()) == 2, 15), gw.carrier.result().describe()
    assert gw.carrier_invites()[1].startswith(f"INVITE sip:{TARGET}@{CARRIER_IP}:"), gw.carrier_invites()
    assert refer_answer(gw)[0] == "SUCCESS", gw.standin.refer_results()


def test_agent_call_presents_the_carriers_number(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    settings, _ = load_example("minimal")
    did = settings["elevenlabs"]["phone_number"]
    gw = start_gateway(asterisk_factory, tmp_path, started, overrides={"carrier_caller_id": did})
    agent_calls_number(gw, "+14155550123")
    from_header = gw.carrier_from_headers()[0]
    assert f"<sip:{did}@{GATEWAY_HOST}>" in from_header, from_header


def test_agent_call_from_carries_the_public_host_not_an_address(gw: Gateway) -> None:
    agent_calls_number(gw, "+14155550123")
    from_header = gw.carrier_from_headers()[0]
    assert f"@{GATEWAY_HOST}>" in from_header, from_header


def test_negative_control_without_from_domain_the_host_address_leaks(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    gw = start_gateway(
        asterisk_factory, tmp_path, started, edit=lambda t: re.sub(r"^from_domain = .*\n", "", t, flags=re.M)
    )
    agent_calls_number(gw, "+14155550123")
    from_header = gw.carrier_from_headers()[0]
    assert f"@{GATEWAY_IP}>" in from_header, from_header


# ------------------------------------------------------------------------------- call context to the agent
HEADERS = {"elevenlabs": {"headers": {"X-Called-DID": "called_did", "X-Route": "route"}}}


def test_invite_to_agent_carries_call_id_caller_id_and_operator_headers(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    gw = start_gateway(asterisk_factory, tmp_path, started, overrides=HEADERS)
    caller = gw.call_from_carrier(e164(gw))
    headers = gw.standin.agent_headers()[0]
    # X-CALL-ID is the caller's channel's unique id, the id its recording and call record carry
    caller_leg = next(line for line in gw.channels().splitlines() if line.startswith("PJSIP/carrier-"))
    assert caller_leg.split("!")[-1] == headers["call_id"], (caller_leg, headers)
    assert headers["caller_id"] == CALLER, headers
    assert headers["did"] == e164(gw), headers
    assert headers["route"] == "default", headers
    assert f"@{GATEWAY_HOST}>" in headers["from_header"], headers
    caller.wait(timeout=30)


def test_hostile_caller_data_is_reduced_to_the_safe_alphabet(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    gw = start_gateway(asterisk_factory, tmp_path, started, overrides=HEADERS)
    # a number no DID route matches reaches the agent through the default route, as the carrier sent it
    caller = gw.call_from_carrier("+4420abc%24x", caller="+1415%0d%0aX-Evil")
    headers = gw.standin.agent_headers()[0]
    assert headers["did"] == "+4420", headers
    assert re.fullmatch(r"[0-9+]*", headers["caller_id"]), headers
    assert "Evil" not in headers["names"], headers
    caller.wait(timeout=30)


def test_negative_control_unfiltered_header_passes_caller_data(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    def unfiltered(text: str) -> str:
        return text.replace(
            "Set(PJSIP_HEADER(add,X-Called-DID)=${FILTER(-A-Za-z0-9+._,${GW_DID}):0:64}",
            "Set(PJSIP_HEADER(add,X-Called-DID)=${GW_RAW_DID}",
        ).replace(" same => n,Set(__GW_DID=", " same => n,Set(__GW_RAW_DID=${EXTEN})\n same => n,Set(__GW_DID=")

    gw = start_gateway(asterisk_factory, tmp_path, started, overrides=HEADERS, edit=unfiltered)
    caller = gw.call_from_carrier("+4420abc%24x")
    headers = gw.standin.agent_headers()[0]
    assert "abc" in headers["did"], headers
    caller.wait(timeout=30)


# ------------------------------------------------------------------------------- SIP destinations, REFER headers
def test_refer_to_an_allowed_sip_destination_dials_it(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    # Given a SIP destination 'support' (here: the carrier's sipp, as any SIP server would answer)
    carrier_port = free_port(CARRIER_IP)
    dest = {"support": {"host": CARRIER_IP, "port": carrier_port, "transport": "tcp", "user": "helpdesk"}}
    gw = start_gateway(
        asterisk_factory,
        tmp_path,
        started,
        overrides={"dialplan": {"transfers": {"sip_destinations": dest}}, "carrier_port": carrier_port},
    )
    caller = gw.call_from_carrier(e164(gw))
    # When the agent transfers to sip:support@…
    gw.standin.refer(f"sip:support@{GATEWAY_HOST}")
    # Then the destination's URI is dialled (the Refer-To host plays no part) and the transfer succeeds
    assert wait_for(lambda: len(gw.carrier_invites()) == 1, 15), gw.carrier.result().describe()
    assert gw.carrier_invites()[0].startswith(f"INVITE sip:helpdesk@{CARRIER_IP}:{carrier_port}"), gw.carrier_invites()
    assert refer_answer(gw)[0] == "SUCCESS", gw.standin.refer_results()
    assert caller.wait(timeout=30).ok


def sipp_agent(gw_dir: Path, port: int, refer_to: str, conversation: str) -> Sipp:
    return Sipp(
        "el_uas_refer.xml",
        gw_dir / "agent",
        transport="t1",
        local_ip=AGENT_IP,
        local_port=port,
        media_port=free_media_port(AGENT_IP),
        keys={"refer_to": refer_to, "conversation": conversation},
        extra_args=["-aa"],
        global_timeout_s=40,
    ).start()


@pytest.mark.parametrize(
    ("conversation", "kept"),
    [("conv_7Hk2-x.y", "conv_7Hk2-x.y"), ("conv_1;x=<a>$(b)", "conv_1xab")],
    ids=["plain", "hostile"],
)
def test_refer_headers_stay_with_the_transferred_call(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway], conversation: str, kept: str
) -> None:
    refer_headers_reach_the_target(asterisk_factory, tmp_path, started, conversation, kept)


def test_tel_refer_from_an_elevenlabs_agent_gets_progress_to_sipfrag_200(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    """ElevenLabs' REFER with ``Refer-To: <tel:+E.164>``: 202, then NOTIFY sipfrag 100, 180, 200, and the REFER's
    headers on the transferred leg, as for a sip: target (Debian's module would answer 400)."""
    refer_headers_reach_the_target(
        asterisk_factory, tmp_path, started, "conv_7Hk2", "conv_7Hk2", refer_to=f"<tel:{TARGET}>"
    )


def test_negative_control_without_transferrer_data_the_refer_headers_are_lost(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Gateway]
) -> None:
    def without(text: str) -> str:
        return text.replace(" same => n,Set(GET_TRANSFERRER_DATA=X-)\n", "")

    with pytest.raises(AssertionError, match="X-Conversation-ID"):
        refer_headers_reach_the_target(asterisk_factory, tmp_path, started, "conv_7Hk2", "conv_7Hk2", edit=without)


def refer_headers_reach_the_target(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    started: list[Gateway],
    conversation: str,
    kept: str,
    *,
    edit: Edit | None = None,
    refer_to: str = f"<sip:{TARGET}@{GATEWAY_HOST}>",
) -> None:
    # Given the agent is a sipp that sends REFER with X-Conversation-ID, as ElevenLabs does
    agent_port = free_port(AGENT_IP)
    agent = sipp_agent(tmp_path, agent_port, refer_to, conversation)
    try:
        gw = start_gateway(asterisk_factory, tmp_path, started, agent_port=agent_port, edit=edit)
        caller = Sipp(
            "carrier_uac_hold.xml",
            tmp_path / "caller",
            remote=f"{GATEWAY_IP}:{gw.sip_port}",
            transport="t1",
            local_ip=CARRIER_IP,
            service=e164(gw),
            keys={"from_user": CALLER},
            media_port=free_media_port(CARRIER_IP),
            extra_args=["-aa"],
            global_timeout_s=40,
        ).start()
        gw.callers.append(caller)
        # Then the transferred leg carries the conversation id (filtered) and the call's id
        assert wait_for(lambda: len(gw.carrier_invites()) == 1, 20), agent.result().describe() + gw.channels()
        assert gw.carrier_invite_headers("X-Conversation-ID") == [kept], (
            "X-Conversation-ID: " + gw.carrier.result().messages
        )
        assert re.fullmatch(r"[-A-Za-z0-9._]+", gw.carrier_invite_headers("X-CALL-ID")[0])
        # And the agent got 202, then the progress as NOTIFY sipfrag: 100 Trying, 180 Ringing, 200 once answered
        assert agent.wait(timeout=20).ok, agent.result().describe()
        notifies = [b for b in received_messages(agent.result().messages) if b.startswith("NOTIFY")]
        frags = [m.group(1) for b in notifies for m in [re.search(r"^SIP/2\.0 (\d{3})", b, re.M)] if m]
        assert frags[0] == "100", frags
        assert "180" in frags, frags
        assert frags[-1] == "200", frags
        assert all("message/sipfrag" in b for b in notifies), notifies
        assert caller.wait(timeout=30).ok
    finally:
        agent.kill()
