"""``backup`` and ``restore --key K``: config + astdb + voicemail as one tarball with a sha256, in the backups bucket.

The tarball holds ``backup.json`` (version, instance, each member's sha256), ``config/…`` (the live Asterisk
config directory), ``astdb.sqlite3`` (a consistent copy taken with SQLite's online backup) and ``voicemail/…``.
The object's metadata ``sha256`` is the tarball's digest; restore refuses anything that does not match it or
whose members do not match ``backup.json``, then installs the config as a release (reload, verify, roll back on
failure), rewrites the astdb through Asterisk's own CLI (Asterisk keeps the database open) and the voicemail.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sip_trunk.agent.apply import install_release
from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.releases import Releases
from sip_trunk.agent.runtime import AgentError, AsteriskCli

META = "backup.json"
ASTDB = "astdb.sqlite3"
BARRIER_FAMILY = "sip-trunk-agent"
BARRIER_KEY = "backup-barrier"


class BackupCorrupt(AgentError):
    """The backup's checksum or a member's hash does not match."""


def _astdb_copy(path: Path) -> bytes | None:
    if not path.exists():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / ASTDB
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        dst = sqlite3.connect(copy)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return copy.read_bytes()


def _tree(base: Path) -> dict[str, bytes]:
    if not base.is_dir():
        return {}
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def build_tarball(members: Mapping[str, bytes], meta: dict[str, Any]) -> bytes:
    meta = {**meta, "files": {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in [(META, json.dumps(meta, indent=2, sort_keys=True).encode()), *sorted(members.items())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o640
            info.mtime = int(meta["created_at"])
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read_tarball(blob: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Members of a backup, verified against its ``backup.json``; only regular files with safe names."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for info in tar.getmembers():
                name = info.name
                if not info.isfile() or name.startswith("/") or ".." in Path(name).parts:
                    raise BackupCorrupt(f"unexpected member {name!r}")
                handle = tar.extractfile(info)
                members[name] = handle.read() if handle else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BackupCorrupt(f"not a readable backup: {exc}") from exc
    try:
        meta = json.loads(members.pop(META))
        hashes = dict(meta["files"])
    except (KeyError, ValueError, TypeError) as exc:
        raise BackupCorrupt("backup.json missing or invalid") from exc
    if set(hashes) != set(members):
        raise BackupCorrupt(f"members differ from backup.json: {sorted(set(hashes) ^ set(members))}")
    for name, data in members.items():
        if hashlib.sha256(data).hexdigest() != hashes[name]:
            raise BackupCorrupt(f"{name} does not match its sha256")
    return meta, members


def astdb_barrier(cli: AsteriskCli, path: Path, *, timeout_s: float = 10.0) -> None:
    """Wait until everything Asterisk wrote to its astdb is committed to the file.

    Asterisk batches astdb writes in a transaction it commits about once a second. Writing a marker through
    the CLI and waiting until the file shows it proves every earlier write is on disk (commits are ordered).
    """
    marker = f"{time.time():.6f}"
    cli.rx(f"database put {BARRIER_FAMILY} {BARRIER_KEY} {marker}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (f"/{BARRIER_FAMILY}/{BARRIER_KEY}", marker) in _astdb_rows(path):
            return
        time.sleep(0.1)
    raise AgentError(f"astdb did not commit within {timeout_s} s")


def backup(
    config: AgentConfig, s3: Any, instance_id: str, *, cli: AsteriskCli | None = None, now: float | None = None
) -> dict[str, Any]:
    if not config.backup_bucket:
        raise AgentError("no backups bucket: set --backup-bucket (SIP_TRUNK_BACKUP_BUCKET)")
    if cli is not None and cli.up():
        astdb_barrier(cli, config.astdb_path)
    created = time.time() if now is None else now
    releases = Releases(config.releases_dir, config.config_dir)
    version = releases.current_version() or "unmanaged"
    members = {f"config/{rel}": data for rel, data in releases.live_files().items()}
    astdb = _astdb_copy(config.astdb_path)
    if astdb is not None:
        members[ASTDB] = astdb
    members |= {f"voicemail/{rel}": data for rel, data in _tree(config.voicemail_dir).items()}
    blob = build_tarball(
        members,
        {"format": 1, "version": version, "instance_id": instance_id, "stack": config.stack, "created_at": created},
    )
    digest = hashlib.sha256(blob).hexdigest()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created))
    key = f"hosts/{instance_id}/{stamp}-{version}.tar.gz"
    s3.put_object(
        Bucket=config.backup_bucket,
        Key=key,
        Body=blob,
        ContentMD5=base64.b64encode(hashlib.md5(blob).digest()).decode(),  # noqa: S324 - S3 integrity header
        ContentType="application/gzip",
        Metadata={"sha256": digest, "config-version": version, "instance-id": instance_id},
    )
    head = s3.head_object(Bucket=config.backup_bucket, Key=key)
    if head["ContentLength"] != len(blob) or head.get("Metadata", {}).get("sha256") != digest:
        raise AgentError(f"uploaded backup s3://{config.backup_bucket}/{key} does not match what was sent")
    return {
        "bucket": config.backup_bucket,
        "key": key,
        "sha256": digest,
        "bytes": len(blob),
        "version": version,
        "members": len(members),
    }


def _cli_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _astdb_rows(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return [(str(k), str(v)) for k, v in conn.execute("SELECT key, value FROM astdb ORDER BY key")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def restore_astdb(config: AgentConfig, cli: AsteriskCli, snapshot: bytes) -> int:
    """Make Asterisk's astdb hold exactly the snapshot's rows, through the CLI (Asterisk owns the file)."""
    with tempfile.TemporaryDirectory() as tmp:
        snap_path = Path(tmp) / ASTDB
        snap_path.write_bytes(snapshot)
        wanted = _astdb_rows(snap_path)
        if not cli.up():
            # Asterisk is stopped: replacing the file is safe and exact.
            config.astdb_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(snap_path, config.astdb_path)
            return len(wanted)
    current = _astdb_rows(config.astdb_path) if config.astdb_path.exists() else []
    for family in sorted({k.split("/")[1] for k, _ in current if k.count("/") >= 2}):
        cli.rx(f"database deltree {_cli_quote(family)}")
    for key, value in wanted:
        _, family, rest = key.split("/", 2)
        cli.rx(f"database put {_cli_quote(family)} {_cli_quote(rest)} {_cli_quote(value)}")
    return len(wanted)


def restore_voicemail(base: Path, files: Mapping[str, bytes]) -> None:
    staging = base.with_name(f".{base.name}.restore-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    for rel, data in files.items():
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    staging.mkdir(parents=True, exist_ok=True)
    old = base.with_name(f".{base.name}.old-{os.getpid()}")
    if base.exists():
        os.rename(base, old)
    os.rename(staging, base)
    shutil.rmtree(old, ignore_errors=True)


def restore(config: AgentConfig, s3: Any, cli: AsteriskCli, key: str, *, now: float | None = None) -> dict[str, Any]:
    if not config.backup_bucket:
        raise AgentError("no backups bucket: set --backup-bucket (SIP_TRUNK_BACKUP_BUCKET)")
    obj = s3.get_object(Bucket=config.backup_bucket, Key=key)
    blob = obj["Body"].read()
    expected = obj.get("Metadata", {}).get("sha256")
    actual = hashlib.sha256(blob).hexdigest()
    if expected != actual:
        raise BackupCorrupt(f"s3://{config.backup_bucket}/{key}: sha256 {actual} != recorded {expected}")
    meta, members = read_tarball(blob)
    version = str(meta.get("version") or "restored")
    config_files = {n[len("config/") :]: d for n, d in members.items() if n.startswith("config/")}
    if not config_files:
        raise BackupCorrupt("backup holds no config files")
    releases = Releases(config.releases_dir, config.config_dir, keep=config.releases_kept)
    name = version
    if releases.current() == name and releases.live_files() != config_files:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
        name = f"{version}.restore-{stamp}"
    installed = install_release(config, cli, name, config_files)
    rows = restore_astdb(config, cli, members[ASTDB]) if ASTDB in members else 0
    voicemail = {n[len("voicemail/") :]: d for n, d in members.items() if n.startswith("voicemail/")}
    restore_voicemail(config.voicemail_dir, voicemail)
    return {
        "key": key,
        "sha256": actual,
        "version": version,
        "release": name,
        "config": installed,
        "astdb_rows": rows,
        "voicemail_files": len(voicemail),
    }
