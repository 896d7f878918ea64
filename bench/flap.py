"""Twenty flapping-primary drills on one local deployment (ADR-45), through the CLI as root.

``sip-trunk local up`` then ``sip-trunk local drill flap --repeat 20`` (crash, reboot, partition, blip, cycled: each
on whichever host is the primary then), then ``sip-trunk local down``, in a run directory of its own. Prints and
returns, per scenario, the runs, the outcomes of the Failover executions, the moves and how long SIP on the Elastic
IP went unanswered, and the split-brain checks' violations (none, or the section records a failure of the product).
The checks themselves run in ``make test`` (tests/e2e/test_local_flap.py, one run of each deterministic scenario and
the planted defects; tests/unit/test_split_brain.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.local import DRILL_TIMEOUT_S, UP_TIMEOUT_S, LocalModeFailed, _cli, _down, stats

RUN_DIR = Path("/run/aws-sip-trunk/bench-flap")
FULL_RUNS = 20
QUICK_RUNS = 4


def summarize(drill: dict[str, Any]) -> dict[str, Any]:
    runs = drill.get("runs", [])
    by: dict[str, dict[str, Any]] = {}
    for r in runs:
        row = by.setdefault(r["scenario"], {"runs": 0, "outcomes": {}, "moves": 0, "unanswered_s": []})
        row["runs"] += 1
        row["moves"] += len(r.get("moves", []))
        row["unanswered_s"].append(r.get("unanswered_s", 0.0))
        for outcome in (r.get("executions") or {}).values():
            row["outcomes"][outcome] = row["outcomes"].get(outcome, 0) + 1
        if not r.get("executions"):
            row["outcomes"]["no execution"] = row["outcomes"].get("no execution", 0) + 1
    for row in by.values():
        row["unanswered_s"] = stats(row["unanswered_s"])
    return {
        "runs": len(runs),
        "violations": drill.get("violations", []),
        "samples": drill.get("samples"),
        "moves": drill.get("moves"),
        "sampler_errors": drill.get("sampler_errors", []),
        "by_scenario": by,
        "per_run": [
            {k: r.get(k) for k in ("run", "scenario", "executions", "moves", "unanswered_s", "samples", "boot")}
            for r in runs
        ],
        "seconds": drill.get("seconds"),
    }


def run(*, runs: int = FULL_RUNS, run_dir: Path = RUN_DIR) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    leftover = _down(run_dir)
    t0 = time.monotonic()
    try:
        _cli(run_dir, "up", timeout_s=UP_TIMEOUT_S)
        up_s = round(time.monotonic() - t0, 1)
        out_file = run_dir / "bench-flap.json"
        out_file.unlink(missing_ok=True)
        t1 = time.monotonic()
        _cli(run_dir, "drill", "flap", "--repeat", str(runs), "--json-out", str(out_file), timeout_s=DRILL_TIMEOUT_S)
        drills_s = round(time.monotonic() - t1, 1)
        drill = json.loads(out_file.read_text())
    except BaseException:
        _down(run_dir)
        raise
    problem = _down(run_dir)
    out = summarize(drill)
    out.update(up_s=up_s, drills_s=drills_s, down_problem=problem, down_before_problem=leftover)
    for scenario, row in out["by_scenario"].items():
        print(
            f"  {scenario}: {row['runs']} runs, outcomes {row['outcomes']}, moves {row['moves']}, SIP unanswered "
            f"median {row['unanswered_s']['median']} s (max {row['unanswered_s']['max']})"
        )
    print(f"  violations: {len(out['violations'])}; {out['samples']} samples; {drills_s} s for {out['runs']} drills")
    if out["violations"]:
        raise LocalModeFailed(f"split brain: {out['violations'][:3]}", output=json.dumps(out["violations"]))
    return out
