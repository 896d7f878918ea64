"""A call whose parties have vanished without a BYE is ended by the gateway, on the real Asterisk.

A carrier caller (sipp, ``carrier_uac_until_bye.xml``: it sends no RTP and stays until it gets a BYE) calls the
agent's DID; the agent (sipp, ``net_uas_answer.xml``) answers and sends no RTP either, as a carrier or an agent
that crashed or lost its network would. With ``network.rtp_timeout_s`` the gateway hangs up both legs with a BYE
after that long without RTP, so the call stops holding a channel and a place in the agent's concurrency.
Negative control: with the timeout off (0, the Asterisk default) the same call is still up long after.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import test_agent_fallback
from support.asterisk import AsteriskInstance
from support.sipp import Sipp, free_port, received_requests
from test_agent_fallback import AGENT_IP, Rig, start_gateway

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

TIMEOUT_S = 2
rigs = test_agent_fallback.rigs  # the fixture that ends every sipp the rig started


def silent_call(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig], rtp_timeout_s: int
) -> tuple[Rig, Sipp, Sipp]:
    agent_port = free_port(AGENT_IP)
    rig = start_gateway(
        asterisk_factory, tmp_path, rigs, agent_port=agent_port, network={"rtp_timeout_s": rtp_timeout_s}
    )
    agent = rig.agent("net_uas_answer.xml", agent_port)
    caller = rig.call("carrier_uac_until_bye.xml", "caller", keys={"caller": "+15550001111"})
    return rig, agent, caller


def channels(gateway: AsteriskInstance) -> int:
    match = re.search(r"(\d+) active channels?", gateway.rx("core show channels count"))
    assert match, "no channel count"
    return int(match.group(1))


def wait_answered(gateway: AsteriskInstance, agent_messages: Callable[[], str], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if received_requests(agent_messages(), "ACK") and channels(gateway) == 2:
            return
        time.sleep(0.1)
    raise AssertionError(f"the call was not answered within {timeout} s\n{gateway.diagnostics()}")


def test_a_call_without_rtp_is_hung_up_on_both_legs_after_the_timeout(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig]
) -> None:
    # Given a gateway that hangs up after 2 s without RTP, and a call whose parties send none
    rig, agent, caller = silent_call(asterisk_factory, tmp_path, rigs, TIMEOUT_S)
    wait_answered(rig.gateway, lambda: agent.result().messages)
    # When they stay silent: then the gateway ends the call with a BYE to each leg
    result = caller.wait(timeout=30)
    assert result.ok, result.describe() + rig.gateway.diagnostics()
    assert received_requests(agent.stop().messages, "BYE"), "the agent's leg got no BYE"
    assert channels(rig.gateway) == 0
    notices = rig.gateway.log_text("messages")
    assert re.search(r"for lack of audio RTP activity in \d+ seconds", notices), rig.gateway.diagnostics()


def test_negative_control_without_the_timeout_the_silent_call_stays_up(
    asterisk_factory: AsteriskFactory, tmp_path: Path, rigs: list[Rig]
) -> None:
    rig, agent, caller = silent_call(asterisk_factory, tmp_path, rigs, 0)
    wait_answered(rig.gateway, lambda: agent.result().messages)
    time.sleep(4 * TIMEOUT_S)  # twice as long as the timeout above took, with no event to wait for
    assert caller.running
    assert channels(rig.gateway) == 2
    assert not received_requests(agent.result().messages, "BYE")
