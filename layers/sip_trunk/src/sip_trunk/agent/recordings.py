"""Recordings: upload with metadata, delete locally only after a verified upload, queue durably when S3 is away.

The dialplan's hangup handler runs as Asterisk's user with Asterisk's environment, so it does not upload: it
writes a small job file (``<call id>.job``: ``file=``, ``call_id=``, ``caller=``, ``callee=``, ``duration=``
lines and ``end=1`` last) into the spool directory (root:asterisk 0770). ``sip-trunk-recordings.path`` starts
``flush-recordings`` (root, the agent's configuration) as soon as one appears, and the two-minute timer
retries: :func:`ingest_spool` validates each job strictly (the recording must be ``<recordings dir>/<call
id>.wav``; caller and callee digits only), moves it into the durable queue (:func:`enqueue`) and removes it
from the spool; a job that is malformed or stays incomplete is moved to ``rejected/`` (never retried in a
loop, kept for an operator). Nothing of a job reaches a shell.

``upload-recording FILE …`` (by hand) and the spool both first write a job file into the queue directory
(fsync'd), then upload. The object key is derived from the call id, so a retry after a crash or an outage
overwrites the same object with the same bytes: nothing is duplicated. The local file is deleted only after a
``HEAD`` shows the object with the expected size and the sha256 we computed; then the job is removed. Anything
that fails leaves the job in place for ``flush-recordings`` (the ``sip-trunk-recordings.timer``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.runtime import AgentError, atomic_write, file_lock

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_TRANSIENT = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "NoCredentialsError",
)


JOB_SUFFIX = ".job"
REJECTED = "rejected"
JOB_COMPLETE_WAIT_S = 5.0
_SPOOL_FIELDS = {"file", "call_id", "caller", "callee", "duration", "end"}
_CALL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # ${UNIQUEID}: [systemname-]epoch.sequence
_NUMBER = re.compile(r"[0-9+*#]{0,32}")
_DURATION = re.compile(r"[0-9]{0,7}")


class SpoolJobInvalid(AgentError):
    """A spool job is malformed, incomplete or names a file outside the recordings directory."""


@dataclass(frozen=True)
class SpoolJob:
    file: Path
    call_id: str
    caller: str
    callee: str
    duration: str


def parse_spool_job(text: str, recordings_dir: Path) -> SpoolJob:
    """A hangup handler's job, validated: every field known and well-formed, the file exactly
    ``<recordings_dir>/<call id>.wav``."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key not in _SPOOL_FIELDS or key in values:
            raise SpoolJobInvalid(f"unexpected line {line[:80]!r}")
        values[key] = value
    if values.get("end") != "1":
        raise SpoolJobInvalid("incomplete job (no end=1 line)")
    call_id = values.get("call_id", "")
    if not _CALL_ID.fullmatch(call_id) or ".." in call_id:
        raise SpoolJobInvalid(f"bad call id {call_id[:80]!r}")
    for name, pattern in (("caller", _NUMBER), ("callee", _NUMBER), ("duration", _DURATION)):
        if not pattern.fullmatch(values.get(name, "")):
            raise SpoolJobInvalid(f"bad {name} {values.get(name, '')[:80]!r}")
    expected = recordings_dir / f"{call_id}.wav"
    if values.get("file") != str(expected):
        raise SpoolJobInvalid(f"file {values.get('file', '')[:120]!r} is not {expected}")
    return SpoolJob(expected, call_id, values["caller"], values["callee"], values["duration"])


def _read_complete(job_file: Path, wait_s: float, sleep: Callable[[float], None]) -> str:
    """The job's text once its last line is ``end=1`` (the handler appends line by line), within ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        text = job_file.read_text(errors="replace")
        if text.endswith("end=1\n") or time.monotonic() >= deadline:
            return text
        sleep(0.1)


def ingest_spool(
    config: AgentConfig,
    *,
    config_version: str | None = None,
    wait_s: float = JOB_COMPLETE_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Move every spool job into the durable queue; reject what is not a valid, complete job."""
    spool = config.recording_spool_dir
    ingested: list[str] = []
    rejected: dict[str, str] = {}
    if not spool.is_dir():
        return {"ingested": ingested, "rejected": rejected}
    for job_file in sorted(spool.glob(f"*{JOB_SUFFIX}"), key=lambda p: p.stat().st_mtime):
        if not job_file.is_file() or job_file.is_symlink():
            rejected[job_file.name] = "not a regular file"
            _reject(job_file)
            continue
        try:
            job = parse_spool_job(_read_complete(job_file, wait_s, sleep), config.recordings_dir)
            enqueue(
                config,
                job.file,
                call_id=job.call_id,
                caller=job.caller,
                callee=job.callee,
                duration=job.duration,
                config_version=config_version,
            )
        except AgentError as exc:
            log.warning("recording job %s rejected: %s", job_file.name, exc)
            rejected[job_file.name] = str(exc)
            _reject(job_file)
            continue
        job_file.unlink()
        ingested.append(job.call_id)
    return {"ingested": ingested, "rejected": rejected}


def _reject(job_file: Path) -> None:
    target = job_file.parent / REJECTED
    target.mkdir(mode=0o700, exist_ok=True)
    job_file.replace(target / job_file.name)


@dataclass
class Job:
    path: str
    key: str
    sha256: str
    size: int
    metadata: dict[str, str]
    queued_at: float
    attempts: int = 0
    last_error: str | None = None


def _sha256_md5(path: Path) -> tuple[str, str, int]:
    sha, md5, size = hashlib.sha256(), hashlib.md5(), 0  # noqa: S324 - MD5 only for S3's Content-MD5
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), base64.b64encode(md5.digest()).decode(), size


def object_key(stack: str, call_id: str, recorded_at: float, suffix: str) -> str:
    day = time.strftime("%Y/%m/%d", time.gmtime(recorded_at))
    return f"recordings/{stack or 'default'}/{day}/{_SAFE.sub('_', call_id)}{suffix}"


def _riff_complete(file: Path) -> bool | None:
    """Asterisk's WAV writer fills in the RIFF size when it closes the file: until then it is stale.

    None when the file has no RIFF header at all (not a WAV the recorder writes).
    """
    with file.open("rb") as fh:
        header = fh.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        return None
    return int.from_bytes(header[4:8], "little") + 8 == file.stat().st_size


def wait_until_complete(
    file: Path,
    *,
    timeout_s: float = 30.0,
    poll_s: float = 0.2,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Wait for the recorder to finish the file; the hangup handler may call us before it has.

    A RIFF/WAV file is complete when its header matches its size; any other file when its size
    stops changing between two polls. Returns False on timeout (the file is then queued as it is).
    """
    deadline = clock() + timeout_s
    last_size = -1
    while True:
        size = file.stat().st_size
        riff = _riff_complete(file)
        done = riff if riff is not None else size == last_size
        if done:
            return True
        if clock() >= deadline:
            return False
        last_size = size
        sleep(poll_s)


def enqueue(
    config: AgentConfig,
    file: Path,
    *,
    call_id: str,
    caller: str,
    callee: str,
    duration: str,
    config_version: str | None,
) -> Path:
    """Record the intent to upload durably before touching S3; returns the job file."""
    if not file.is_file():
        raise AgentError(f"no recording at {file}")
    if not call_id:
        raise AgentError("--call-id is required")
    if not wait_until_complete(file):
        log.warning("recording %s still changing after the wait; queued as it is", file.name)
    sha, _, size = _sha256_md5(file)
    recorded_at = file.stat().st_mtime
    metadata = {
        name: value.encode("ascii", "replace").decode()
        for name, value in {
            "call-id": call_id,
            "caller": caller,
            "callee": callee,
            "duration": duration,
            "config-version": config_version or "unknown",
            "sha256": sha,
            "recorded-at": str(int(recorded_at)),
        }.items()
    }
    job = Job(
        path=str(file.resolve()),
        key=object_key(config.stack, call_id, recorded_at, file.suffix),
        sha256=sha,
        size=size,
        metadata=metadata,
        queued_at=time.time(),
    )
    job_file = config.queue_dir / f"{_SAFE.sub('_', call_id)}.json"
    atomic_write(job_file, (json.dumps(asdict(job), indent=2, sort_keys=True) + "\n").encode(), 0o600)
    return job_file


def _verified(s3: Any, bucket: str, job: Job) -> bool:
    try:
        head = s3.head_object(Bucket=bucket, Key=job.key)
    except Exception as exc:  # botocore's 404 is a ClientError; anything else propagates below
        if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return bool(head["ContentLength"] == job.size and head.get("Metadata", {}).get("sha256") == job.sha256)


def process(config: AgentConfig, s3: Any, job_file: Path) -> str:
    """Upload one job. Returns uploaded | already-uploaded | queued | locked; raises only on corrupt jobs."""
    if not config.recordings_bucket:
        raise AgentError("no recordings bucket: set --recordings-bucket (SIP_TRUNK_RECORDINGS_BUCKET)")
    bucket = config.recordings_bucket
    with file_lock(job_file.with_suffix(".lock"), blocking=False) as locked:
        if not locked:
            return "locked"
        if not job_file.exists():  # finished by someone else while we waited
            return "already-uploaded"
        job = Job(**json.loads(job_file.read_text()))
        path = Path(job.path)
        try:
            if not path.exists():
                # Deleted after a verified upload, then the agent stopped before removing the job.
                if _verified(s3, bucket, job):
                    _finish(job_file)
                    return "already-uploaded"
                raise AgentError(f"{path} is gone and s3://{bucket}/{job.key} does not hold it")
            sha, md5, size = _sha256_md5(path)
            if sha != job.sha256 or size != job.size:
                raise AgentError(f"{path} changed after it was queued")
            if not _verified(s3, bucket, job):
                with path.open("rb") as body:
                    s3.put_object(
                        Bucket=bucket,
                        Key=job.key,
                        Body=body,
                        ContentMD5=md5,
                        ContentType="audio/wav" if path.suffix == ".wav" else "application/octet-stream",
                        Metadata=job.metadata,
                    )
                if not _verified(s3, bucket, job):
                    raise AgentError(f"s3://{bucket}/{job.key} does not match after upload")
        except AgentError:
            raise
        except Exception as exc:
            job.attempts += 1
            job.last_error = f"{exc.__class__.__name__}: {exc}"[:500]
            atomic_write(job_file, (json.dumps(asdict(job), indent=2, sort_keys=True) + "\n").encode(), 0o600)
            log.warning("recording %s queued: %s", job.key, job.last_error)
            return "queued"
        path.unlink()
        _finish(job_file)
        return "uploaded"


def _finish(job_file: Path) -> None:
    job_file.unlink(missing_ok=True)
    job_file.with_suffix(".lock").unlink(missing_ok=True)


def upload_recording(config: AgentConfig, s3: Any, file: Path, **fields: Any) -> dict[str, Any]:
    job_file = enqueue(config, file, **fields)
    key = str(json.loads(job_file.read_text())["key"])
    outcome = process(config, s3, job_file)
    return {"file": str(file), "outcome": outcome, "job": job_file.name, "key": key}


def flush_recordings(config: AgentConfig, s3: Any, *, config_version: str | None = None) -> dict[str, Any]:
    """Take the hangup handler's spool jobs into the queue, then retry every queued job, oldest first; a corrupt
    job is reported and left for an operator."""
    spool = ingest_spool(config, config_version=config_version)
    counts: dict[str, int] = {}
    errors: dict[str, str] = {f"spool/{name}": reason for name, reason in spool["rejected"].items()}
    if config.queue_dir.is_dir():
        for job_file in sorted(config.queue_dir.glob("*.json"), key=lambda p: p.stat().st_mtime):
            try:
                outcome = process(config, s3, job_file)
            except AgentError as exc:
                outcome = "error"
                errors[job_file.name] = str(exc)
            counts[outcome] = counts.get(outcome, 0) + 1
    remaining = len(list(config.queue_dir.glob("*.json"))) if config.queue_dir.is_dir() else 0
    return {"outcomes": counts, "errors": errors, "remaining": remaining, "ingested": spool["ingested"]}
