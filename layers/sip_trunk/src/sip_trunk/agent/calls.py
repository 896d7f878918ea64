"""Call records: ship the lines Asterisk appends at hangup to S3 (for Athena) and CloudWatch Logs (EMF metrics).

Asterisk's hangup handlers append one JSON line per call to ``<call_records_dir>/calls-YYYYMMDD.jsonl`` (``FILE()``
opens, appends and closes for every record). :func:`ship_call_records` first renames each day's file to
``*.jsonl.<ns>.shipping`` (atomic, never over an earlier claim; the next record opens a fresh day file), waits
``settle_s`` so a handler that opened the old name before the rename has finished its one write, then writes the
file's records as one object under ``calls/dt=YYYY-MM-DD/`` of the backup bucket (:mod:`sip_trunk.callrecords`;
the key is derived from the claimed name, so a second attempt overwrites the same object), sends every record as
one log event, and deletes the renamed file only after S3 and CloudWatch Logs accepted all of it.
Anything that fails leaves the file for the next run: records are delivered at least once, never lost (a crash
between delivery and delete sends them again). A line that is not a JSON object is moved to ``rejected.jsonl`` for
an operator, never retried in a loop.

Each event is the record itself plus an ``_aws`` Embedded Metric Format block, so CloudWatch extracts metrics by
``Route`` without a metric filter: ``Calls``, ``Answered``, ``PostDialDelay`` and, per call, the worst ``Loss``
(percent), ``Jitter`` (ms) and lowest ``MES`` over the legs and directions that carried media.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.runtime import AgentError
from sip_trunk.callrecords import object_key

log = logging.getLogger(__name__)

NAMESPACE = "AwsSipTrunk/Calls"
SHIPPING = ".shipping"
REJECTED = "rejected.jsonl"
_BATCH = 500  # well under PutLogEvents' 10,000 events / 1 MiB


class CallRecordsUnavailable(AgentError):
    """S3 or CloudWatch Logs could not take the records now; they stay spooled for the next run."""


def _directions(record: dict[str, Any]) -> Iterable[dict[str, Any]]:
    for leg in (record.get("caller_leg"), record.get("callee_leg")):
        if isinstance(leg, dict):
            for way in ("rx", "tx"):
                d = leg.get(way)
                if isinstance(d, dict) and isinstance(d.get("packets"), int | float) and d["packets"] > 0:
                    yield d


def metrics(record: dict[str, Any]) -> dict[str, float]:
    """The EMF values of one call (only those the record has)."""
    values: dict[str, float] = {"Calls": 1.0, "Answered": 1.0 if record.get("disposition") == "ANSWER" else 0.0}
    if isinstance(record.get("pdd_ms"), int | float):
        values["PostDialDelay"] = float(record["pdd_ms"])
    losses, jitters, scores = [], [], []
    for d in _directions(record):
        lost = float(d["lost"]) if isinstance(d.get("lost"), int | float) else 0.0
        losses.append(100.0 * lost / (d["packets"] + lost))
        if isinstance(d.get("jitter_s"), int | float):
            jitters.append(1000.0 * d["jitter_s"])
        if isinstance(d.get("mes"), int | float) and d["mes"] > 0:  # 0 = the peer sent no RTCP
            scores.append(float(d["mes"]))
    if losses:
        values["Loss"] = max(losses)
    if jitters:
        values["Jitter"] = max(jitters)
    if scores:
        values["MES"] = min(scores)
    return values


_UNITS = {"Calls": "Count", "Answered": "Count", "PostDialDelay": "Milliseconds", "Loss": "Percent",
          "Jitter": "Milliseconds", "MES": "None"}  # fmt: skip


def emf_event(record: dict[str, Any], *, stack: str, timestamp_ms: int) -> str:
    """The log event: the record, plus the EMF metadata and metric values under dimension Route."""
    values = metrics(record)
    route = record.get("route") if isinstance(record.get("route"), str) and record["route"] else "none"
    event = {
        **record,
        "Stack": stack,
        "Route": route,
        **values,
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Stack", "Route"]],
                    "Metrics": [{"Name": name, "Unit": _UNITS[name]} for name in values],
                }
            ],
        },
    }
    return json.dumps(event, separators=(",", ":"), sort_keys=True)


def _claim(spool: Path) -> list[Path]:
    """Rename each day file to ``.shipping`` (files left by an earlier failed run come first)."""
    for path in sorted(spool.glob("calls-*.jsonl")):
        # a unique name: an earlier claim of the same day may still be waiting, and must not be overwritten
        path.rename(path.with_name(f"{path.name}.{time.time_ns()}{SHIPPING}"))
    return sorted(spool.glob(f"calls-*.jsonl.*{SHIPPING}"))


def _ensure_stream(logs: Any, group: str, stream: str) -> None:
    try:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
            raise


def _records(path: Path, rejected: Path) -> list[dict[str, Any]]:
    records, bad = [], []
    for line in path.read_text(errors="replace").splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        if isinstance(value, dict):
            records.append(value)
        elif line.strip():
            bad.append(line)
    if bad:
        with rejected.open("a") as out:
            out.write("".join(b + "\n" for b in bad))
        log.warning("%s: %d line(s) that are not call records moved to %s", path.name, len(bad), rejected.name)
    return records


def _end_ms(record: dict[str, Any], default: int) -> int:
    value = record.get("end_ms")
    return value if isinstance(value, int) else default


def s3_body(records: list[dict[str, Any]]) -> bytes:
    """The object's content: one JSON record per line (what the Athena table reads)."""
    return "".join(json.dumps(r, separators=(",", ":"), sort_keys=True) + "\n" for r in records).encode()


def _batch(path: Path) -> tuple[str, str]:
    """``calls-20261203.jsonl.<ns>.shipping`` -> (``20261203``, ``<ns>``)."""
    name = path.name.removesuffix(SHIPPING)
    day_file, _, batch = name.partition(".jsonl.")
    return day_file.removeprefix("calls-"), batch


def _put_records(s3: Any, bucket: str, key: str, body: bytes) -> None:
    s3.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="application/x-ndjson",
        ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324 - S3's integrity check
    )


def ship_call_records(
    config: AgentConfig,
    logs: Any,
    s3: Any,
    *,
    settle_s: float = 2.0,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Write every spooled record to ``s3://<backup bucket>/calls/…`` and send it to
    ``config.asterisk_log_group`` (stream ``calls-<instance>``); delete a file only after both accepted it."""
    group = config.asterisk_log_group
    if not group:
        raise AgentError("set --asterisk-log-group (SIP_TRUNK_ASTERISK_LOG_GROUP) to ship call records")
    bucket = config.backup_bucket
    if not bucket:
        raise AgentError("set --backup-bucket (SIP_TRUNK_BACKUP_BUCKET) to ship call records")
    spool = config.call_records_dir
    if not spool.is_dir():
        return {"shipped": 0, "files": 0, "pending": 0}
    files = _claim(spool)
    if not files:
        return {"shipped": 0, "files": 0, "pending": 0}
    sleep(settle_s)
    host = config.instance_id or "host"
    stream = f"calls-{host}"
    shipped = 0
    try:
        _ensure_stream(logs, group, stream)
        for path in files:
            records = _records(path, spool / REJECTED)
            now_ms = int(clock() * 1000)
            ordered = sorted(records, key=lambda r: _end_ms(r, now_ms))  # PutLogEvents wants time order
            if ordered:
                day, batch = _batch(path)
                _put_records(s3, bucket, object_key(day, host, batch), s3_body(ordered))
            events = [
                {"timestamp": _end_ms(r, now_ms), "message": emf_event(r, stack=config.stack, timestamp_ms=now_ms)}
                for r in ordered
            ]
            for start in range(0, len(events), _BATCH):
                logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=events[start : start + _BATCH])
            path.unlink()
            shipped += len(events)
    except Exception as exc:
        pending = len(list(spool.glob(f"calls-*.jsonl.*{SHIPPING}")))
        log.warning("call records stay spooled (%d file(s)): %s: %s", pending, exc.__class__.__name__, exc)
        raise CallRecordsUnavailable(f"{exc.__class__.__name__}: {exc}"[:500]) from exc
    return {"shipped": shipped, "files": len(files), "pending": 0}


def last_calls(spool: Path, count: int = 20) -> list[dict[str, Any]]:
    """The newest ``count`` records still in the spool (shipping or not), oldest first."""
    records: list[dict[str, Any]] = []
    for path in sorted(spool.glob("calls-*.jsonl*")):
        if path.name == REJECTED:
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                records.append(value)
    records.sort(key=lambda r: _end_ms(r, 0))
    return records[-count:]
