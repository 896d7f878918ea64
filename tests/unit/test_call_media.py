"""The media verdict of a call record: ok, one way (which), silent, or no verdict."""

from __future__ import annotations

from typing import Any

import pytest
from sip_trunk.callrecords import MIN_SHARE, PACKETS_PER_S, media_state

pytestmark = pytest.mark.unit


def leg(rx: Any, tx: Any) -> dict[str, Any]:
    return {"rx": {"packets": rx, "lost": 0}, "tx": {"packets": tx, "lost": 0}}


def call(talk_s: float, caller: Any, callee: Any, disposition: str = "ANSWER") -> dict[str, Any]:
    return {
        "disposition": disposition, "answer_ms": 1_000_000, "end_ms": 1_000_000 + int(talk_s * 1000),
        "caller_leg": caller, "callee_leg": callee,
    }  # fmt: skip


FULL = int(10 * PACKETS_PER_S)  # 10 s of audio
FLOOR = MIN_SHARE * PACKETS_PER_S * 10  # 25 packets over 10 s


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        # (caller leg: received from caller, sent to caller), (callee leg: received from callee, sent to callee)
        (call(10, leg(FULL, FULL), leg(FULL, FULL)), "ok"),
        (call(10, leg(FULL, 0), leg(0, FULL)), "one_way_in"),  # the called side sends nothing
        (call(10, leg(0, FULL), leg(FULL, 0)), "one_way_out"),  # the caller sends nothing
        (call(10, leg(0, 0), leg(0, 0)), "silent"),
        # the caller's audio arrives but the gateway forwards none of it: one way all the same
        (call(10, leg(FULL, FULL), leg(FULL, 0)), "one_way_out"),
        (call(10, leg(FULL, 0), leg(FULL, FULL)), "one_way_in"),  # the callee's audio never reaches the caller
        # the threshold: 5 % of the expected packets, after the answered time
        (call(10, leg(FULL, FULL), leg(FLOOR, FULL)), "ok"),
        (call(10, leg(FULL, FULL), leg(FLOOR - 1, FULL)), "one_way_in"),
        (call(10, leg(FULL, FLOOR - 1), leg(FULL, FULL)), "one_way_in"),
        (call(600, leg(30_000, 1400), leg(1400, 30_000)), "one_way_in"),  # 4.7 % of a 10-minute call
        (call(600, leg(30_000, 1600), leg(1600, 30_000)), "ok"),  # 5.3 %: comfort noise still counts
        # no verdict: too short, not answered, a leg or a figure missing
        (call(2.9, leg(0, 0), leg(0, 0)), None),
        (call(3.0, leg(0, 0), leg(0, 0)), "silent"),
        (call(10, leg(0, 0), None, disposition="NOANSWER"), None),
        (call(10, leg(FULL, FULL), None), None),
        (call(10, leg(FULL, FULL), leg(None, FULL)), None),
        (call(10, leg(FULL, FULL), leg(True, FULL)), None),
        ({**call(10, leg(FULL, FULL), leg(FULL, FULL)), "answer_ms": None}, None),
    ],
)
def test_media_state(record: dict[str, Any], expected: str | None) -> None:
    assert media_state(record) == expected
