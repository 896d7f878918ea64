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
