"""``apply --version V``: install a rendered config version so that Asterisk never runs a broken or partial one.

1. fetch every file of V from SSM (``sip_trunk.configstore``) and check each hash against V's manifest;
2. write the Asterisk files as a new release directory (TLS keys carried over) and the fail2ban files aside;
3. swap the live config symlink to it, ``core reload`` — or restart Asterisk when ``modules.conf`` or
   ``asterisk.conf`` changed (a reload keeps the loaded modules and directories) and wait until it is fully
   booted — then verify that every endpoint, transport and dialplan context the files declare is loaded;
4. on any failure point the symlink back at the previous release, restore the fail2ban files, reload (or
   restart) again;
5. after a successful swap, reload fail2ban so the rendered jail and filter take effect.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sip_trunk import asterisk as ast
from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.releases import MANIFEST_FILE, Releases
from sip_trunk.agent.runtime import AgentError, AsteriskCli, AsteriskUnavailable, atomic_write, write_json
from sip_trunk.manifest import MANIFEST_NAME, Manifest

log = logging.getLogger(__name__)

ASTERISK_PREFIX = "asterisk/"
FAIL2BAN_PREFIX = "fail2ban/"
# Changes to these take effect only when Asterisk restarts; a reload keeps the running values.
RESTART_FILES = ("modules.conf", "asterisk.conf")
LAST_APPLY = "last-apply.json"


class VerifyFailed(AgentError):
    """Asterisk did not load what the config declares."""


class ApplyFailed(AgentError):
    """The new version was rolled back (the message says why)."""


@dataclass
class Verification:
    endpoints: list[str] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.missing.values())


def verify_loaded(cli: AsteriskCli, release: Path, *, timeout_s: float) -> Verification:
    """Poll Asterisk until everything ``release`` declares is loaded, or raise `VerifyFailed`."""
    pjsip = release / "pjsip.conf"
    extensions = release / "extensions.conf"
    objects = ast.expected_pjsip_objects(pjsip.read_text() if pjsip.exists() else "")
    contexts = ast.expected_dialplan_contexts(extensions.read_text() if extensions.exists() else "")
    deadline = time.monotonic() + timeout_s
    while True:
        result = Verification()
        endpoints = {e.name for e in ast.parse_endpoints(cli.rx("pjsip show endpoints"))}
        transports = {t.name for t in ast.parse_transports(cli.rx("pjsip show transports"))}
        loaded_contexts = set(ast.parse_dialplan_contexts(cli.rx("dialplan show"))) if contexts else set()
        result.endpoints, result.transports = sorted(endpoints), sorted(transports)
        result.contexts = sorted(loaded_contexts & contexts)
        result.missing = {
            "endpoints": sorted(objects.endpoints - endpoints),
            "transports": sorted(objects.transports - transports),
            "contexts": sorted(contexts - loaded_contexts),
        }
        if result.ok:
            return result
        if time.monotonic() >= deadline:
            missing = {k: v for k, v in result.missing.items() if v}
            raise VerifyFailed(f"Asterisk did not load {missing}")
        time.sleep(0.2)


def restart_required(previous: Mapping[str, bytes], new: Mapping[str, bytes]) -> list[str]:
    """The files among `RESTART_FILES` whose content differs between two config directories."""
    return sorted(name for name in RESTART_FILES if previous.get(name) != new.get(name))


def _uptime(cli: AsteriskCli) -> int | None:
    try:
        return ast.parse_uptime(cli.rx("core show uptime seconds", timeout_s=5))[0]
    except (AsteriskUnavailable, ValueError):
        return None


def restart_asterisk(config: AgentConfig, cli: AsteriskCli) -> float:
    """Restart Asterisk, wait until it runs again and is fully booted; returns the seconds it took."""
    started = time.monotonic()
    before = _uptime(cli)
    if before == 0:  # started within the second: make "uptime went down" observable
        time.sleep(1.0)
        before = _uptime(cli)
    command = list(config.restart_command)
    if command and command[0].endswith("systemctl"):
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=config.restart_timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AgentError(f"restart: {exc}") from exc
        if proc.returncode != 0:
            raise AgentError(f"restart: {' '.join(command)} exited {proc.returncode}: {proc.stderr.strip()[:200]}")
    else:
        # the control socket may close under the command: what counts is what follows
        with contextlib.suppress(AsteriskUnavailable):
            cli.rx(" ".join(command), timeout_s=config.reload_timeout_s)
    deadline = started + config.restart_timeout_s
    restarted = before is None
    while time.monotonic() < deadline:
        uptime = _uptime(cli)
        if uptime is None:
            restarted = True  # down: the restart is under way
        elif restarted or (before is not None and uptime < before):
            restarted = True
            try:
                if "fully booted" in cli.rx("core waitfullybooted", timeout_s=max(1.0, deadline - time.monotonic())):
                    return round(time.monotonic() - started, 3)
            except AsteriskUnavailable:
                pass
        time.sleep(0.1)
    if not restarted:
        with contextlib.suppress(AsteriskUnavailable):  # let the pending graceful restart go
            cli.rx("core abort shutdown", timeout_s=5)
    raise AgentError(f"Asterisk did not restart within {config.restart_timeout_s:.0f} s")


def _take_effect(config: AgentConfig, cli: AsteriskCli, restart: bool) -> float | None:
    if restart:
        return restart_asterisk(config, cli)
    cli.rx("core reload", timeout_s=config.reload_timeout_s)
    return None


def release_files(files: Mapping[str, bytes], carried: Mapping[str, bytes]) -> dict[str, bytes]:
    """The Asterisk part of a rendered set as a config directory, plus carried local files and the manifest."""
    out = dict(carried)
    for rel, data in files.items():
        if rel.startswith(ASTERISK_PREFIX):
            out[rel[len(ASTERISK_PREFIX) :]] = data
    out[MANIFEST_FILE] = files[MANIFEST_NAME]
    return out


def _fail2ban_files(files: Mapping[str, bytes]) -> dict[str, bytes]:
    return {rel[len(FAIL2BAN_PREFIX) :]: data for rel, data in files.items() if rel.startswith(FAIL2BAN_PREFIX)}


def _write_fail2ban(base: Path, files: Mapping[str, bytes | None]) -> None:
    for rel, data in files.items():
        dest = base / rel
        if data is None:
            dest.unlink(missing_ok=True)
        else:
            atomic_write(dest, data, 0o644)


def _reload_fail2ban(config: AgentConfig) -> str | None:
    if not config.fail2ban_reload:
        return None
    try:
        proc = subprocess.run(list(config.fail2ban_reload), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"fail2ban reload: {exc}"
    return None if proc.returncode == 0 else f"fail2ban reload failed: {proc.stderr.strip()[:200]}"


def install_release(
    config: AgentConfig,
    cli: AsteriskCli,
    name: str,
    files: Mapping[str, bytes],
    *,
    fail2ban: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """Stage ``files`` as release ``name``, swap, reload, verify; roll back on failure (raises `ApplyFailed`)."""
    releases = Releases(config.releases_dir, config.config_dir, keep=config.releases_kept)
    started = time.monotonic()
    previous = releases.adopt_unmanaged()
    previous_files = releases.live_files()
    if previous == name:
        verification = verify_loaded(cli, releases.path(name), timeout_s=config.reload_timeout_s)
        return {"version": name, "changed": False, "previous": previous, "verified": verification.__dict__}

    release = releases.stage(name, files)
    old_fail2ban = {rel: _read_or_none(config.fail2ban_dir / rel) for rel in (fail2ban or {})}
    restart = restart_required(previous_files, files) if previous is not None else []
    releases.activate(name)
    _write_fail2ban(config.fail2ban_dir, fail2ban or {})
    restart_seconds = None
    try:
        restart_seconds = _take_effect(config, cli, bool(restart))
        verification = verify_loaded(cli, release, timeout_s=config.reload_timeout_s)
    except AgentError as exc:
        log.error("version %s failed (%s); rolling back to %s", name, exc, previous)
        rollback = _rollback(config, cli, releases, previous, old_fail2ban, restart=bool(restart))
        raise ApplyFailed(f"version {name} rolled back to {previous}: {exc}; {rollback}") from exc
    warnings = []
    if fail2ban and (problem := _reload_fail2ban(config)):
        warnings.append(problem)
    removed = releases.prune({name, previous} if previous else {name})
    return {
        "version": name,
        "changed": True,
        "previous": previous,
        "verified": verification.__dict__,
        "restart_required": bool(restart),
        "restarted_for": restart,
        "restart_seconds": restart_seconds,
        "warnings": warnings,
        "pruned": removed,
        "seconds": round(time.monotonic() - started, 3),
    }


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _rollback(
    config: AgentConfig,
    cli: AsteriskCli,
    releases: Releases,
    previous: str | None,
    old_fail2ban: Mapping[str, bytes | None],
    *,
    restart: bool = False,
) -> str:
    _write_fail2ban(config.fail2ban_dir, old_fail2ban)
    if old_fail2ban:
        _reload_fail2ban(config)
    if previous is None:
        return "no previous release to restore"
    releases.activate(previous)
    try:
        _take_effect(config, cli, restart)
        verify_loaded(cli, releases.path(previous), timeout_s=config.reload_timeout_s)
    except AgentError as exc:
        return f"previous release {previous} restored but not verified: {exc}"
    return f"previous release {previous} restored and verified"


def apply_version(config: AgentConfig, ssm: Any, cli: AsteriskCli, version: str) -> dict[str, Any]:
    """Fetch, verify and install a version; records the outcome for `report`."""
    from sip_trunk import configstore

    try:
        try:
            files = configstore.fetch_config(ssm, config.prefix, version)
        except (ValueError, LookupError) as exc:  # ManifestMismatch is a ValueError, ConfigNotFound a LookupError
            raise ApplyFailed(f"version {version} refused before install: {exc}") from exc
        manifest = Manifest.from_json(files[MANIFEST_NAME])
        manifest.verify(files)  # again, on exactly the bytes about to be written
        releases = Releases(config.releases_dir, config.config_dir)
        carried = releases.carried_files(config.keep_files)
        result = install_release(config, cli, version, release_files(files, carried), fail2ban=_fail2ban_files(files))
    except (AgentError, AsteriskUnavailable) as exc:
        write_json(
            config.state_dir / LAST_APPLY, {"version": version, "ok": False, "error": str(exc), "at": time.time()}
        )
        raise
    write_json(config.state_dir / LAST_APPLY, {"version": version, "ok": True, "error": None, "at": time.time()})
    return result
