"""Talking to Asterisk (``asterisk -rx``) and small file-system helpers shared by the subcommands."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class AgentError(Exception):
    """An operation failed; the message is what the Run Command poller shows."""


class AsteriskUnavailable(AgentError):
    """Asterisk is not running or its control socket does not answer."""


class AsteriskCli:
    """``<cmd> -C <conf> -rx <command>``; ``cmd`` may be a prefix such as ``chroot ROOT /usr/sbin/asterisk``."""

    def __init__(self, cmd: Sequence[str], conf: str, *, timeout_s: float = 15.0) -> None:
        self.cmd = list(cmd)
        self.conf = conf
        self.timeout_s = timeout_s

    def rx(self, command: str, *, timeout_s: float | None = None) -> str:
        argv = [*self.cmd, "-C", self.conf, "-rx", command]
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout_s or self.timeout_s, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AsteriskUnavailable(f"`{command}`: {exc}") from exc
        out = proc.stdout
        if proc.returncode != 0 or out.startswith("Unable to connect to remote asterisk"):
            raise AsteriskUnavailable(f"`{command}` failed ({proc.returncode}): {(proc.stderr or out).strip()[:300]}")
        return out

    def up(self) -> bool:
        try:
            return self.rx("core show version", timeout_s=5).startswith("Asterisk ")
        except AsteriskUnavailable:
            return False


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, gid: int | None = None) -> None:
    """Write via a temporary file in the same directory, fsync, rename: readers see old or new, never half.
    Mode and group are set on the temporary file (created 0600), so the name never points at looser permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if gid is not None:
            os.chown(tmp, -1, gid)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, document: Any) -> None:
    atomic_write(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An advisory lock (flock) held for the block; yields False when non-blocking and already held."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
