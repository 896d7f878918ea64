"""Real Asterisk 22 instances for the tests: :mod:`sip_trunk_local.asterisk_runner` (local mode runs its hosts
with the same code), with the test suite's defaults — the repository's root script and checked module list."""

from __future__ import annotations

from pathlib import Path

from sip_trunk_local import asterisk_runner as _runner
from sip_trunk_local.asterisk_runner import (
    DEFAULT_ROOT,
    LOG_NAMES,
    ROOT_MARKER,
    RUN_DIR,
    AsteriskError,
    AsteriskInstance,
    available_modules,
    module_dir,
    module_names,
    prune_runs,
    root_problem,
    unpatched_module_dir,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_SCRIPT = REPO_ROOT / "scripts" / "asterisk-root.sh"
MODULES_TXT = REPO_ROOT / "tests" / "asterisk" / "MODULES.txt"

__all__ = [
    "DEFAULT_ROOT",
    "LOG_NAMES",
    "MODULES_TXT",
    "REPO_ROOT",
    "ROOT_MARKER",
    "ROOT_SCRIPT",
    "RUN_DIR",
    "AsteriskError",
    "AsteriskInstance",
    "available_modules",
    "ensure_root",
    "module_dir",
    "module_load_lines",
    "module_names",
    "prune_runs",
    "root_problem",
    "unpatched_module_dir",
]


def ensure_root(root: Path = DEFAULT_ROOT, *, timeout: float = 1800) -> Path:
    """Run ``scripts/asterisk-root.sh`` (fast when the root is in place) and return the root it prints. The limit
    covers a fresh root with its patched ``res_pjsip.so`` on a loaded machine (15 min measured, ADR-44)."""
    return _runner.ensure_root(root, script=ROOT_SCRIPT, timeout=timeout)


def module_load_lines(path: Path = MODULES_TXT) -> list[str]:
    """The ``load = x.so`` lines of ``tests/asterisk/MODULES.txt`` (the checked module list)."""
    return _runner.module_load_lines(path)
