"""The sipp message-trace reader the real-traffic tests assert on: only whole messages count."""

from __future__ import annotations

from datetime import datetime

import pytest
from sip_trunk_local.sipp import call_ids_by_first_request, received_messages, received_requests, traced_messages

pytestmark = pytest.mark.unit

OPTIONS = "OPTIONS sip:127.0.0.5:5060 SIP/2.0\r\nCall-ID: probe-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
INVITE = (
    "INVITE sip:+14155550100@127.0.0.5:5060 SIP/2.0\r\nCall-ID: call-1\r\nCSeq: 1 INVITE\r\n"
    "X-CALL-ID: gw-42\r\nContent-Length: 0\r\n\r\n"
)
OK = "SIP/2.0 200 OK\r\nCall-ID: probe-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"


def entry(message: str, *, received: bool, note: str = "") -> str:
    """One trace entry as sipp writes it (the file read as text: CRLF became one newline)."""
    size = len(message.encode())
    head = f"TCP message received [{size}] bytes :" if received else f"TCP message sent ({size} bytes):"
    text = f"----------------------------------------------- 2026-12-03 15:31:10.318596\n{head}\n\n{message}\n{note}"
    return text.replace("\r\n", "\n")


def test_every_whole_message_is_read_in_order_with_its_direction() -> None:
    trace = entry(OPTIONS, received=True) + entry(OK, received=False) + entry(INVITE, received=True)
    messages = traced_messages(trace)
    assert [(m.received, m.text.split("\n", 1)[0]) for m in messages] == [
        (True, "OPTIONS sip:127.0.0.5:5060 SIP/2.0"),
        (False, "SIP/2.0 200 OK"),
        (True, "INVITE sip:+14155550100@127.0.0.5:5060 SIP/2.0"),
    ]
    assert received_requests(trace, "INVITE") == ["INVITE sip:+14155550100@127.0.0.5:5060 SIP/2.0"]
    assert messages[0].logged_at == datetime(2026, 12, 3, 15, 31, 10, 318596)


def test_a_message_sipp_is_still_writing_is_not_read_until_it_is_whole() -> None:
    whole = entry(OPTIONS, received=True) + entry(INVITE, received=True)
    cut = whole.index("X-CALL-ID")  # the trace ends after the request line and before the last header
    assert received_requests(whole[:cut], "INVITE") == []
    assert len(received_messages(whole[:cut])) == 1
    assert "X-CALL-ID: gw-42" in received_messages(whole)[-1]


def test_what_sipp_logs_after_a_message_is_not_part_of_it() -> None:
    trace = entry(INVITE, received=True, note="Discarded message for new calls while quitting\n")
    trace += entry(OK, received=False)
    assert received_messages(trace)[0].endswith("Content-Length: 0")
    assert len(traced_messages(trace)) == 2


def test_calls_are_told_from_probes_by_their_first_request() -> None:
    trace = entry(OPTIONS, received=True) + entry(OK, received=False) + entry(INVITE, received=True)
    assert call_ids_by_first_request(trace) == {"probe-1": "OPTIONS", "call-1": "INVITE"}
