"""Config releases on disk: each version in its own directory, the live config dir a symlink swapped atomically.

Layout: ``<releases_dir>/<name>/`` holds one complete Asterisk config directory (plus ``.manifest.json`` when it
came from a rendered version); ``<config_dir>`` (``/etc/asterisk``, Asterisk's ``astetcdir``) is a relative
symlink to the active one. A swap is one ``rename(2)`` of a new symlink over the old: Asterisk, which reads its
files only at start and reload, sees the old set or the new set, never a mixture.
"""

from __future__ import annotations

import fnmatch
import grp
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from sip_trunk.agent.runtime import AgentError, fsync_dir

MANIFEST_FILE = ".manifest.json"
_STAGING = ".staging-"


def _gid(group: str | None) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:  # no such group (a test machine): leave root's group
        return None


def _safe_rel(rel: str) -> str:
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or any(p in ("..", "") for p in parts):
        raise AgentError(f"refusing unsafe path in config set: {rel!r}")
    return rel


class Releases:
    def __init__(self, releases_dir: Path, config_dir: Path, *, keep: int = 3, group: str | None = "asterisk") -> None:
        self.dir = releases_dir
        self.config_dir = config_dir
        self.keep = keep
        self.gid = _gid(group)

    def path(self, name: str) -> Path:
        return self.dir / name

    def current(self) -> str | None:
        """Name of the active release, or None when the config dir is not (yet) managed."""
        if not self.config_dir.is_symlink():
            return None
        target = (self.config_dir.parent / os.readlink(self.config_dir)).resolve()
        if target.parent != self.dir.resolve():
            return None
        return target.name

    def current_version(self) -> str | None:
        """The config version the live directory holds (from its manifest), else the release name."""
        name = self.current()
        if name is None:
            return None
        try:
            document = json.loads((self.path(name) / MANIFEST_FILE).read_text())
            return str(document["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return name

    def live_files(self) -> dict[str, bytes]:
        """Every file of the live config directory (relative path → content)."""
        base = self.config_dir.resolve()
        if not base.is_dir():
            return {}
        return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}

    def carried_files(self, patterns: tuple[str, ...]) -> dict[str, bytes]:
        """Files of the live config that no rendered version owns (TLS keys …), matched by glob."""
        return {
            rel: data
            for rel, data in self.live_files().items()
            if any(fnmatch.fnmatch(rel, pattern) for pattern in patterns)
        }

    def stage(self, name: str, files: Mapping[str, bytes]) -> Path:
        """Write a complete release next to the others; an existing inactive one of that name is replaced."""
        if name.startswith(".") or "/" in name or not name:
            raise AgentError(f"bad release name: {name!r}")
        self.dir.mkdir(parents=True, exist_ok=True)
        staging = self.dir / f"{_STAGING}{name}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o750)
        for rel, data in files.items():
            dest = staging / _safe_rel(rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            # rendered configs hold SIP passwords: never world-readable; Asterisk (runuser) reads via its group
            dest.chmod(0o640)
        if self.gid is not None:
            for path in [staging, *staging.rglob("*")]:
                os.chown(path, -1, self.gid)
        fsync_dir(staging)
        final = self.path(name)
        if final.exists():
            if self.current() == name:
                shutil.rmtree(staging)
                raise AgentError(f"release {name} is active; not replacing it in place")
            shutil.rmtree(final)
        os.rename(staging, final)
        fsync_dir(self.dir)
        return final

    def adopt_unmanaged(self) -> str | None:
        """First run: move a plain config directory into the releases as the rollback target."""
        if self.config_dir.is_symlink() or not self.config_dir.exists():
            return self.current()
        name = time.strftime("initial-%Y%m%dT%H%M%S", time.gmtime())
        self.dir.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.config_dir), str(self.path(name)))
        self._link(name)
        return name

    def activate(self, name: str) -> None:
        if not self.path(name).is_dir():
            raise AgentError(f"no release {name} under {self.dir}")
        self._link(name)

    def _link(self, name: str) -> None:
        parent = self.config_dir.parent
        target = os.path.relpath(self.path(name), parent)
        tmp = parent / f".{self.config_dir.name}.link-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(target)
        os.replace(tmp, self.config_dir)
        fsync_dir(parent)

    def prune(self, protect: set[str]) -> list[str]:
        """Delete old releases, keeping the newest ``keep`` plus ``protect`` (current, previous)."""
        if not self.dir.is_dir():
            return []
        releases = sorted(
            (p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        removed = []
        for stale in releases[self.keep :]:
            if stale.name not in protect:
                shutil.rmtree(stale)
                removed.append(stale.name)
        for leftover in self.dir.glob(f"{_STAGING}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return removed
