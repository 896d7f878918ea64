"""Provisioning time and failover RTO, measured by local mode through its CLI (as root).

``sip-trunk local up`` N times on a fresh deployment each (the Provision step of every run is timed, with the
state machine's own per-step durations), then ``sip-trunk local drill failover --repeat M`` on the last one,
then ``sip-trunk local down``. Everything goes through ``python -m sip_trunk.cli`` in a run directory of its own,
so a local deployment someone else runs (``/run/aws-sip-trunk/local``) is never touched.

A command of local mode that fails (not root, no Asterisk root, a drill that does not pass) is a result, not a
broken benchmark: :class:`LocalModeFailed` carries what ran and its output tail, and the caller records it."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.common import REPO

RUN_DIR = Path("/run/aws-sip-trunk/bench")
UP_TIMEOUT_S = 900.0
DRILL_TIMEOUT_S = 3600.0
METHOD = (
    "provision_s: the Provision step of `sip-trunk local up` (the real Provision state machine in moto; its Wait "
    "states paced, not slept), one fresh deployment per run, hosts from the cached Asterisk root; per_step: the "
    "execution's own state durations. failover_rto_s: `sip-trunk local drill failover --repeat N`: SIGKILL to the "
    "primary's Asterisk; detection = until the Failover execution's start time (started by the standby's real "
    "watch-peer, here --interval 0.5 --failures 3); movement = from there until SIP OPTIONS to the Elastic IP "
    "203.0.113.10 from the outside namespace is answered; the standby is re-armed between runs."
)


class LocalModeFailed(RuntimeError):
    """A local-mode command exited non-zero or did not report what it should."""

    def __init__(self, message: str, *, command: list[str] | None = None, output: str = "") -> None:
        super().__init__(message)
        self.command = command
        self.output = output[-3000:]


def stats(values: list[float]) -> dict[str, Any]:
    """median, p95 (nearest rank, the same as local mode's own summaries), min, max and the count."""
    ordered = sorted(values)
    p95 = ordered[max(0, min(len(ordered) - 1, round(0.95 * (len(ordered) - 1))))]
    return {
        "median": round(statistics.median(ordered), 3),
        "p95": round(p95, 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
        "runs": len(ordered),
    }


def _cli(run_dir: Path, *args: str, timeout_s: float) -> str:
    command = [sys.executable, "-m", "sip_trunk.cli", "local", *args, "--run-dir", str(run_dir)]
    env = {**os.environ, "COLUMNS": "200"}
    try:
        proc = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise LocalModeFailed(f"local {args[0]} did not finish in {timeout_s:.0f} s", command=command) from exc
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise LocalModeFailed(f"local {args[0]} exited {proc.returncode}", command=command, output=output)
    return output


def _ready_summary(run_dir: Path) -> dict[str, Any]:
    """The summary of the last ``ready`` event of the controller (events.jsonl starts afresh on every up)."""
    path = run_dir / "events.jsonl"
    ready = None
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("kind") == "ready":
            ready = event
    if ready is None:
        raise LocalModeFailed(f"`local up` reported no ready event in {path}")
    return dict(ready["summary"])


def _down(run_dir: Path) -> str | None:
    try:
        _cli(run_dir, "down", timeout_s=300)
    except LocalModeFailed as exc:
        return f"{exc}: {exc.output[-500:]}"
    return None


def run(*, ups: int = 5, failovers: int = 10, run_dir: Path = RUN_DIR) -> dict[str, Any]:
    """Returns the ``local`` section: provision_s, failover_rto_s, the raw runs and how long each part took.
    Raises :class:`LocalModeFailed` when local mode itself fails (the deployment is taken down first)."""
    if os.geteuid() != 0:
        raise LocalModeFailed("local mode needs root (network namespaces, mounts, Asterisk)")
    run_dir.mkdir(parents=True, exist_ok=True)
    leftover = _down(run_dir)  # a previous bench run that was interrupted: None when the down went fine
    ups_out: list[dict[str, Any]] = []
    drill: dict[str, Any] = {}
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        for index in range(ups):
            if index:
                _cli(run_dir, "down", timeout_s=300)
            started = time.monotonic()
            _cli(run_dir, "up", timeout_s=UP_TIMEOUT_S)
            summary = _ready_summary(run_dir)
            prov = summary.get("provision", {})
            ups_out.append(
                {
                    "provision_s": float(summary["steps_s"]["provision"]),
                    "up_s": round(sum(summary["steps_s"].values()), 3),
                    "up_wall_s": round(time.monotonic() - started, 3),
                    "execution": prov.get("execution"),
                    "steps_s": prov.get("steps_s", {}),
                    "execution_total_s": prov.get("total_s"),
                    "waits_nominal_s": sum(prov.get("waits_nominal_s") or []),
                }
            )
            print(f"local: up {index + 1}/{ups}: provision {ups_out[-1]['provision_s']:.2f} s", flush=True)
        timings["ups_s"] = round(time.monotonic() - t0, 1)
        t1 = time.monotonic()
        out_file = run_dir / "bench-failover.json"
        out_file.unlink(missing_ok=True)
        _cli(run_dir, "drill", "failover", "--repeat", str(failovers), "--json-out", str(out_file),
             timeout_s=DRILL_TIMEOUT_S)  # fmt: skip
        drill = json.loads(out_file.read_text())
        timings["failover_drills_s"] = round(time.monotonic() - t1, 1)
    except BaseException:
        _down(run_dir)
        raise
    t2 = time.monotonic()
    problem = _down(run_dir)
    timings["down_s"] = round(time.monotonic() - t2, 1)
    return summarize(ups_out, drill, timings=timings, down_problem=problem, leftover=leftover)


def summarize(
    ups: list[dict[str, Any]],
    drill: dict[str, Any],
    *,
    timings: dict[str, float] | None = None,
    down_problem: str | None = None,
    leftover: str | None = None,
) -> dict[str, Any]:
    """The ``local`` section from the per-up records and the failover drill's JSON result."""
    step_names: list[str] = []
    for up in ups:
        step_names += [s for s in up["steps_s"] if s not in step_names]
    per_step = {
        name: round(statistics.median([u["steps_s"][name] for u in ups if name in u["steps_s"]]), 3)
        for name in step_names
    }
    runs = drill.get("runs", [])
    failover_runs = [
        {k: r.get(k) for k in ("rto_s", "detection_s", "movement_s", "execution_s", "execution")} for r in runs
    ]
    rto = stats([r["rto_s"] for r in runs])
    return {
        "provision_s": {**stats([u["provision_s"] for u in ups]), "per_step_median_s": per_step},
        "local_up_s": stats([u["up_s"] for u in ups]),
        "failover_rto_s": {
            **rto,
            "detection_median": round(statistics.median([r["detection_s"] for r in runs]), 3),
            "detection_p95": stats([r["detection_s"] for r in runs])["p95"],
            "movement_median": round(statistics.median([r["movement_s"] for r in runs]), 3),
            "movement_p95": stats([r["movement_s"] for r in runs])["p95"],
        },
        "watch_peer": {**drill.get("watch_peer", {}), "production": report.PRODUCTION_WATCH},
        "provision_runs": ups,
        "failover_runs": failover_runs,
        "timings_s": timings or {},
        "down_problem": down_problem,
        "down_before_problem": leftover,
        "method": METHOD,
    }
