"""Local mode needs root (namespaces, mounts) and the Asterisk root file system: ensure both or fail.

Never skip: a CI run must not pass by not testing.

Every local deployment a test starts lives in a run directory of this session, under
`/run/aws-sip-trunk/e2e-<pid>/` (never the demo's `/run/aws-sip-trunk/local`), so its namespaces
(`hosts.namespace_prefix`, derived from the run directory), sockets, state and logs are its own: a demo or
another test run on the machine shares none of them. Each test's run directory is torn down and removed after
the test; at the session's end nothing of the session may be left — no namespace, no process, no mount, no run
directory — or the session fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sip_trunk_local.hosts import namespace_prefix
from sip_trunk_local.netns import list_namespaces
from sip_trunk_local.orchestrator import DEFAULT_RUN_DIR, WORLD, controller_pid
from support.asterisk import DEFAULT_ROOT, AsteriskError, ensure_root, root_problem
from support.iam_proof import Recorder, e2e_calls

RUNS = Path("/run/aws-sip-trunk")
SESSION_RUNS = RUNS / f"e2e-{os.getpid()}"
"""This session's run directories (one per local deployment a test starts)."""
CLI = [sys.executable, "-m", "sip_trunk.cli"]


def sip_trunk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The product's CLI as an operator runs it."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def pytest_report_header() -> list[str]:
    """One line when a local deployment (a demo) is up: the tests do not touch it, and how to stop it."""
    lines = []
    for pidfile in sorted(RUNS.glob("*/controller.pid")):
        run_dir = pidfile.parent
        pid = controller_pid(run_dir)
        if pid is not None and not run_dir.name.startswith("e2e-"):
            stop = "make demo-down" if run_dir == DEFAULT_RUN_DIR else f"sip-trunk local down --run-dir {run_dir}"
            lines.append(
                f"local deployment up at {run_dir} (controller pid {pid}): the e2e tests use their own run "
                f"directories and namespaces under {SESSION_RUNS}; stop it with `{stop}`"
            )
    return lines


def world_leftovers(run_dir: Path) -> dict[str, list[str]]:
    """What of the local deployment in `run_dir` still exists on the machine: namespaces, processes, mounts."""
    prefix = namespace_prefix(run_dir / WORLD)
    namespaces = [ns for ns in list_namespaces() if ns.startswith(prefix + "-")]
    named = re.compile(re.escape(str(run_dir)) + r"(?=[/\s]|$)")
    processes = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if named.search(cmdline):
            processes.append(f"{proc.name}: {cmdline[:200]}")
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if named.search(line)]
    return {k: v for k, v in {"namespaces": namespaces, "processes": processes, "mounts": mounts}.items() if v}


def prune_finished_sessions() -> list[Path]:
    """Remove the run directories of e2e sessions whose pytest process is gone and of which nothing runs any
    more (no controller, namespace, process or mount); returns them. Anything still alive is left alone."""
    removed = []
    for path in sorted(RUNS.glob("e2e-*")):
        match = re.fullmatch(r"e2e-(?:drills-)?(\d+)", path.name)
        if match is None or path == SESSION_RUNS or Path(f"/proc/{match[1]}").exists():
            continue
        runs = [path, *(p for p in path.iterdir() if p.is_dir())]
        if any(controller_pid(r) is not None or world_leftovers(r) for r in runs):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@pytest.fixture(scope="session", autouse=True)
def local_mode_ready() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.fail("local mode needs root (network namespaces, mounts, Asterisk): run as root", pytrace=False)
    try:
        ensure_root(DEFAULT_ROOT)
    except AsteriskError as exc:
        pytest.fail(f"could not prepare the Asterisk root file system:\n{exc}", pytrace=False)
    problem = root_problem(DEFAULT_ROOT)
    if problem:
        pytest.fail(problem, pytrace=False)
    prune_finished_sessions()
    yield
    # Nothing of this session is left: each test removed its run directory, and with it everything else
    left = {str(p): world_leftovers(p) or {"run directory": [str(p)]} for p in sorted(SESSION_RUNS.glob("*"))}
    if SESSION_RUNS.exists():
        leftover = world_leftovers(SESSION_RUNS)
        if leftover:
            left[str(SESSION_RUNS)] = leftover
    if left:  # kept for `sip-trunk local down --run-dir …`, which removes exactly what its state records
        pytest.fail(f"the e2e session left things behind: {left}", pytrace=False)
    shutil.rmtree(SESSION_RUNS, ignore_errors=True)


@pytest.fixture
def local_run_dir(request: pytest.FixtureRequest, iam_recorder: Recorder) -> Iterator[Callable[[str], Path]]:
    """`make(name)` → a fresh run directory of this session for one local deployment. After the test each is
    taken down (`local down`), checked (no namespace, process or mount of it left) and removed; the calls its
    principals made (the moto server's call log) go to the permission proof, which evaluates them when the
    test ends (tests/conftest.py)."""
    made: list[Path] = []

    def make(name: str) -> Path:
        path = SESSION_RUNS / f"{request.node.name[:40]}-{name}".replace("[", "-").replace("]", "")
        assert not path.exists(), f"{path} exists"
        made.append(path)
        return path

    yield make
    problems = {}
    unattributed: list[str] = []
    for path in made:
        sip_trunk("local", "down", "--run-dir", str(path), timeout=300)
        calls, unreadable, seconds = e2e_calls(path)
        iam_recorder.add(calls, seconds)
        unattributed += unreadable
        left = world_leftovers(path)
        if left:
            problems[str(path)] = left
        else:
            shutil.rmtree(path, ignore_errors=True)
    if SESSION_RUNS.exists() and not any(SESSION_RUNS.iterdir()):
        SESSION_RUNS.rmdir()
    assert not problems, f"local deployments left things behind: {problems}"
    assert not unattributed, "calls the permission proof cannot attribute:\n" + "\n".join(unattributed)
