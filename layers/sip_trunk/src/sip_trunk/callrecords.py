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
from collections.abc import Iterable, Mapping
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
    return {"kind": "bye", "sip_call_id": call_id, "conversation_id": conversation, "headers": headers}


_TRANSFER_TARGET = re.compile(r"[0-9A-Za-z+*#_.-]{1,32}")
_REFER_TO_USER = re.compile(r"<?\s*sips?:([^@;>?]*)@", re.IGNORECASE)
_CSEQ = re.compile(r"(\d{1,10})\s+([A-Za-z]+)")


def _head(message: bytes) -> tuple[str, dict[str, str]]:
    """The start line and the first value of each header (lower-case names; compact forms for Call-ID)."""
    lines = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and line[:1] not in (" ", "\t"):
            fields.setdefault({"i": "call-id"}.get(name.strip().lower(), name.strip().lower()), value.strip())
    return lines[0], fields


def refer_facts(message: bytes) -> dict[str, Any] | None:
    """A REFER request (``kind`` refer: its CSeq and the Refer-To user, if that is a plausible transfer target),
    or its outcome (``kind`` refer_answer with a status): a final answer to the REFER itself (Asterisk answers a
    tel: URI 400, and a REFER without a progress subscription with the transfer's result) or a NOTIFY of its
    progress whose sipfrag is final (Asterisk accepts a subscribed REFER with 202 before it looks the target
    up, then reports 404 for a target it does not allow in the NOTIFY). ``cseq`` is the REFER's (the NOTIFY's
    ``Event: refer;id=``), -1 when the NOTIFY does not say. Else None."""
    start, fields = _head(message)
    call_id = _NOT_CALL_ID.sub("", fields.get("call-id", ""))
    cseq = _CSEQ.fullmatch(fields.get("cseq", ""))
    if not call_id or cseq is None:
        return None
    method = cseq[2].upper()
    if start.startswith("REFER ") and method == "REFER":
        user = _REFER_TO_USER.match(fields.get("refer-to", "") or fields.get("r", ""))
        target = user[1] if user and _TRANSFER_TARGET.fullmatch(user[1]) else ""
        return {"kind": "refer", "sip_call_id": call_id, "cseq": int(cseq[1]), "target": target}
    if start.startswith("NOTIFY ") and method == "NOTIFY":
        event = re.fullmatch(r"refer\s*(?:;\s*id\s*=\s*(\d{1,10}))?\s*", fields.get("event", "") or fields.get("o", ""))
        body = message.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in message else b""
        frag = re.match(rb"SIP/2\.0 (\d{3})[ \r]", body)
        if event is None or frag is None or int(frag[1]) < 200:
            return None
        refer_cseq = int(event[1]) if event[1] else -1
        return {"kind": "refer_answer", "sip_call_id": call_id, "cseq": refer_cseq, "status": int(frag[1])}
    status = re.match(r"SIP/2\.0 (\d{3}) ", start)
    if method != "REFER" or status is None or int(status[1]) < 200:
        return None
    return {"kind": "refer_answer", "sip_call_id": call_id, "cseq": int(cseq[1]), "status": int(status[1])}


def sip_facts(message: bytes) -> dict[str, Any] | None:
    """What the host agent keeps of one SIP message: a BYE's X- headers, or a REFER and its answer."""
    return bye_headers(message) or refer_facts(message)


def checked_entry(value: object) -> dict[str, Any] | None:
    """An entry read back from the host agent's file, held to the same rules as :func:`sip_facts` (the file
    is the agent's own, but a record must never carry what the checks would have refused)."""
    if not isinstance(value, dict) or not isinstance(value.get("sip_call_id"), str) or not value["sip_call_id"]:
        return None
    call_id, kind = value["sip_call_id"], value.get("kind")
    if _NOT_CALL_ID.search(call_id):
        return None
    cseq = value.get("cseq")
    if kind in ("refer", "refer_answer") and not (isinstance(cseq, int) and -1 <= cseq < 10**10):
        return None
    if kind == "refer":
        target = value.get("target")
        if not isinstance(target, str) or (target and not _TRANSFER_TARGET.fullmatch(target)):
            return None
        return {"kind": kind, "sip_call_id": call_id, "cseq": cseq, "target": target}
    if kind == "refer_answer":
        status = value.get("status")
        if not (isinstance(status, int) and 200 <= status <= 699):
            return None
        return {"kind": kind, "sip_call_id": call_id, "cseq": cseq, "status": status}
    if kind != "bye":
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
    return {"kind": kind, "sip_call_id": call_id, "conversation_id": conversation, "headers": dict(headers)}


class AgentSip:
    """The kept facts by SIP Call-ID: each Call-ID's first BYE, its REFERs and their outcomes (the REFER's CSeq,
    or -1)."""

    def __init__(self, entries: Iterable[Mapping[str, Any]] = ()) -> None:
        self.byes: dict[str, Mapping[str, Any]] = {}
        self.refers: dict[str, list[Mapping[str, Any]]] = {}
        self.answers: dict[tuple[str, int], int] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: Mapping[str, Any]) -> None:
        call_id = entry["sip_call_id"]
        if entry["kind"] == "bye":
            self.byes.setdefault(call_id, entry)
        elif entry["kind"] == "refer":
            self.refers.setdefault(call_id, []).append(entry)
        else:
            key = (call_id, entry["cseq"])  # the worst outcome: a 202, then a NOTIFY of 404, is a refusal
            self.answers[key] = max(self.answers.get(key, 0), entry["status"])

    def refused_transfer(self, call_id: str) -> str | None:
        """The target of the last REFER on this Call-ID whose outcome (its answer, or a progress NOTIFY naming
        it, or one naming no REFER) was 300 or more; None if none was."""

        def outcome(refer: Mapping[str, Any]) -> int:
            return max(self.answers.get((call_id, refer["cseq"]), 0), self.answers.get((call_id, -1), 0))

        refused = [r for r in self.refers.get(call_id, []) if outcome(r) >= 300]
        return str(refused[-1]["target"]) if refused else None


def agent_leg(record: Mapping[str, object]) -> str | None:
    """The record's leg toward the agent: the inbound one of a call the agent placed, the outbound one of a
    call routed to the agent; None for calls without the agent."""
    if record.get("entry") == "elevenlabs":
        return "caller_leg"
    if record.get("route") == "agent":
        return "callee_leg"
    return None


NO_TRANSFER = "none"
REFUSED = "refused"


def with_agent_headers(record: dict[str, Any], found: AgentSip) -> dict[str, Any]:
    """The record plus ``conversation_id`` (None when the agent sent none) and ``agent_headers`` (a map, empty
    when none) of the BYE in ``found`` that ended the agent's leg (by its SIP Call-ID); and a transfer the
    gateway refused (a REFER answered 4xx, which runs no dialplan) as ``transfer.outcome`` ``refused`` when the
    dialplan saw no accepted one."""
    leg = record.get(agent_leg(record) or "")
    sip_call_id = leg.get("sip_call_id") if isinstance(leg, dict) else None
    sip_call_id = sip_call_id if isinstance(sip_call_id, str) and sip_call_id else None
    bye = found.byes.get(sip_call_id) if sip_call_id else None
    out = {
        **record,
        "conversation_id": bye.get("conversation_id") if bye else None,
        "agent_headers": dict(bye.get("headers") or {}) if bye else {},
    }
    transfer = record.get("transfer")
    refused = found.refused_transfer(sip_call_id) if sip_call_id else None
    if refused is not None and (not isinstance(transfer, dict) or transfer.get("outcome") in (None, NO_TRANSFER)):
        out["transfer"] = {"target": refused, "outcome": REFUSED}
    return out


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


def split_lines(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The records of a JSON-lines text, and its non-blank lines that are not a JSON object (the spool moves
    those aside for an operator; a reader skips them)."""
    records: list[dict[str, Any]] = []
    bad: list[str] = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            records.append(value)
        elif line.strip():
            bad.append(line)
    return records, bad


def parse_batch(body: bytes) -> list[dict[str, Any]]:
    """The records of one shipped object."""
    return split_lines(body.decode(errors="replace"))[0]


def end_ms(record: dict[str, Any], default: int = 0) -> int:
    value = record.get("end_ms")
    return value if isinstance(value, int) and not isinstance(value, bool) else default


class RecordObjects(Protocol):
    """Read access to the bucket the records are shipped to."""

    def keys(self, bucket: str, prefix: str) -> list[str]: ...

    def read(self, bucket: str, key: str) -> bytes: ...


def recent_calls(
    store: RecordObjects,
    bucket: str,
    *,
    since_s: float,
    now_s: float,
    limit: int,
    conversation_id: str | None = None,
) -> list[dict[str, object]]:
    """The newest ``limit`` records of calls that ended since ``since_s``, newest first (only the agent's
    conversation ``conversation_id``, when given). Reads day by day from today back and stops after the day
    that completed ``limit``: an older day holds only calls that ended earlier."""

    def wanted(record: dict[str, object]) -> bool:
        ended = end_ms(record) >= since_s * 1000
        return ended and (conversation_id is None or record.get("conversation_id") == conversation_id)

    found: list[dict[str, object]] = []
    for day in days_back(since_s, now_s):
        for key in store.keys(bucket, day_prefix(day)):
            found.extend(r for r in parse_batch(store.read(bucket, key)) if wanted(r))
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
