"""Where call records live in S3 and how their media is judged: one definition for the host agent (writes them),
the operator CLI (reads them) and the template's Athena table (tests hold its location and columns to this).

Standard library only: the host agent imports it.

Layout: ``s3://<backup bucket>/calls/dt=YYYY-MM-DD/<host>-<batch>.jsonl``, one JSON record per line, the
partition being the UTC day the record was written (the day file's name; the call's end). Hive-style
``dt=`` keys let Athena's partition projection find every day without a crawler.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

S3_PREFIX = "calls"
"""Top-level prefix of the call records in the backup bucket (template.yaml's Glue table reads it)."""
PARTITION = "dt"
"""The partition column: the UTC day, ``YYYY-MM-DD``."""

_DAY = re.compile(r"(\d{4})(\d{2})(\d{2})")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def day_prefix(day: str) -> str:
    """``calls/dt=2026-12-03/`` for ``20261203`` or ``2026-12-03``."""
    match = _DAY.fullmatch(day.replace("-", ""))
    if match is None:
        raise ValueError(f"not a day (YYYYMMDD or YYYY-MM-DD): {day!r}")
    return f"{S3_PREFIX}/{PARTITION}={match[1]}-{match[2]}-{match[3]}/"


def object_key(day: str, host: str, batch: str) -> str:
    """The key of one shipped batch: derived from the host and the batch's own name, so shipping the same batch
    again (after a crash or an outage) overwrites the same object instead of adding a copy."""
    return f"{day_prefix(day)}{_SAFE.sub('_', host) or 'host'}-{_SAFE.sub('_', batch)}.jsonl"


# --- media: did audio flow both ways? ------------------------------------------------------------------------
MEDIA_OK = "ok"
ONE_WAY_IN = "one_way_in"
"""Audio flowed only from the caller (the inbound leg) toward the called party: the called side's audio is missing."""
ONE_WAY_OUT = "one_way_out"
"""Audio flowed only from the called party toward the caller: the caller's audio is missing."""
SILENT = "silent"
"""Neither direction carried audio."""
MEDIA_PROBLEMS = frozenset({ONE_WAY_IN, ONE_WAY_OUT, SILENT})

PACKETS_PER_S = 50
"""RTP packets a direction carries per second at the codecs' 20 ms packetisation (ulaw, alaw, g722)."""
MIN_TALK_S = 3.0
"""Answered time below which no verdict is given (ringing-off, a hang-up at answer: too few packets to judge)."""
MIN_SHARE = 0.05
"""A direction counts as carrying audio with at least 5 % of the packets its answered time should bring. Low
enough that comfort noise or silence suppression by a peer is still "audio"; a dead direction carries ~0 %."""


def _packets(leg: object, way: str) -> float | None:
    if not isinstance(leg, dict):
        return None
    direction = leg.get(way)
    if not isinstance(direction, dict):
        return None
    value = direction.get("packets")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def media_state(record: dict[str, object]) -> str | None:
    """``ok``, ``one_way_in``, ``one_way_out`` or ``silent`` for an answered call of at least
    :data:`MIN_TALK_S` with both legs' figures; ``None`` when there is nothing to judge.

    A direction's audio must have reached the gateway and left it: caller → called is the fewer of what the
    inbound leg received and what the outbound leg sent (and the reverse for called → caller), so a peer that
    sends nothing and a gateway that forwards nothing both show."""
    answer, end = record.get("answer_ms"), record.get("end_ms")
    if record.get("disposition") != "ANSWER" or not isinstance(answer, int) or not isinstance(end, int):
        return None
    talk_s = (end - answer) / 1000.0
    if talk_s < MIN_TALK_S:
        return None
    caller, callee = record.get("caller_leg"), record.get("callee_leg")
    figures = [_packets(caller, "rx"), _packets(callee, "tx"), _packets(callee, "rx"), _packets(caller, "tx")]
    if any(f is None for f in figures):
        return None
    caller_rx, callee_tx, callee_rx, caller_tx = (f or 0.0 for f in figures)
    floor = MIN_SHARE * PACKETS_PER_S * talk_s
    forward = min(caller_rx, callee_tx) >= floor
    back = min(callee_rx, caller_tx) >= floor
    if forward and back:
        return MEDIA_OK
    if forward:
        return ONE_WAY_IN
    if back:
        return ONE_WAY_OUT
    return SILENT


# --- the agent's BYE headers ---------------------------------------------------------------------------------
# Asterisk 22 keeps only the INVITE's headers for the dialplan (PJSIP_HEADER reads what res_pjsip_header_funcs
# stored from the INVITE; no module stores a BYE's), so the BYE's X- headers reach the record through HEP:
# res_hep_pjsip mirrors every SIP message to HEP_ADDRESS on the host's loopback, the host agent keeps the X-
# headers of each BYE (checked here), and ship-calls adds them to the record of the leg with that Call-ID.
HEP_ADDRESS = ("127.0.0.1", 9064)
"""Where Asterisk's res_hep sends its copies of the SIP messages (hep.conf) and the host agent listens."""
AGENT_HEADERS_GLOB = "agent-headers-*.jsonl"
"""The host agent's file of BYE headers per UTC day, in the call records directory."""
CONVERSATION_HEADER = "x-conversation-id"
"""ElevenLabs' conversation id header; it becomes the record's ``conversation_id``, every other X- header a key
(lower case) of ``agent_headers``."""
MAX_AGENT_HEADERS = 16
MAX_HEADER_VALUE = 64
_HEADER_NAME = re.compile(r"[Xx]-[A-Za-z0-9-]{1,40}")
_HEADER_VALUE = re.compile(rf"[A-Za-z0-9+_.@:/=-]{{1,{MAX_HEADER_VALUE}}}")
_NOT_CALL_ID = re.compile(r"[^0-9A-Za-z+_.@:/-]")  # what the dialplan's FILTER() keeps of a leg's Call-ID
_HEP_PAYLOAD = 0x000F


def hep_payload(packet: bytes) -> bytes | None:
    """The captured SIP message of a HEP version 3 packet (chunk 0x000f of the generic vendor), or None."""
    if len(packet) < 6 or packet[:4] != b"HEP3":
        return None
    total = min(int.from_bytes(packet[4:6], "big"), len(packet))
    i = 6
    while i + 6 <= total:
        vendor, kind, length = struct.unpack("!HHH", packet[i : i + 6])
        if length < 6 or i + length > total:
            return None
        if vendor == 0 and kind == _HEP_PAYLOAD:
            return packet[i + 6 : i + length]
        i += length
    return None


def bye_headers(message: bytes) -> dict[str, Any] | None:
    """``{"sip_call_id", "conversation_id", "headers"}`` of a BYE request that carries X- headers, else None.

    The peer's values are untrusted: a header is kept only when its name is ``X-`` plus letters, digits and
    dashes (at most 42 characters) and its value is at most 64 characters of ``A-Za-z0-9+_.@:/=-``; anything
    else (quotes, spaces, a folded line, a control character) drops that header. At most 16 headers are kept.
    The Call-ID is reduced to the character set the dialplan keeps of a leg's Call-ID, so the two match."""
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    lines = head.split("\r\n")
    if not lines[0].startswith("BYE "):
        return None
    unfolded: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + line.strip()  # a folded value now holds a space, which no kept value may
        else:
            unfolded.append(line)
    call_id: str | None = None
    conversation: str | None = None
    headers: dict[str, str] = {}
    for line in unfolded:
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep:
            continue
        low = name.lower()
        if low in ("call-id", "i"):
            call_id = _NOT_CALL_ID.sub("", value)
        elif _HEADER_NAME.fullmatch(name) and _HEADER_VALUE.fullmatch(value):
            if low == CONVERSATION_HEADER:
                conversation = conversation or value
            elif low not in headers and len(headers) < MAX_AGENT_HEADERS:
                headers[low] = value
    if not call_id or (conversation is None and not headers):
        return None
    return {"sip_call_id": call_id, "conversation_id": conversation, "headers": headers}


def checked_entry(value: object) -> dict[str, Any] | None:
    """An entry read back from the host agent's file, held to the same rules as :func:`bye_headers` (the file
    is the agent's own, but a record must never carry what the BYE check would have refused)."""
    if not isinstance(value, dict) or not isinstance(value.get("sip_call_id"), str) or not value["sip_call_id"]:
        return None
    if _NOT_CALL_ID.search(value["sip_call_id"]):
        return None
    conversation = value.get("conversation_id")
    if conversation is not None and not (isinstance(conversation, str) and _HEADER_VALUE.fullmatch(conversation)):
        return None
    headers = value.get("headers")
    if not isinstance(headers, dict) or len(headers) > MAX_AGENT_HEADERS:
        return None
    for name, text in headers.items():
        if not (_HEADER_NAME.fullmatch(name) and name == name.lower() and name != CONVERSATION_HEADER):
            return None
        if not (isinstance(text, str) and _HEADER_VALUE.fullmatch(text)):
            return None
    return {"sip_call_id": value["sip_call_id"], "conversation_id": conversation, "headers": dict(headers)}


def agent_leg(record: Mapping[str, object]) -> str | None:
    """The record's leg toward the agent: the inbound one of a call the agent placed, the outbound one of a
    call routed to the agent; None for calls without the agent."""
    if record.get("entry") == "elevenlabs":
        return "caller_leg"
    if record.get("route") == "agent":
        return "callee_leg"
    return None


def with_agent_headers(record: dict[str, Any], found: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The record plus ``conversation_id`` (None when the agent sent none) and ``agent_headers`` (a map, empty
    when none): those of the BYE in ``found`` (by SIP Call-ID) that ended the agent's leg."""
    leg = record.get(agent_leg(record) or "")
    sip_call_id = leg.get("sip_call_id") if isinstance(leg, dict) else None
    entry = found.get(sip_call_id) if isinstance(sip_call_id, str) and sip_call_id else None
    return {
        **record,
        "conversation_id": entry.get("conversation_id") if entry else None,
        "agent_headers": dict(entry.get("headers") or {}) if entry else {},
    }


# --- reading them back (the operator CLI) ------------------------------------------------------------------
_SINCE = re.compile(r"(\d+)\s*([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_EPOCH_IN_ID = re.compile(r"(?:^|-)(\d{9,11})\.\d+$")
MAX_DAYS = 31
"""How far back a listing reads: one object listing per day."""


def parse_since(text: str, now_s: float) -> float:
    """``90m``, ``2h``, ``7d`` (before ``now_s``) or an ISO 8601 time (UTC unless it says otherwise): epoch seconds."""
    match = _SINCE.fullmatch(text.strip())
    if match:
        return now_s - int(match[1]) * _UNIT_S[match[2]]
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since {text!r}: give a duration (30m, 2h, 7d) or a time (2026-12-03T09:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def days_back(since_s: float, now_s: float) -> list[str]:
    """The UTC days (``YYYYMMDD``) from ``now_s`` back to ``since_s``, newest first, at most :data:`MAX_DAYS`."""
    day = datetime.fromtimestamp(now_s, UTC).date()
    first = datetime.fromtimestamp(min(since_s, now_s), UTC).date()
    days: list[str] = []
    while day >= first and len(days) < MAX_DAYS:
        days.append(day.strftime("%Y%m%d"))
        day -= timedelta(days=1)
    return days


def days_of_call(call_id: str) -> list[str] | None:
    """Where a call's record can be: the UTC day its id's epoch (Asterisk's ``UNIQUEID``, taken at setup) falls on
    and the next one (a call ends on the day it was set up or, past midnight, later). None: no epoch in the id."""
    match = _EPOCH_IN_ID.search(call_id)
    if match is None:
        return None
    start = datetime.fromtimestamp(int(match[1]), UTC).date()
    return [(start + timedelta(days=n)).strftime("%Y%m%d") for n in (1, 0)]


def parse_batch(body: bytes) -> list[dict[str, object]]:
    """The records of one shipped object (lines that are not a JSON object are skipped)."""
    records = []
    for line in body.decode(errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def end_ms(record: dict[str, object]) -> int:
    value = record.get("end_ms")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class RecordObjects(Protocol):
    """Read access to the bucket the records are shipped to."""

    def keys(self, bucket: str, prefix: str) -> list[str]: ...

    def read(self, bucket: str, key: str) -> bytes: ...


def recent_calls(
    store: RecordObjects, bucket: str, *, since_s: float, now_s: float, limit: int
) -> list[dict[str, object]]:
    """The newest ``limit`` records of calls that ended since ``since_s``, newest first. Reads day by day from
    today back and stops after the day that completed ``limit``: an older day holds only calls that ended earlier."""
    found: list[dict[str, object]] = []
    for day in days_back(since_s, now_s):
        for key in store.keys(bucket, day_prefix(day)):
            found.extend(r for r in parse_batch(store.read(bucket, key)) if end_ms(r) >= since_s * 1000)
        if len(found) >= limit:
            break
    found.sort(key=end_ms, reverse=True)
    return found[:limit]


def find_call(
    store: RecordObjects, bucket: str, call_id: str, *, since_s: float, now_s: float
) -> list[dict[str, object]]:
    """Every record with this call id (one, unless two hosts reused an id): looked up on the days its id's epoch
    allows, else on the days back to ``since_s``."""
    days = days_of_call(call_id) or days_back(since_s, now_s)
    matches: list[dict[str, object]] = []
    for day in days:
        for key in store.keys(bucket, day_prefix(day)):
            matches.extend(r for r in parse_batch(store.read(bucket, key)) if r.get("call_id") == call_id)
    return matches
