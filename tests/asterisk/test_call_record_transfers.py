"""A transfer the agent asks for (REFER) is in the call record: its target and outcome, on the real Asterisk.

Everything runs in one network namespace: the carrier caller (sipp, holds ~12 s), the gateway rendered from
examples/minimal.yaml with an IP carrier and the outbound allowlist ``+1415``, the agent as sipp sending REFER
the way ElevenLabs does (``el_uas_refer.xml``; ``el_uas_refer_refused.xml`` when the gateway refuses), the
transfer target as a sipp UAS behind the carrier, and the host agent's ``bye-headers`` service receiving the
gateway's HEP copies. A transfer the gateway accepts runs its transfer contexts, which the dialplan records
(``completed`` when the target answered, ``failed`` when it did not and the caller went to the fallback); one it
refuses (404, before any 202) runs no dialplan at all, so only the REFER and its answer, kept from the HEP copies,
tell ship-calls it was ``refused``.
Negative controls: the dialplan record of the refused transfer says ``none`` (only the HEP copies know), and a
dialplan without the transfer-data step records a completed transfer as ``none``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sip_trunk.agent import calls
from sip_trunk.callrecords import with_agent_headers
from standin import ELEVENLABS_HOST, hosts_file, use_private_hosts, wait_for
from support.asterisk import AsteriskInstance
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.netns import NamespaceSet
from support.rtp import rtp_range
from support.sipp import Sipp, free_media_port, received_requests, scenario_path
from test_call_record_headers import AGENT_IP, AGENT_SIP, CARRIER_IP, GATEWAY_IP, GATEWAY_SIP, bye_headers_service

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

TARGET_SIP = 5066
CALLER = "+442071838750"
ALLOWED = "+14155550199"
NOT_ALLOWED = "+33142685300"


@pytest.fixture
def namespace() -> Iterator[str]:
    with NamespaceSet() as nss:
        yield nss.add("xfer")


def transfer_call(
    asterisk_factory: AsteriskFactory,
    tmp_path: Path,
    ns: str,
    *,
    target: str,
    refused: bool = False,
    target_scenario: str = "net_uas_ring_answer.xml",
    edit: Callable[[str], str] | None = None,
    fallback_hangs_up: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], Sipp]:
    """The carrier calls the agent, the agent REFERs to ``target``; returns (the dialplan's record, the record
    as ship-calls sends it, the transfer target's sipp)."""
    settings, secrets = load_example("minimal")
    el = settings["elevenlabs"]
    gateway = asterisk_factory(None, netns=ns, start=False)
    base = gateway.chroot_base
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": AGENT_SIP},
            "network": loopback_network(GATEWAY_IP, GATEWAY_SIP, rtp_range()),
            "carriers": [ip_carrier(CARRIER_IP, TARGET_SIP, [el["phone_number"]])],
            "dialplan": {
                "call_records": True, "call_records_dir": f"{base}/calls",
                "outbound_allowlist": ["+1415"], "outbound_carrier": "carrier",
            },
        },
    )  # fmt: skip
    if fallback_hangs_up:  # a failed transfer falls back to softphone 1001, never registered: the gateway hangs up
        secrets["ssm:/demo/sip/ext-1001"] = "phone-1001-Secret"
        settings["extensions"] = [{"number": "1001", "password": "ssm:/demo/sip/ext-1001"}]
        settings["dialplan"]["transfers"] = {"fallback": {"kind": "extension", "extension": "1001"}}
    gateway.config_dir = render_gateway(settings, secrets, tmp_path / "gateway").asterisk_dir
    if edit is not None:
        path = gateway.config_dir / "extensions.conf"
        path.write_text(edit(path.read_text()))
    gateway.extra_files = {"hosts": hosts_file({ELEVENLABS_HOST: AGENT_IP})}
    use_private_hosts(gateway)
    gateway.prepare()
    spool = gateway.host_path(f"{base}/calls")
    spool.mkdir(parents=True)
    gateway.start(prepare=False)
    receiver = bye_headers_service(ns, spool, tmp_path / "bye-headers.log")
    sipps = []
    try:
        far = Sipp(
            target_scenario, tmp_path / "target", transport="t1", local_ip=CARRIER_IP, local_port=TARGET_SIP,
            media_port=free_media_port(CARRIER_IP), rtp_echo=True, extra_args=["-aa"], netns=ns, global_timeout_s=60,
        )  # fmt: skip
        agent = Sipp(
            "el_uas_refer_refused.xml" if refused else "el_uas_refer.xml", tmp_path / "agent", transport="t1",
            local_ip=AGENT_IP, local_port=AGENT_SIP, media_port=free_media_port(AGENT_IP),
            keys={"refer_to": f"<sip:{target}@gw.example.com>", "conversation": "conv_x1"}, extra_args=["-aa"],
            netns=ns, global_timeout_s=60,
        )  # fmt: skip
        if fallback_hangs_up:  # the caller waits for the gateway's BYE
            scenario, caller_keys = scenario_path("carrier_uac_until_bye.xml"), {"caller": CALLER}
        else:  # the caller holds ~12 s, then hangs up
            scenario, caller_keys = scenario_path("carrier_uac_hold.xml"), {"from_user": CALLER}
        caller = Sipp(
            scenario, tmp_path / "caller", remote=f"{GATEWAY_IP}:{GATEWAY_SIP}", transport="t1",
            local_ip=CARRIER_IP, service=el["phone_number"], keys=caller_keys,
            media_port=free_media_port(CARRIER_IP), extra_args=["-aa"], netns=ns, global_timeout_s=40,
        )  # fmt: skip
        sipps = [far, agent, caller]
        far.start()
        agent.start()
        caller.start()
        result = caller.wait(timeout=40)
        assert result.ok, result.describe() + gateway.log_text("messages")[-3000:]
        assert agent.wait(timeout=20).ok, agent.result().describe()

        def records() -> list[dict[str, Any]]:
            return [
                json.loads(line) for p in sorted(spool.glob("calls-*.jsonl")) for line in p.read_text().splitlines()
            ]

        assert wait_for(records, 5.0), "no call record:\n" + gateway.log_text("messages")[-3000:]
        (record,) = records()
    finally:
        for sipp in sipps:
            sipp.kill()
        receiver.terminate()
        receiver.wait(timeout=10)
    shipped = with_agent_headers(record, calls.load_bye_headers(spool))
    print(f"dialplan: transfer={record.get('transfer')} shipped: transfer={shipped.get('transfer')}")
    return record, shipped, far


def target_invites(far: Sipp) -> list[str]:
    return received_requests(far.result().messages, "INVITE")


def test_a_completed_transfer_is_recorded_with_its_target(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given the agent transfers the caller to an allowlisted number, and the target answers
    record, shipped, far = transfer_call(asterisk_factory, tmp_path, namespace, target=ALLOWED)
    # Then the target was called, and the record says a transfer to it completed
    assert len(target_invites(far)) == 1, far.result().describe()
    assert record["transfer"] == {"target": ALLOWED, "outcome": "completed"}
    assert shipped["transfer"] == record["transfer"]


def test_a_transfer_to_a_busy_target_is_recorded_as_failed(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given the agent transfers the caller to an allowlisted number that is busy (the caller goes to the fallback,
    # here an unregistered softphone, so the gateway ends the call)
    record, _, far = transfer_call(
        asterisk_factory,
        tmp_path,
        namespace,
        target=ALLOWED,
        target_scenario="net_uas_busy.xml",
        fallback_hangs_up=True,
    )
    # Then the target was tried, and the record says the transfer failed
    assert len(target_invites(far)) == 1, far.result().describe()
    assert record["transfer"] == {"target": ALLOWED, "outcome": "failed"}


def test_a_refused_transfer_is_recorded_from_the_refer_and_its_answer(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    # Given the agent asks for a transfer to a number no rule allows (the gateway answers 404, the caller stays)
    record, shipped, far = transfer_call(asterisk_factory, tmp_path, namespace, target=NOT_ALLOWED, refused=True)
    # Then nothing was dialled, and the record as shipped says the transfer to that number was refused
    assert target_invites(far) == []
    assert shipped["transfer"] == {"target": NOT_ALLOWED, "outcome": "refused"}
    # while the dialplan alone (negative control) never saw it: a refused REFER runs no dialplan
    assert record["transfer"] == {"target": "", "outcome": "none"}


def test_negative_control_without_the_transfer_data_step_a_transfer_is_not_recorded(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str
) -> None:
    def without(text: str) -> str:
        line = " same => n,Set(CR_XFER_TARGET=${FILTER(0-9A-Za-z+*#_.\\x2d,${ARG1}):0:32})\n"
        assert line in text
        return text.replace(line, "")

    # Given the dialplan without the step that names the transfer's target
    record, _, far = transfer_call(asterisk_factory, tmp_path, namespace, target=ALLOWED, edit=without)
    # Then the transfer still completed (the target was called), but the record cannot tell
    assert len(target_invites(far)) == 1, far.result().describe()
    assert record["transfer"] == {"target": "", "outcome": "none"}
