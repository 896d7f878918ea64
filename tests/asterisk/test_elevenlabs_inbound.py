"""Calls *from* the ElevenLabs agent through the product's rendered gateway (proof 3), with the stand-in
of standin.py as the agent side.

The gateway is examples/minimal.yaml plus a softphone extension (1001), an IP-identified carrier (a sipp
UAS on CARRIER_IP that answers qualify OPTIONS) and the outbound allowlist ``+1415``/``+44`` through that
carrier. The agent, authenticated by the digest user name ``inbound_username``, reaches:

* a registered softphone (the phone's sipp receives the INVITE),
* the carrier with ``+<allowlisted number>`` in the Request-URI,

and is refused — with no INVITE at the carrier — for a number outside the allowlist and for allowlisted
prefixes followed by characters that would smuggle a second Dial() target (``&``) or argument (``,``).
Callers that are not the agent — unauthenticated, a wrong password, or an unknown address claiming to
be a softphone or the carrier — never get a channel, so never reach a context that can dial out.
The stand-in itself refuses REGISTER, as ElevenLabs' INVITE-only trunks do.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
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
from support.rtp import rtp_range
from support.sipp import (
    Sipp,
    auth_field,
    free_media_port,
    free_port,
    free_sip_port,
    received_requests,
    registered_phone,
    run_sipp,
    write_injection,
)

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

GATEWAY_IP = "127.0.0.1"
CARRIER_IP = "127.0.0.5"  # the carrier UAS: the only source the carrier endpoint is identified by
PHONE_IP = "127.0.0.7"
INTRUDER_IP = "127.0.0.6"
EXTENSION = "1001"
PHONE_PASSWORD = "phone-1001-Secret"
ALLOWLIST = ["+1415", "+44"]
ALLOWED_NUMBER = "+14155550123"


@dataclass
class Inbound:
    gateway: AsteriskInstance
    standin: Standin
    carrier: Sipp
    settings: dict[str, Any]
    secrets: dict[str, str]
    sip_port: int
    workdir: Path

    @property
    def inbound_user(self) -> str:
        return str(self.settings["elevenlabs"]["inbound_username"])

    @property
    def inbound_password(self) -> str:
        return self.secrets[self.settings["elevenlabs"]["inbound_password"]]

    def carrier_invites(self) -> list[str]:
        """Request lines of the INVITEs the carrier received so far (its message trace)."""
        return received_requests(self.carrier.result().messages, "INVITE")

    def channels(self) -> str:
        return self.gateway.rx("core show channels concise")


Edit = Callable[[str], str]


def start_inbound(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Inbound], *, edit: Edit | None = None
) -> Inbound:
    """The stand-in, the carrier UAS and the gateway (its extensions.conf optionally post-edited)."""
    settings, secrets = load_example("minimal")
    el = settings["elevenlabs"]
    sip_port = free_sip_port(GATEWAY_IP)  # the softphone registers over UDP on the TCP port's number
    carrier_port = free_port(CARRIER_IP)
    rtp = rtp_range()
    standin = start_standin(
        asterisk_factory,
        e164=el["phone_number"],
        gateway_out=(el["outbound_username"], secrets[el["outbound_password"]]),
        gateway_in=(el["inbound_username"], secrets[el["inbound_password"]]),
        gateway_addr=(GATEWAY_IP, sip_port),
    )
    secrets["ssm:/demo/sip/ext-1001"] = PHONE_PASSWORD
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": standin.shared_port},
            "network": loopback_network(GATEWAY_IP, sip_port, rtp, tls_port=free_port(GATEWAY_IP), udp=True),
            "carriers": [ip_carrier(CARRIER_IP, carrier_port, [el["phone_number"]])],
            "extensions": [{"number": EXTENSION, "password": "ssm:/demo/sip/ext-1001"}],
            "dialplan": {"outbound_allowlist": ALLOWLIST, "outbound_carrier": "carrier"},
        },
    )
    rendered = render_gateway(settings, secrets, tmp_path / "gateway")
    if edit is not None:
        path = rendered.asterisk_dir / "extensions.conf"
        before = path.read_text()
        path.write_text(edit(before))
        assert path.read_text() != before, "the negative control's edit changed nothing"
    # the carrier listens (and answers qualify OPTIONS) before the gateway boots
    carrier = Sipp(
        "net_uas_answer.xml",
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
        extra_files={"hosts": hosts_file({ELEVENLABS_HOST: SHARED_IP})},
    )
    started.append(Inbound(gateway, standin, carrier, settings, secrets, sip_port, tmp_path))
    use_private_hosts(gateway)
    gateway.start()
    return started[-1]


@pytest.fixture
def started() -> Iterator[list[Inbound]]:
    items: list[Inbound] = []
    yield items
    for item in items:
        item.carrier.kill()
        item.standin.stop()


@pytest.fixture
def inbound(asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Inbound]) -> Inbound:
    return start_inbound(asterisk_factory, tmp_path, started)


def agent_calls(inbound: Inbound, number: str) -> None:
    """The agent (stand-in) calls ``number`` through the gateway, authenticated by digest user name."""
    inbound.standin.originate(number)


def authenticated_as_agent(inbound: Inbound) -> bool:
    """The gateway's security log shows the agent's successful digest (waited for: it is written late)."""
    user = re.escape(inbound.inbound_user)
    return inbound.gateway.log_has("security", rf'SecurityEvent="SuccessfulAuth".*AccountID="{user}"')


def refused_in_from_elevenlabs(inbound: Inbound, number: str) -> bool:
    """Asterisk's notice for an authenticated INVITE whose number has no match in from-elevenlabs."""
    text = inbound.gateway.log_text("messages")
    return any(
        f"extension '{number}'" in line and "from-elevenlabs" in line and inbound.inbound_user in line
        for line in text.splitlines()
    )


def hang_up_agent(inbound: Inbound) -> None:
    inbound.standin.inst.rx("channel request hangup all")


# ---------------------------------------------------------------------------------------------- (a)
def test_agent_call_reaches_a_registered_softphone(inbound: Inbound) -> None:
    # Given a softphone registered on extension 1001 (digest auth), answering one call
    phone, phone_port = registered_phone(
        inbound.workdir,
        remote=f"{GATEWAY_IP}:{inbound.sip_port}",
        local_ip=PHONE_IP,
        extension=EXTENSION,
        password=PHONE_PASSWORD,
    )
    try:
        # When the agent calls extension 1001
        agent_calls(inbound, EXTENSION)
        # Then the phone receives the INVITE for 1001 and answers it
        assert wait_for(lambda: received_requests(phone.result().messages, "INVITE"), 15), (
            phone.result().describe() + inbound.gateway.diagnostics()
        )
        invites = received_requests(phone.result().messages, "INVITE")
        assert invites[0].startswith(f"INVITE sip:{EXTENSION}@{PHONE_IP}:{phone_port}"), invites
        assert wait_for(lambda: inbound.standin.channel_count() == 1 and "!Up!" in inbound.channels(), 10), (
            inbound.channels()
        )
        # And it was the agent, authenticated by digest user name, dialling the phone's contact
        assert authenticated_as_agent(inbound), inbound.gateway.log_text("security")
        agent_leg = rf"^PJSIP/{re.escape(inbound.inbound_user)}-\w+!route-extension!{EXTENSION}!\d+!Up!Dial!"
        assert re.search(agent_leg + rf"PJSIP/{EXTENSION}/sip:{EXTENSION}@{PHONE_IP}", inbound.channels(), re.M), (
            inbound.channels()
        )
        hang_up_agent(inbound)
        result = phone.wait(timeout=15)
        assert result.ok, result.describe()
    finally:
        phone.kill()
    assert inbound.carrier_invites() == []


# ---------------------------------------------------------------------------------------------- (b)
def test_agent_call_reaches_the_carrier_through_the_allowlist(inbound: Inbound) -> None:
    # When the agent calls an allowlisted number
    agent_calls(inbound, ALLOWED_NUMBER)
    # Then the carrier receives an INVITE for exactly that number, with its '+'
    assert wait_for(inbound.carrier_invites, 15), inbound.carrier.result().describe() + inbound.gateway.diagnostics()
    invites = inbound.carrier_invites()
    assert len(invites) == 1, invites
    assert invites[0].startswith(f"INVITE sip:{ALLOWED_NUMBER}@{CARRIER_IP}:"), invites
    assert authenticated_as_agent(inbound), inbound.gateway.log_text("security")
    # And the call is up until the agent hangs up, then the carrier gets the BYE
    assert wait_for(lambda: "!Up!" in inbound.channels(), 10), inbound.channels()
    hang_up_agent(inbound)
    result = inbound.carrier.wait(timeout=15)
    assert result.ok, result.describe()
    assert received_requests(result.messages, "BYE"), result.messages


# ------------------------------------------------------------------------------------------ (c) (d)
@pytest.mark.parametrize(
    "number",
    ["+33142685300", "+1415555012,3", "+1415555012a3", "+4420718387501234567"],
    ids=["not-allowlisted", "comma", "letter", "too-long"],
)
def test_agent_call_outside_the_allowlist_never_reaches_the_carrier(inbound: Inbound, number: str) -> None:
    # When the agent (authenticated) calls a number the allowlist does not cover
    agent_calls(inbound, number)
    # Then the gateway refuses it in from-elevenlabs, and the carrier receives nothing
    assert wait_for(lambda: refused_in_from_elevenlabs(inbound, number), 10), inbound.gateway.log_text("messages")
    assert authenticated_as_agent(inbound), inbound.gateway.log_text("security")
    assert wait_for(lambda: inbound.standin.channel_count() == 0, 10), inbound.standin.inst.rx("core show channels")
    assert inbound.carrier_invites() == []
    assert "!" not in inbound.channels()


@pytest.mark.parametrize(
    "number",
    ["+14155550123&PJSIP/x", "+442071838750&PJSIP/carrier", "+1415555012,3"],
    ids=["ampersand", "ampersand-endpoint", "comma"],
)
def test_smuggled_dial_target_never_reaches_the_carrier(inbound: Inbound, number: str) -> None:
    smuggle_is_refused(inbound, number)


def smuggle_is_refused(inbound: Inbound, number: str) -> None:
    """A caller authenticated as the agent sends an allowlisted prefix followed by a smuggle attempt
    (sipp, so the Request-URI user is exactly these bytes): refused, no channel, nothing at the carrier."""
    users = write_injection(
        inbound.workdir / "agent.csv", [[auth_field(inbound.inbound_user, inbound.inbound_password)]]
    )
    result = run_sipp(
        "el_uac_dial.xml",
        inbound.workdir / "smuggle",
        remote=f"{GATEWAY_IP}:{inbound.sip_port}",
        transport="t1",
        local_ip=INTRUDER_IP,
        service=number,
        inject=users,
        keys={"from_user": inbound.inbound_user},
        media_port=free_media_port(INTRUDER_IP),
        timeout=20,
    )
    assert inbound.carrier_invites() == []
    assert result.ok, result.describe()
    assert re.search(r"^SIP/2\.0 404 ", result.messages, re.M), result.messages
    assert authenticated_as_agent(inbound), inbound.gateway.log_text("security")
    assert refused_in_from_elevenlabs(inbound, number), inbound.gateway.log_text("messages")
    assert "!" not in inbound.channels()
    assert inbound.carrier_invites() == []


def wildcard_allowlist(text: str) -> str:
    """The allowlist written with '.' wildcards (which match any character) instead of digit-only patterns."""
    text = re.sub(r"^exten => _\+1415X+,1,(Goto\([^)]*\))\n", r"", text, flags=re.M)
    return re.sub(
        r"^(\[(?:from-elevenlabs|outbound-allowlisted)\]\n)",
        lambda m: (
            m.group(1)
            + ("exten => _+1415.,1,Goto(outbound-allowlisted,${EXTEN},1)\n" if "from-" in m.group(1) else "")
            + ("exten => _+1415.,1,Goto(dial-carrier,${EXTEN},1)\n" if "outbound" in m.group(1) else "")
        ),
        text,
        flags=re.M,
    )


def test_negative_control_wildcard_allowlist_lets_the_smuggle_through(
    asterisk_factory: AsteriskFactory, tmp_path: Path, started: list[Inbound]
) -> None:
    # Given the allowlist written with a '.' wildcard
    inbound = start_inbound(asterisk_factory, tmp_path, started, edit=wildcard_allowlist)
    # Then the proof fails: Dial() splits the '&' and the carrier is called for the smuggled user
    with pytest.raises(AssertionError):
        smuggle_is_refused(inbound, "+14155550123&PJSIP/carrier")
    assert any(i.startswith(f"INVITE sip:carrier@{CARRIER_IP}:") for i in inbound.carrier_invites()), (
        inbound.carrier.result().messages
    )


# ---------------------------------------------------------------------------------------------- (e)
@pytest.mark.parametrize(
    ("from_user", "credentials", "event"),
    [
        ("elevenlabs-in", None, "ChallengeSent"),
        ("elevenlabs-in", ("elevenlabs-in", "not-the-inbound-password"), "ChallengeResponseFailed"),
        (EXTENSION, None, "ChallengeSent"),
        (EXTENSION, (EXTENSION, "not-the-phone-password"), "ChallengeResponseFailed"),
        ("carrier", None, "ChallengeSent"),
        ("carrier", ("carrier", "anything"), None),
    ],
    ids=[
        "agent-unauthenticated",
        "agent-wrong-password",
        "softphone-unauthenticated",
        "softphone-wrong-password",
        "carrier-unauthenticated",
        "carrier-made-up-credentials",
    ],
)
def test_unauthenticated_callers_never_reach_a_context_that_dials_out(
    inbound: Inbound, from_user: str, credentials: tuple[str, str] | None, event: str | None
) -> None:
    # When a caller at an address no endpoint is identified by claims to be the agent, a softphone or
    # the carrier, and dials an allowlisted number, without credentials or with wrong ones
    options: dict[str, Any] = {
        "remote": f"{GATEWAY_IP}:{inbound.sip_port}",
        "transport": "t1",
        "local_ip": INTRUDER_IP,
        "service": ALLOWED_NUMBER,
        "media_port": free_media_port(INTRUDER_IP),
        "timeout": 20,
    }
    if credentials is None:
        result = run_sipp("uac_noauth.xml", inbound.workdir / "intruder", keys={"from_user": from_user}, **options)
    else:
        users = write_injection(inbound.workdir / "intruder.csv", [[auth_field(*credentials)]])
        result = run_sipp(
            "el_uac_dial.xml", inbound.workdir / "intruder", keys={"from_user": from_user}, inject=users, **options
        )
    # Then it is challenged (again), never answered: no channel was created, nothing reached a
    # dialplan context, and the carrier received nothing
    assert result.ok, result.describe()
    assert not re.search(r"^SIP/2\.0 (1[1-9]\d|2\d\d) ", result.messages, re.M), result.messages
    assert "!" not in inbound.channels()
    assert "context '" not in inbound.gateway.log_text("messages")
    assert inbound.carrier_invites() == []
    if event is not None:  # waited for first: once it is written, a SuccessfulAuth of the same request would be too
        assert inbound.gateway.log_has("security", f'SecurityEvent="{event}"'), inbound.gateway.log_text("security")
    security = inbound.gateway.log_text("security")
    assert not re.search(r'SecurityEvent="SuccessfulAuth"', security), security


# ------------------------------------------------------------------------------------------ stand-in
def test_standin_refuses_register(inbound: Inbound) -> None:
    # When a client registers at the ElevenLabs address, even with credentials the stand-in knows
    el = inbound.settings["elevenlabs"]
    users = write_injection(
        inbound.workdir / "register.csv",
        [[auth_field(el["outbound_username"], inbound.secrets[el["outbound_password"]])]],
    )
    result = run_sipp(
        "register_refused.xml",
        inbound.workdir / "register",
        remote=f"{SHARED_IP}:{inbound.standin.shared_port}",
        transport="t1",
        local_ip=INTRUDER_IP,
        inject=users,
        keys={"user": el["outbound_username"]},
        timeout=20,
    )
    # Then the final answer is not a 2xx
    assert result.ok, result.describe()
    finals = re.findall(r"^SIP/2\.0 ([2-6]\d\d) ", result.messages, re.M)
    assert finals, result.messages
    assert not finals[-1].startswith("2"), result.messages
