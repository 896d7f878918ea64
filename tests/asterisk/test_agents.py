"""Several agents behind one gateway, on the real Asterisk: each DID, IVR choice and fallback reaches the agent
the settings name, with that agent's number as the INVITE's Request-URI user and its own credentials.

The ElevenLabs stand-in (standin.py) holds three numbers: the default agent's (+14155550100) and sales'
(+14155550111), both imported for the gateway's ``gateway-out`` credentials, and support's (+14155550122),
imported for ``support-out``: the stand-in's ``support-out`` endpoint is the only way to it, so an INVITE for it
with the default credentials finds no such number. The stand-in logs each call it takes with the Request-URI
user and the endpoint (the credentials) it came in on.

Negative controls run the same calls against a rendered config post-edited to lose the routing (the route to
the named agent replaced by the default agent's, the agent's own credentials replaced by the default ones,
the fallback to another agent removed, the once-per-call guard removed) and assert what the stand-in or the
gateway then did instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from standin import ELEVENLABS_HOST, SHARED_IP, Standin, hosts_file, start_standin, use_private_hosts, wait_for
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
    run_sipp,
    scenario_path,
    write_injection,
)

AsteriskFactory = Callable[..., AsteriskInstance]
Edit = Callable[[str, str], str]
"""(file name, text) -> the post-edited text of a rendered file."""

pytestmark = pytest.mark.asterisk

GATEWAY_IP = "127.0.0.1"
CARRIER_IP = "127.0.0.5"
PHONE_IP = "127.0.0.7"
PHONE_PASSWORD = "phone-1001-NOT-A-SECRET"

DEFAULT = "+14155550100"  # examples/minimal.yaml: the default agent's number
SALES = "+14155550111"
BOT = "sales.bot"  # a SIP identifier imported into ElevenLabs instead of a number
SUPPORT = "+14155550122"
NOT_IMPORTED = "+14155550199"  # a number the stand-in does not hold (404): an agent that cannot take calls
SALES_DID = "+14155550201"
SUPPORT_DID = "+14155550202"
IVR_DID = "+14155550203"
BOT_DID = "+14155550204"
SUPPORT_USER = "support-out"
SUPPORT_PASSWORD = "support-out-NOT-A-SECRET"

STANDIN_SUPPORT = f"""
; support's number is imported with its own credentials: only this endpoint reaches it
[{SUPPORT_USER}]
type = endpoint
transport = transport-tcp
identify_by = auth_username
context = agent-support
auth = {SUPPORT_USER}-auth
disallow = all
allow = ulaw,alaw,g722
direct_media = no
rtp_symmetric = yes
force_rport = yes
dtmf_mode = rfc4733

[{SUPPORT_USER}-auth]
type = auth
auth_type = userpass
username = {SUPPORT_USER}
password = {SUPPORT_PASSWORD}
"""
STANDIN_SUPPORT_DIALPLAN = f"""
[agent-support]
exten => {SUPPORT},1,Goto(agent-answer,${{EXTEN}},1)
"""


@dataclass
class Rig:
    gateway: AsteriskInstance
    standin: Standin
    sip_port: int
    workdir: Path

    def call(self, did: str, label: str, scenario: str | Path = "carrier_uac_pcap.xml", **options: Any) -> SippResult:
        return run_sipp(
            scenario,
            self.workdir / label,
            remote=f"{GATEWAY_IP}:{self.sip_port}",
            transport="t1",
            local_ip=CARRIER_IP,
            service=did,
            media_port=free_media_port(CARRIER_IP),
            timeout=30,
            **options,
        )

    def invites_relayed(self, number: str) -> int:
        """INVITEs for `number` that reached the stand-in (a challenged INVITE and its retry count as two)."""
        return sum(1 for action, start in self.standin.shared.events if start.startswith(f"INVITE sip:{number}@"))


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    started: list[Rig] = []
    yield started
    for rig in started:
        rig.standin.stop()


def agents_settings() -> dict[str, Any]:
    """Two more agents besides the default one: sales (the default credentials), support (its own)."""
    return {
        "agents": [
            {"name": "sales", "phone_number": SALES},
            {
                "name": "support",
                "phone_number": SUPPORT,
                "outbound_username": SUPPORT_USER,
                "outbound_password": "ssm:/demo/sip/support-out",
            },
        ],
    }


def start_rig(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    rigs: list[Rig],
    overrides: dict[str, Any] | Callable[[str], dict[str, Any]],
    *,
    dids: list[str],
    edit: Edit | None = None,
) -> Rig:
    """The stand-in holding the three numbers, and a gateway rendered from examples/minimal.yaml with
    `overrides` (agents, routes; or a function of the gateway's directory as Asterisk sees it), a carrier
    delivering `dids`, optionally post-edited. The gateway's `recordings` and `spool` directories exist."""
    gateway = asterisk_factory(None, start=False)
    if callable(overrides):
        overrides = overrides(gateway.chroot_base)
    settings, secrets = load_example("minimal")
    el = settings["elevenlabs"]
    secrets["ssm:/demo/sip/support-out"] = SUPPORT_PASSWORD
    secrets["ssm:/demo/sip/ext-1001"] = PHONE_PASSWORD
    sip_port = free_port(GATEWAY_IP)
    standin = start_standin(
        asterisk_factory,
        e164=DEFAULT,
        gateway_out=(el["outbound_username"], secrets[el["outbound_password"]]),
        gateway_in=(el["inbound_username"], secrets[el["inbound_password"]]),
        gateway_addr=(GATEWAY_IP, sip_port),
        numbers=(SALES, BOT),
        extra_pjsip=STANDIN_SUPPORT,
        extra_dialplan=STANDIN_SUPPORT_DIALPLAN,
    )
    rig_settings = merge(
        merge(settings, overrides),
        {
            "elevenlabs": {"port": standin.shared_port},
            "network": loopback_network(GATEWAY_IP, sip_port, rtp_range(), tls_port=free_port(GATEWAY_IP)),
            "carriers": [ip_carrier(CARRIER_IP, free_port(CARRIER_IP), dids)],
        },
    )
    rendered = render_gateway(rig_settings, secrets, tmp_path / "gateway")
    if edit is not None:
        for name in ("extensions.conf", "pjsip.conf"):
            path = rendered.asterisk_dir / name
            path.write_text(edit(name, path.read_text()))
    gateway.config_dir = rendered.asterisk_dir
    gateway.extra_files = {"hosts": hosts_file({ELEVENLABS_HOST: SHARED_IP})}
    use_private_hosts(gateway)
    gateway.prepare()
    for directory in ("recordings", "spool"):
        gateway.host_path(f"{gateway.chroot_base}/{directory}").mkdir(parents=True, exist_ok=True)
    gateway.start(prepare=False)
    rigs.append(Rig(gateway, standin, sip_port, tmp_path))
    return rigs[-1]


def replacing(file: str, old: str, new: str, count: int = 1) -> Edit:
    """A negative control's edit: `old` → `new` in one rendered file (it must be there `count` times)."""

    def edit(name: str, text: str) -> str:
        if name != file:
            return text
        assert text.count(old) == count, f"{old!r} is not in the rendered {file} {count} time(s)"
        return text.replace(old, new)

    return edit


# ----------------------------------------------------------------------------------------- two DIDs


def routed_dids() -> dict[str, Any]:
    return {
        "dialplan": {
            "did_routes": {
                SALES_DID: {"kind": "agent", "agent": "sales"},
                SUPPORT_DID: {"kind": "agent", "agent": "support"},
            }
        }
    }


def test_two_dids_reach_two_agents_each_with_its_number_and_credentials(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig]
) -> None:
    # Given the sales DID routed to sales, the support DID to support (its own credentials), a third DID to an
    # agent imported as a SIP identifier, others to the default agent
    settings = agents_settings() | routed_dids()
    settings["agents"].append({"name": "bot", "sip_identifier": BOT})
    settings["dialplan"]["did_routes"][BOT_DID] = {"kind": "agent", "agent": "bot"}
    rig = start_rig(asterisk_factory, tmp_path, rigs, settings, dids=[DEFAULT, SALES_DID, SUPPORT_DID, BOT_DID])
    # When a carrier caller calls each DID
    for did, label in ((SALES_DID, "sales"), (SUPPORT_DID, "support"), (BOT_DID, "bot"), (DEFAULT, "default")):
        result = rig.call(did, label, duration_ms=1000)
        assert result.ok, result.describe() + rig.gateway.diagnostics() + rig.standin.inst.log_text("messages")
    # Then each INVITE carried its agent's number as the Request-URI user, support's with its own credentials
    assert rig.standin.agent_call_endpoints() == [
        (SALES, "gateway-out"),
        (SUPPORT, SUPPORT_USER),
        (BOT, "gateway-out"),
        (DEFAULT, "gateway-out"),
    ], rig.standin.inst.log_text("messages")


def test_negative_control_without_the_did_route_the_sales_did_reaches_the_default_agent(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig]
) -> None:
    edit = replacing("extensions.conf", "Goto(route-agent-sales,s,1)", "Goto(route-agent,s,1)")
    rig = start_rig(asterisk_factory, tmp_path, rigs, agents_settings() | routed_dids(), dids=[SALES_DID], edit=edit)
    result = rig.call(SALES_DID, "sales", duration_ms=500)
    assert result.ok, result.describe()
    assert rig.standin.agent_call_endpoints() == [(DEFAULT, "gateway-out")]


def test_negative_control_with_the_default_credentials_the_support_number_is_not_found(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig]
) -> None:
    settings, secrets = load_example("minimal")
    default_password = secrets[settings["elevenlabs"]["outbound_password"]]
    edit = replacing(
        "pjsip.conf",
        f"username = {SUPPORT_USER}\npassword = {SUPPORT_PASSWORD}\n",
        f"username = gateway-out\npassword = {default_password}\n",
    )
    rig = start_rig(asterisk_factory, tmp_path, rigs, agents_settings() | routed_dids(), dids=[SUPPORT_DID], edit=edit)
    result = rig.call(SUPPORT_DID, "support", "carrier_uac_announced.xml")
    # the stand-in took the INVITE as the default credentials' and found no such number there
    assert result.ok, result.describe()  # announced and refused: the agent never answered
    messages = rig.standin.inst.log_text("messages")
    refused = rf"to extension '{re.escape(SUPPORT)}' rejected because extension not found in context 'agent'"
    assert re.search(refused, messages), messages
    assert rig.standin.agent_calls() == []


# ---------------------------------------------------------------------------------------------- IVR


def ivr_call(rig: Rig, label: str, digit: str) -> SippResult:
    """The carrier calls the IVR's DID and presses `digit` (RFC 4733), then holds 3 s."""
    path = rig.workdir / f"carrier-dtmf-{digit}.xml"
    pcap = SIPP_SHARE / f"dtmf_2833_{digit}.pcap"
    path.write_text(scenario_path("rec_carrier_call.xml").read_text().replace("@PCAP@", str(pcap)))
    return rig.call(IVR_DID, label, path, keys={"caller": "+15550001"}, duration_ms=3000)


@pytest.mark.parametrize("control", [False, True], ids=["routed", "negative-control-without-the-choice-route"])
def test_an_ivr_choice_reaches_the_named_agent(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], control: bool
) -> None:
    # Given a DID routed to the IVR, whose choice 2 is the sales agent
    overrides = agents_settings() | {
        "dialplan": {
            "did_routes": {IVR_DID: {"kind": "ivr"}},
            "ivr": {"enabled": True, "timeout_s": 5, "choices": {"2": {"kind": "agent", "agent": "sales"}}},
        }
    }
    edit = replacing("extensions.conf", "Goto(route-agent-sales,s,1)", "Goto(route-agent,s,1)") if control else None
    rig = start_rig(asterisk_factory, tmp_path, rigs, overrides, dids=[IVR_DID], edit=edit)
    # When a carrier caller presses 2
    result = ivr_call(rig, "digit2", "2")
    assert result.ok, result.describe() + rig.gateway.diagnostics()
    # Then the sales agent took the call (the control: the default agent took it instead)
    assert wait_for(lambda: rig.standin.agent_calls(), 5)
    assert rig.standin.agent_calls() == [DEFAULT if control else SALES], rig.standin.inst.log_text("messages")


# ---------------------------------------------------------------------------------------- softphones


@pytest.mark.parametrize("control", [False, True], ids=["routed", "negative-control-without-the-extension-route"])
def test_a_softphone_dialling_an_agent_extension_reaches_that_agent(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], control: bool
) -> None:
    # Given softphone 1001, and the sales agent on extension 801 (the default agent stays on 800)
    overrides = {
        "agents": [{**agents_settings()["agents"][0], "extension": "801"}],
        "extensions": [{"number": "1001", "password": "ssm:/demo/sip/ext-1001"}],
    }
    edit = replacing("extensions.conf", "Goto(route-agent-sales,s,1)", "Goto(route-agent,s,1)") if control else None
    rig = start_rig(asterisk_factory, tmp_path, rigs, overrides, dids=[], edit=edit)
    # When the softphone dials 801
    users = write_injection(tmp_path / "phone.csv", [["1001", auth_field("1001", PHONE_PASSWORD)]])
    result = run_sipp(
        "uac_auth_pcap.xml",
        tmp_path / "phone",
        remote=f"{GATEWAY_IP}:{rig.sip_port}",
        transport="t1",
        local_ip=PHONE_IP,
        service="801",
        inject=users,
        duration_ms=1000,
        media_port=free_media_port(PHONE_IP),
        timeout=30,
    )
    # Then the sales agent took the call (the control: the default agent took it instead)
    assert result.ok, result.describe() + rig.gateway.diagnostics()
    assert rig.standin.agent_calls() == [DEFAULT if control else SALES], rig.standin.inst.log_text("messages")


# ----------------------------------------------------------------------------------------- fallback


def fallback_settings(sales_number: str) -> dict[str, Any]:
    """The default agent's number is one ElevenLabs does not hold (every call to it fails); its fallback is
    sales, whose own fallback leads back to the default agent (a loop only the once-per-call rule stops)."""
    return {
        "elevenlabs": {"phone_number": NOT_IMPORTED, "fallback": {"kind": "agent", "agent": "sales"}},
        "agents": [{"name": "sales", "phone_number": sales_number, "fallback": {"kind": "agent", "agent": "default"}}],
    }


@pytest.mark.parametrize("control", [False, True], ids=["fallback", "negative-control-without-the-fallback-route"])
def test_a_call_the_agent_cannot_take_goes_to_the_fallback_agent(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], control: bool
) -> None:
    # Given a default agent that cannot take calls, with the sales agent as its fallback
    unrouted = replacing("extensions.conf", " same => n,Goto(route-agent-sales,s,1)\n", "")
    rig = start_rig(
        asterisk_factory,
        tmp_path,
        rigs,
        fallback_settings(SALES),
        dids=[NOT_IMPORTED],
        edit=unrouted if control else None,
    )
    # When a carrier caller calls the default agent's DID
    if control:
        # (without the route the caller hears the default agent's announcement, and sales is never asked)
        result = rig.call(NOT_IMPORTED, "caller", "carrier_uac_announced.xml")
        assert result.ok, result.describe() + rig.gateway.diagnostics()
        assert rig.invites_relayed(NOT_IMPORTED) >= 1, rig.standin.shared.events
        assert rig.invites_relayed(SALES) == 0, rig.standin.shared.events
        return
    result = rig.call(NOT_IMPORTED, "caller", duration_ms=1000)
    # Then the default agent was asked, and the sales agent took the call with its own number
    assert result.ok, result.describe() + rig.gateway.diagnostics()
    assert rig.invites_relayed(NOT_IMPORTED) >= 1
    assert rig.standin.agent_calls() == [SALES], rig.standin.inst.log_text("messages")


@pytest.mark.parametrize("control", [False, True], ids=["once", "negative-control-without-the-guard"])
def test_the_fallback_is_taken_once_per_call_even_when_agents_name_each_other(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], control: bool
) -> None:
    # Given two agents that both cannot take calls and name each other as fallback
    other = "+14155550198"  # not held by the stand-in either
    guard = ' same => n,GotoIf($["${GW_FALLBACK}" = "1"]?announce)\n'
    rig = start_rig(
        asterisk_factory,
        tmp_path,
        rigs,
        fallback_settings(other),
        dids=[NOT_IMPORTED],
        edit=replacing("extensions.conf", guard, "", count=2) if control else None,
    )
    if control:
        # (without the guard the call goes round between the two agents, re-inviting both again and again)
        caller = Sipp(
            "carrier_uac_announced.xml",
            tmp_path / "caller",
            remote=f"{GATEWAY_IP}:{rig.sip_port}",
            transport="t1",
            local_ip=CARRIER_IP,
            service=NOT_IMPORTED,
            global_timeout_s=20,
        ).start()
        try:
            assert wait_for(lambda: rig.invites_relayed(NOT_IMPORTED) >= 6, 15), rig.standin.shared.events
        finally:
            caller.kill()
        return
    # When a carrier caller calls
    result = rig.call(NOT_IMPORTED, "caller", "carrier_uac_announced.xml")
    # Then each agent was tried once (an INVITE and its authenticated retry each), and the caller heard
    # sales' announcement and a clear refusal
    assert result.ok, result.describe() + rig.gateway.diagnostics()
    assert (rig.invites_relayed(NOT_IMPORTED), rig.invites_relayed(other)) == (2, 2), rig.standin.shared.events


@pytest.mark.parametrize("control", [False, True], ids=["once", "negative-control-recording-started-twice"])
def test_a_caller_who_falls_back_to_another_agent_is_recorded_once(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], control: bool
) -> None:
    # Given recording on, and a default agent that cannot take calls with sales as its fallback
    def overrides(base: str) -> dict[str, Any]:
        recording = {"recording": True, "recordings_dir": f"{base}/recordings", "recording_spool_dir": f"{base}/spool"}
        return fallback_settings(SALES) | {"dialplan": recording}

    guard = 'exten => s,1,ExecIf($["${REC_FILE}" != ""]?Return())\n same => n,Set(REC_FILE='
    twice = replacing("extensions.conf", guard, "exten => s,1,Set(REC_FILE=")
    rig = start_rig(asterisk_factory, tmp_path, rigs, overrides, dids=[NOT_IMPORTED], edit=twice if control else None)
    # When a carrier caller calls, and sales takes the call
    result = rig.call(NOT_IMPORTED, "caller", duration_ms=2000)
    assert result.ok, result.describe() + rig.gateway.diagnostics()
    assert rig.standin.agent_calls() == [SALES]
    # Then the call left one upload job naming one recording (the control: the second MixMonitor's hangup
    # handler appends a second set of lines to the same job)
    # (hangup handlers have all run once the caller's channel is gone)
    assert wait_for(lambda: "0 active channels" in rig.gateway.rx("core show channels count"), 10)
    spool = rig.gateway.host_path(f"{rig.gateway.chroot_base}/spool")
    (job,) = spool.glob("*.job")
    text = job.read_text()
    assert text.count("end=1\n") == (2 if control else 1), text
    assert re.findall(r"^callee=(.*)$", text, re.M)[-1] == SALES, text
