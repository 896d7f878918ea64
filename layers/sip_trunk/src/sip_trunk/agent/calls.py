"""Call records: ship the lines Asterisk appends at hangup to S3 (for Athena) and CloudWatch Logs (EMF metrics).

Asterisk's hangup handlers append one JSON line per call to ``<call_records_dir>/calls-YYYYMMDD.jsonl`` (``FILE()``
opens, appends and closes for every record). :func:`ship_call_records` first renames each day's file to
``*.jsonl.<ns>.shipping`` (atomic, never over an earlier claim; the next record opens a fresh day file), waits
``settle_s`` so a handler that opened the old name before the rename has finished its one write, then writes the
file's records as one object under ``calls/dt=YYYY-MM-DD/`` of the backup bucket (:mod:`sip_trunk.callrecords`;
the key is derived from the claimed name, so a second attempt overwrites the same object), sends every record as
one log event, and deletes the renamed file only after S3 and CloudWatch Logs accepted all of it.
The claimed files and the directory are fsync'd before anything is sent (``FILE()`` appends without fsync, so
until the claim a host crash can still take a record from the page cache: at most the last minute's, bounded by
the kernel's writeback). Anything that fails leaves the file, and its progress (``.<name>.progress``: S3 done, log
events accepted so far), for the next run, which resumes where this one stopped: no record is lost, and none is
written twice to S3 (same key) or sent twice to the log stream, except the one batch in flight when the host died.
A line that is not a JSON object is moved to ``rejected.jsonl`` for an operator, once, never retried in a loop.

Both destinations get the record plus ``media``, the verdict of :func:`sip_trunk.callrecords.media_state` (ok,
one way, silent). Each log event also carries an ``_aws`` Embedded Metric Format block, so CloudWatch extracts
metrics by ``Stack`` + ``Route`` without a metric filter: ``Calls``, ``Answered``, ``PostDialDelay``,
``MediaProblem`` (1 one-way or silent, 0 ok, absent when not judged; also by ``Stack`` alone, for the alarm) and,
per call, the worst ``Loss`` (percent), ``Jitter`` (ms) and lowest ``MES`` over the legs and directions that
carried media.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.runtime import AgentError, atomic_write, fsync_dir
from sip_trunk.callrecords import (
    AGENT_HEADERS_GLOB,
    MEDIA_PROBLEMS,
    AgentSip,
    checked_entry,
    end_ms,
    hep_payload,
    media_state,
    object_key,
    sip_facts,
    split_lines,
    with_agent_headers,
)

log = logging.getLogger(__name__)

NAMESPACE = "AwsSipTrunk/Calls"
SHIPPING = ".shipping"
PROGRESS = ".progress"
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


def with_media(record: dict[str, Any]) -> dict[str, Any]:
    """The record as shipped: plus ``media``, the verdict on its packet counts (:func:`media_state`). Computed here,
    not in the dialplan: the record keeps Asterisk's own figures, and the threshold can change with the agent
    (and be recomputed from the figures in Athena) without a new Asterisk config. ``conversation_id`` and
    ``agent_headers`` are those :func:`with_agent_headers` added (none and empty when it did not run)."""
    return {
        **record,
        "conversation_id": record.get("conversation_id"),
        "agent_headers": record.get("agent_headers") or {},
        "media": media_state(record),
    }


# --- the agent's BYE headers, from Asterisk's HEP copies -------------------------------------------------------
def agent_headers_path(spool: Path, when_s: float) -> Path:
    return spool / AGENT_HEADERS_GLOB.replace("*", time.strftime("%Y%m%d", time.gmtime(when_s)))


def keep_bye_headers(spool: Path, packet: bytes, *, now_s: float) -> dict[str, Any] | None:
    """Append what :func:`sip_facts` keeps of the SIP message in one HEP packet (a BYE's checked X- headers, a
    REFER or its answer) to the day's file (one JSON line, one ``write()`` with ``O_APPEND``); anything else is
    ignored. Returns what was kept."""
    payload = hep_payload(packet)
    found = sip_facts(payload) if payload is not None else None
    if found is None:
        return None
    line = (json.dumps(found, separators=(",", ":"), sort_keys=True) + "\n").encode()
    fd = os.open(agent_headers_path(spool, now_s), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return found


def serve_bye_headers(
    spool: Path, sock: Any, *, stop: Callable[[], bool], clock: Callable[[], float] = time.time
) -> int:
    """Receive Asterisk's HEP copies on ``sock`` (a bound UDP socket with a timeout) until ``stop()``; keep each
    BYE's X- headers and each REFER with its answer. Returns how many messages were kept."""
    kept = 0
    while not stop():
        try:
            packet = sock.recv(65535)
        except TimeoutError:
            continue
        if keep_bye_headers(spool, packet, now_s=clock()) is not None:
            kept += 1
    return kept


def load_bye_headers(spool: Path) -> AgentSip:
    """Everything kept (BYE headers, REFERs and their answers), by SIP Call-ID; unreadable lines are skipped."""
    found = AgentSip()
    for path in sorted(spool.glob(AGENT_HEADERS_GLOB)):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = checked_entry(json.loads(line))
            except ValueError:
                continue
            if entry is not None:
                found.add(entry)
    return found


def _prune_bye_headers(spool: Path, now_s: float) -> None:
    """Drop the day files of BYE headers older than yesterday, once no call record is left to ship: a record
    ends after its BYE, and one still spooled after an outage must find its headers."""
    keep = {agent_headers_path(spool, now_s - days * 86400).name for days in (0, 1)}
    for path in spool.glob(AGENT_HEADERS_GLOB):
        if path.name not in keep:
            path.unlink()


def metrics(record: dict[str, Any]) -> dict[str, float]:
    """The EMF values of one call (only those the record has). ``MediaProblem`` is 1 for a call whose audio
    was one-way or silent, 0 for one judged ``ok``, absent when there was nothing to judge: its Sum counts bad
    calls, its Average is their share."""
    values: dict[str, float] = {"Calls": 1.0, "Answered": 1.0 if record.get("disposition") == "ANSWER" else 0.0}
    media = media_state(record)
    if media is not None:
        values["MediaProblem"] = 1.0 if media in MEDIA_PROBLEMS else 0.0
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
          "Jitter": "Milliseconds", "MES": "None", "MediaProblem": "Count"}  # fmt: skip
ROUTE_DIMENSIONS = [["Stack", "Route"]]
"""Every metric, per route."""
STACK_WIDE = {"MediaProblem": [["Stack"]]}
"""Metrics also rolled up per stack, for an alarm (an alarm cannot sum over a dimension); only those, since each
metric and dimension set is a custom metric that costs money."""


def emf_event(record: dict[str, Any], *, stack: str, timestamp_ms: int) -> str:
    """The log event: the record (with its media verdict), plus the EMF metadata and metric values by stack and
    route."""
    values = metrics(record)
    route = record.get("route") if isinstance(record.get("route"), str) and record["route"] else "none"
    event = {
        **with_media(record),
        "Stack": stack,
        "Route": route,
        **values,
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": NAMESPACE,
                    "Dimensions": ROUTE_DIMENSIONS,
                    "Metrics": [{"Name": name, "Unit": _UNITS[name]} for name in values],
                },
                *(
                    {"Namespace": NAMESPACE, "Dimensions": dims, "Metrics": [{"Name": name, "Unit": _UNITS[name]}]}
                    for name, dims in STACK_WIDE.items()
                    if name in values
                ),
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


def _make_durable(spool: Path, claimed: list[Path]) -> None:
    """fsync every claimed file (after the settle time: no handler writes to it any more) and the directory:
    from here on a host crash takes neither what Asterisk wrote nor the rename. Drops stale progress markers."""
    for path in claimed:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # Asterisk's FILE() appends without fsync; this flushes its pages
        finally:
            os.close(fd)
    for marker in spool.glob(f".calls-*{SHIPPING}{PROGRESS}"):
        if not marker.with_name(marker.name[1:].removesuffix(PROGRESS)).exists():
            marker.unlink()  # the file was delivered and deleted; only its marker was left by a crash
    fsync_dir(spool)


def _progress_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{PROGRESS}")


def _read_progress(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(_progress_path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_progress(path: Path, progress: dict[str, Any]) -> None:
    atomic_write(_progress_path(path), json.dumps(progress, sort_keys=True).encode(), mode=0o600)


def _ensure_stream(logs: Any, group: str, stream: str) -> None:
    try:
        logs.create_log_stream(logGroupName=group, logStreamName=stream)
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") != "ResourceAlreadyExistsException":
            raise


def _records(path: Path, rejected: Path | None) -> list[dict[str, Any]]:
    """The file's records; lines that are not one go to ``rejected`` (None: they already went, on an earlier
    attempt)."""
    records, bad = split_lines(path.read_text(errors="replace"))
    if bad and rejected is not None:
        with rejected.open("a") as out:
            out.write("".join(b + "\n" for b in bad))
            out.flush()
            os.fsync(out.fileno())
        log.warning("%s: %d line(s) that are not call records moved to %s", path.name, len(bad), rejected.name)
    return records


def _time_order(record: dict[str, Any]) -> tuple[bool, int]:
    """Ends in order, records without an end last (their events carry the shipping time): the same order on
    every attempt, so a count of events already delivered means the same events."""
    value = record.get("end_ms")
    return (not isinstance(value, int), value if isinstance(value, int) else 0)


def s3_body(records: list[dict[str, Any]]) -> bytes:
    """The object's content: one JSON record per line (what the Athena table reads)."""
    lines = (json.dumps(with_media(r), separators=(",", ":"), sort_keys=True) + "\n" for r in records)
    return "".join(lines).encode()


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


def _rejected_by_logs(answer: Any, count: int) -> int:
    """How many of a batch's events CloudWatch Logs refused for good (older than 14 days or the retention, or
    more than 2 hours ahead): they are in S3, and sending them again would be refused again."""
    info = answer.get("rejectedLogEventsInfo") if isinstance(answer, dict) else None
    if not isinstance(info, dict):
        return 0
    old = max(int(info.get("tooOldLogEventEndIndex", -1)), int(info.get("expiredLogEventEndIndex", -1))) + 1
    new = count - int(info["tooNewLogEventStartIndex"]) if "tooNewLogEventStartIndex" in info else 0
    return min(count, old + new)


def ship_call_records(
    config: AgentConfig,
    logs: Any,
    s3: Any,
    *,
    settle_s: float = 2.0,
    batch_size: int = _BATCH,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Write every spooled record to ``s3://<backup bucket>/calls/…`` and send it to
    ``config.asterisk_log_group`` (stream ``calls-<instance>``); delete a file only after both accepted it.

    Progress is kept per claimed file in ``.<name>.progress`` (written atomically, fsync'd): S3 done, and how
    many of its events CloudWatch Logs accepted. A run after an outage or a crash resumes there, so neither S3
    nor the log stream receives a record twice (except the one batch in flight when the host died)."""
    group = config.asterisk_log_group
    if not group:
        raise AgentError("set --asterisk-log-group (SIP_TRUNK_ASTERISK_LOG_GROUP) to ship call records")
    bucket = config.backup_bucket
    if not bucket:
        raise AgentError("set --backup-bucket (SIP_TRUNK_BACKUP_BUCKET) to ship call records")
    spool = config.call_records_dir
    empty = {"shipped": 0, "files": 0, "pending": 0, "refused_by_logs": 0}
    if not spool.is_dir():
        return empty
    files = _claim(spool)
    if not files:
        _prune_bye_headers(spool, clock())
        return empty
    sleep(settle_s)
    _make_durable(spool, files)
    bye = load_bye_headers(spool)  # after the settle time: a record is written after the BYE that ended it
    host = config.instance_id or "host"
    stream = f"calls-{host}"
    shipped = refused = 0
    try:
        _ensure_stream(logs, group, stream)
        for path in files:
            progress = _read_progress(path)
            records = _records(path, None if progress else spool / REJECTED)
            if progress is None:
                progress = {"s3": False, "logs_sent": 0}
                _write_progress(path, progress)  # the bad lines went to rejected.jsonl once, never again
            # PutLogEvents wants time order
            ordered = [with_agent_headers(r, bye) for r in sorted(records, key=_time_order)]
            if ordered and not progress["s3"]:
                day, batch = _batch(path)
                _put_records(s3, bucket, object_key(day, host, batch), s3_body(ordered))
                progress["s3"] = True
                _write_progress(path, progress)
            now_ms = int(clock() * 1000)
            events = [
                {"timestamp": end_ms(r, now_ms), "message": emf_event(r, stack=config.stack, timestamp_ms=now_ms)}
                for r in ordered
            ]
            for start in range(int(progress["logs_sent"]), len(events), batch_size):
                chunk = events[start : start + batch_size]
                answer = logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=chunk)
                refused += _rejected_by_logs(answer, len(chunk))
                progress["logs_sent"] = start + len(chunk)
                _write_progress(path, progress)
            path.unlink()
            _progress_path(path).unlink()
            shipped += len(events)
    except Exception as exc:
        pending = len(list(spool.glob(f"calls-*.jsonl.*{SHIPPING}")))
        log.warning("call records stay spooled (%d file(s)): %s: %s", pending, exc.__class__.__name__, exc)
        raise CallRecordsUnavailable(f"{exc.__class__.__name__}: {exc}"[:500]) from exc
    _prune_bye_headers(spool, clock())
    if refused:
        log.warning("CloudWatch Logs refused %d call record event(s) as too old or too new; they are in S3", refused)
    return {"shipped": shipped, "files": len(files), "pending": 0, "refused_by_logs": refused}


def last_calls(spool: Path, count: int = 20) -> list[dict[str, Any]]:
    """The newest ``count`` records still in the spool (shipping or not), oldest first."""
    records: list[dict[str, Any]] = []
    for path in sorted(spool.glob("calls-*.jsonl*")):
        if path.name == REJECTED or path.name.endswith(PROGRESS):
            continue
        records.extend(split_lines(path.read_text(errors="replace"))[0])
    records.sort(key=end_ms)
    return records[-count:]
