"""The agent's BYE headers: HEP v3 unpacking, the header checks (a hostile corpus) and the join to a record."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from sip_trunk.callrecords import (
    MAX_AGENT_HEADERS,
    AgentSip,
    bye_headers,
    checked_entry,
    hep_payload,
    refer_facts,
    sip_facts,
    with_agent_headers,
)

pytestmark = pytest.mark.unit


def hep(payload: bytes, *, extra: bytes = b"") -> bytes:
    """A HEP v3 packet as res_hep builds it: chunks of (vendor 0, type, length), the SIP message in 0x000f."""
    chunks = extra + struct.pack("!HHH", 0, 0x0001, 7) + b"\x02" + struct.pack("!HHH", 0, 0x000F, 6 + len(payload))
    chunks += payload
    return b"HEP3" + struct.pack("!H", 6 + len(chunks)) + chunks


def bye(*headers: str, method: str = "BYE", call_id: str = "a84b4c76e66710@198.51.100.7", cseq: str = "2 BYE") -> bytes:
    lines = [f"{method} sip:gw@203.0.113.10:5060;transport=tcp SIP/2.0", "Via: SIP/2.0/TCP 198.51.100.7",
             f"Call-ID: {call_id}", f"CSeq: {cseq}", *headers, "Content-Length: 0", "", ""]  # fmt: skip
    return "\r\n".join(lines).encode()


def test_the_sip_message_is_unpacked_from_hep() -> None:
    message = bye("X-Conversation-ID: conv_1")
    ip_family = struct.pack("!HHH", 0, 0x0002, 7) + b"\x06"
    assert hep_payload(hep(message, extra=ip_family)) == message


@pytest.mark.parametrize(
    "packet",
    [b"", b"HEP2" + b"\x00" * 20, b"HEP3\x00\x10" + struct.pack("!HHH", 0, 0x000F, 2), b"HEP3\x00\x06"],
    ids=["empty", "version 2", "chunk shorter than its header", "no payload"],
)
def test_a_packet_that_is_not_hep3_with_a_payload_gives_nothing(packet: bytes) -> None:
    assert hep_payload(packet) is None


def test_the_conversation_id_is_its_own_field_and_other_x_headers_a_map() -> None:
    found = bye_headers(bye("X-Conversation-ID: conv_01jx7Hk2", "x-call-outcome: resolved", "X-Lang: en-GB"))
    assert found == {
        "kind": "bye",
        "sip_call_id": "a84b4c76e66710@198.51.100.7",
        "conversation_id": "conv_01jx7Hk2",
        "headers": {"x-call-outcome": "resolved", "x-lang": "en-GB"},
    }


@pytest.mark.parametrize(
    "header",
    [
        'X-Note: a"b',  # a quote would end a JSON string
        "X-Note: a b",  # spaces
        "X-Note: {x}",
        "X-Note: a\\b",
        "X-Note: a;b=c",
        "X-Note: a,b",
        "X-Note: " + "a" * 65,  # longer than 64
        "X-Note:",  # empty
        "X-No_te: a",  # a name outside X-[A-Za-z0-9-]
        "X-: a",
        "X-" + "n" * 41 + ": a",
        "P-Note: a",  # not an X- header
        "X-Note: caf\u00e9",
        "X-Note: a\x00b",
        "X-Note: a\x1bb",
    ],
)
def test_a_hostile_header_is_dropped_whole(header: str) -> None:
    found = bye_headers(bye("X-Conversation-ID: conv_1", header))
    assert found is not None
    assert found["headers"] == {}, found


def test_a_folded_header_is_dropped_and_cannot_start_a_header() -> None:
    found = bye_headers(bye("X-Note: first", " X-Injected: 1", "X-Conversation-ID: conv_1"))
    assert found == {
        "kind": "bye", "sip_call_id": "a84b4c76e66710@198.51.100.7", "conversation_id": "conv_1", "headers": {},
    }  # fmt: skip


def test_at_most_16_headers_and_the_first_of_a_name() -> None:
    many = [f"X-H{n}: v{n}" for n in range(40)]
    found = bye_headers(bye("X-H0: first", *many))
    assert found is not None
    assert len(found["headers"]) == MAX_AGENT_HEADERS
    assert found["headers"]["x-h0"] == "first"


@pytest.mark.parametrize(
    "message",
    [bye("X-Conversation-ID: conv_1", method="INVITE"), bye("X-Conversation-ID: conv_1", method="ACK"),
     bye("Reason: Q.850;cause=16"), bye("X-Conversation-ID: conv_1", call_id='"";'),
     b"SIP/2.0 200 OK\r\nCall-ID: x\r\nX-Conversation-ID: conv_1\r\n\r\n"],
    ids=["invite", "ack", "no x- header", "no usable call-id", "a response"],
)  # fmt: skip
def test_only_a_bye_with_x_headers_is_kept(message: bytes) -> None:
    assert bye_headers(message) is None


def test_the_call_id_is_reduced_as_the_dialplan_reduces_a_legs() -> None:
    found = bye_headers(bye("X-Conversation-ID: conv_1", call_id="abc<def>@host"))
    assert found is not None
    assert found["sip_call_id"] == "abcdef@host"


def record(**overrides: Any) -> dict[str, Any]:
    legs = {"caller_leg": {"sip_call_id": "carrier-1"}, "callee_leg": {"sip_call_id": "agent-1"}}
    return {"entry": "carrier", "route": "agent", **legs, **overrides}


ENTRY = {
    "kind": "bye",
    "sip_call_id": "agent-1",
    "conversation_id": "conv_1",
    "headers": {"x-call-outcome": "resolved"},
}


def test_the_headers_join_the_agents_leg_by_its_call_id() -> None:
    merged = with_agent_headers(record(), AgentSip([ENTRY]))
    assert (merged["conversation_id"], merged["agent_headers"]) == ("conv_1", {"x-call-outcome": "resolved"})


def test_a_bye_on_the_carriers_leg_is_not_the_agents() -> None:
    merged = with_agent_headers(record(), AgentSip([{**ENTRY, "sip_call_id": "carrier-1"}]))
    assert (merged["conversation_id"], merged["agent_headers"]) == (None, {})


def test_on_a_call_the_agent_placed_its_leg_is_the_inbound_one() -> None:
    placed = record(entry="elevenlabs", route="carrier", caller_leg={"sip_call_id": "agent-1"})
    assert with_agent_headers(placed, AgentSip([ENTRY]))["conversation_id"] == "conv_1"
    assert with_agent_headers(record(route="extension"), AgentSip([ENTRY]))["conversation_id"] is None


@pytest.mark.parametrize(
    "entry",
    [{**ENTRY, "conversation_id": 'x"y'}, {**ENTRY, "headers": {"x-a": "b c"}}, {**ENTRY, "headers": {"X-A": "b"}},
     {**ENTRY, "headers": {"x-conversation-id": "b"}}, {**ENTRY, "sip_call_id": "a b"}, {**ENTRY, "headers": []},
     {**ENTRY, "headers": {f"x-h{n}": "v" for n in range(17)}}, "not an object", {**ENTRY, "kind": "other"},
     {"kind": "refer", "sip_call_id": "a", "cseq": 1, "target": "a b"},
     {"kind": "refer_answer", "sip_call_id": "a", "cseq": 1, "status": 99},
     {"kind": "refer_answer", "sip_call_id": "a", "cseq": "1", "status": 404}],
)  # fmt: skip
def test_an_entry_read_back_is_held_to_the_same_rules(entry: Any) -> None:
    assert checked_entry(entry) is None
    assert checked_entry(ENTRY) == ENTRY


# --- transfers the gateway refused (a REFER answered 4xx runs no dialplan) ----------------------------------
def refer(target: str, cseq: int = 1) -> bytes:
    return bye(
        f"Refer-To: {target}", "X-Conversation-ID: conv_1", method="REFER", cseq=f"{cseq} REFER", call_id="agent-1"
    )


def answer(status: int, cseq: int = 1, method: str = "REFER") -> bytes:
    text = f"SIP/2.0 {status} Whatever\r\nCall-ID: agent-1\r\nCSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    return text.encode()


def test_a_refer_and_its_final_answer_are_kept_and_nothing_else_of_a_refer_dialog() -> None:
    assert sip_facts(refer("<sip:+14155550199@gw.example.com>")) == {
        "kind": "refer", "sip_call_id": "agent-1", "cseq": 1, "target": "+14155550199",
    }  # fmt: skip
    assert sip_facts(answer(404)) == {"kind": "refer_answer", "sip_call_id": "agent-1", "cseq": 1, "status": 404}
    assert sip_facts(answer(100)) is None  # provisional
    assert sip_facts(answer(200, method="NOTIFY")) is None


@pytest.mark.parametrize(
    ("refer_to", "target"),
    [("sip:9001@gw", "9001"), ("<sips:sales@gw;transport=tls>", "sales"), ("tel:+14155550199", ""),
     ('<sip:a"b@gw>', ""), ("<sip:" + "1" * 33 + "@gw>", ""), ("<sip:gw>", "")],
)  # fmt: skip
def test_the_refer_to_user_is_kept_only_when_it_is_a_plausible_target(refer_to: str, target: str) -> None:
    found = refer_facts(refer(refer_to))
    assert found is not None
    assert found["target"] == target


def refused_record(outcome: str = "none") -> dict[str, Any]:
    return record(transfer={"target": "", "outcome": outcome})


def test_a_refused_refer_is_the_records_transfer_outcome() -> None:
    facts = [refer_facts(refer("<sip:+19995550100@gw>")), refer_facts(answer(404))]
    merged = with_agent_headers(refused_record(), AgentSip([f for f in facts if f]))
    assert merged["transfer"] == {"target": "+19995550100", "outcome": "refused"}


def test_an_accepted_refer_leaves_the_dialplans_outcome() -> None:
    accepted = [refer_facts(refer("<sip:9001@gw>")), refer_facts(answer(202))]
    merged = with_agent_headers(refused_record(), AgentSip([f for f in accepted if f]))
    assert merged["transfer"] == {"target": "", "outcome": "none"}
    # and a refused one before a completed one does not overwrite it
    refused_then_done = [refer_facts(refer("<sip:1@gw>")), refer_facts(answer(404))]
    completed = record(transfer={"target": "9001", "outcome": "completed"})
    merged = with_agent_headers(completed, AgentSip([f for f in refused_then_done if f]))
    assert merged["transfer"] == {"target": "9001", "outcome": "completed"}


def notify(status: int, event: str = "refer;id=1", state: str = "terminated;reason=noresource") -> bytes:
    head = [
        "NOTIFY sip:agent@198.51.100.7 SIP/2.0", "Call-ID: agent-1", "CSeq: 9 NOTIFY", f"Event: {event}",
        f"Subscription-State: {state}", "Content-Type: message/sipfrag;version=2.0",
    ]  # fmt: skip
    return ("\r\n".join(head) + f"\r\n\r\nSIP/2.0 {status} Whatever\r\n").encode()


def test_a_subscribed_refer_is_refused_by_its_final_notify_after_a_202() -> None:
    """Asterisk accepts a subscribed REFER with 202 before it looks the target up; the refusal is the 404 of the
    final NOTIFY's sipfrag."""
    facts = [sip_facts(m) for m in (refer("<sip:+19995550100@gw>"), answer(202), notify(100), notify(404))]
    assert facts[2] is None  # progress, not an outcome
    merged = with_agent_headers(refused_record(), AgentSip([f for f in facts if f]))
    assert merged["transfer"] == {"target": "+19995550100", "outcome": "refused"}
    # and a final NOTIFY of 200 (the target answered) is no refusal
    done = [sip_facts(m) for m in (refer("<sip:+14155550199@gw>"), answer(202), notify(200))]
    assert with_agent_headers(refused_record(), AgentSip([f for f in done if f]))["transfer"]["outcome"] == "none"


def test_a_notify_that_is_not_a_refers_final_sipfrag_is_ignored() -> None:
    assert sip_facts(notify(404, event="presence")) is None
    assert sip_facts(notify(404, event="refer")) == {"kind": "refer_answer", "sip_call_id": "agent-1", "cseq": -1,
                                                     "status": 404}  # fmt: skip
