"""``python -m bench.run [--only capacity,reload,lambda] [--quick]``: run the benchmarks, write
bench/results/latest.json and the plots, and regenerate the results table of docs/PERFORMANCE.md.

Needs root (chroot, iptables) for capacity and reload. Prints numbers; exits 0 unless a benchmark itself
broke (a goal that is missed is a result, not an error)."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from bench.common import RESULTS, loadavg, machine, now_iso

SECTIONS = ("capacity", "reload", "lambda")
FULL_LEVELS = (50, 100, 200, 300, 400)
QUICK_LEVELS = (10, 30)


def asterisk_version(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["chroot", str(root), "/usr/sbin/asterisk", "-V"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip() or None


def _root() -> Path:
    from support.asterisk import DEFAULT_ROOT, ensure_root, root_problem

    root = ensure_root(DEFAULT_ROOT)
    problem = root_problem(root)
    if problem:
        raise RuntimeError(problem)
    return root


def run_capacity(root: Path, work: Path, *, quick: bool, levels: tuple[int, ...]) -> dict[str, Any]:
    from bench.capacity import plan, run_level
    from bench.variants import CANDIDATE, RENDERED

    out: dict[str, Any] = {"levels": [], "transcoding": [], "candidate": []}
    print("capacity: rendered config, G.711 mu-law end to end")
    for n in levels:
        out["levels"].append(run_level(root, work / f"rendered-{n}", plan(n, quick=quick), RENDERED))
    print(f"capacity: candidate config ({CANDIDATE.description})")
    for n in levels[-1:] if quick else tuple(x for x in levels if x >= 100):
        out["candidate"].append(run_level(root, work / f"candidate-{n}", plan(n, quick=quick), CANDIDATE))
    # maxload refuses calls whenever the machine's load average (generators included) passes 1.8: the
    # transcoding point is measured on the candidate so it measures transcoding, not the load gate
    print("capacity: one transcoding point (carrier mu-law, agent G.722), candidate config")
    for n in levels[:1] if quick else (100, 200):
        out["transcoding"].append(
            run_level(root, work / f"g722-{n}", plan(n, quick=quick), CANDIDATE, agent_codec="g722")
        )
    out["variants"] = {v.name: v.description for v in (RENDERED, CANDIDATE)}
    out["summary"] = summarize(out)
    return out


def summarize(cap: dict[str, Any]) -> dict[str, Any]:
    def best(rows: list[dict[str, Any]]) -> int | None:
        ok = [r["calls"] for r in rows if r.get("ok")]
        return max(ok) if ok else None

    per_call = [r["asterisk_cpu_pct_per_call"] for r in cap["levels"] if r.get("asterisk_cpu_pct_per_call")]
    return {
        "max_calls_ok_rendered": best(cap["levels"]),
        "max_calls_ok_candidate": best(cap["candidate"]),
        "max_calls_ok_g722": best(cap["transcoding"]),
        "asterisk_cpu_pct_per_call_max": max(per_call) if per_call else None,
        "saturates_first": saturation(cap["levels"]),
        "saturates_first_candidate": saturation(cap["candidate"]),
    }


def saturation(rows: list[dict[str, Any]]) -> str:
    """Which part degrades first: the first level with loss >= 1 % or a failed call, by hop."""
    for r in rows:
        loss = r.get("loss_pct", {})
        if r.get("ok"):
            continue
        hops = {k: v for k, v in loss.items() if k in ("gateway_forward", "agent_echo", "gateway_return") and v}
        worst = max(hops, key=lambda k: hops[k]) if hops else "none"
        cpu = r.get("cpu_pct", {})
        if r.get("log_maxload"):
            return (
                f"at {r['calls']} calls: {r.get('failed_calls')} calls refused by asterisk.conf maxload "
                f"(1-minute load average above the limit) while Asterisk used {cpu.get('asterisk')} % of one core"
            )
        return (
            f"at {r['calls']} calls: {r.get('failed_calls')} failed calls, worst hop {worst} "
            f"({hops.get(worst)} % loss); machine CPU {cpu.get('machine')} % of all cores, Asterisk "
            f"{cpu.get('asterisk')} % of one core, generators {cpu.get('carrier')} + {cpu.get('agent')} %"
        )
    return "nothing saturated at the levels run"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    ap.add_argument("--only", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="small levels and short calls (< 3 minutes)")
    ap.add_argument("--levels", default="", help="capacity levels, e.g. 50,100,200 (overrides the default)")
    ap.add_argument("--keep-work", action="store_true", help="keep the sipp/Asterisk working files")
    args = ap.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows under make/tee
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}")
    levels = tuple(int(x) for x in args.levels.split(",") if x) or (QUICK_LEVELS if args.quick else FULL_LEVELS)
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sip-trunk-bench-"))
    results: dict[str, Any] = {
        "date": now_iso(),
        "mode": "quick" if args.quick else "full",
        "sections": only,
        "loadavg_before": loadavg(),
        "provision_s": None,
        "failover_rto_s": None,
        "provision_and_failover_note": "measured by local mode",
    }
    broken: list[str] = []
    root: Path | None = None
    try:
        if {"capacity", "reload"} & set(only):
            root = _root()
        results["machine"] = machine(asterisk_version(root) if root else None)
        print(f"machine: {results['machine']}\nloadavg before: {results['loadavg_before']}")
        for section in only:
            t0 = time.monotonic()
            try:
                if section == "capacity":
                    assert root is not None
                    results["capacity"] = run_capacity(root, work / "capacity", quick=args.quick, levels=levels)
                elif section == "reload":
                    from bench.reload import run as run_reload

                    assert root is not None
                    print("reload under load")
                    results["reload"] = run_reload(
                        root, work / "reload", calls=10 if args.quick else 60, call_s=15 if args.quick else 40
                    )
                elif section == "lambda":
                    from bench.lambda_cost import run as run_lambda

                    print("lambda cost signals")
                    results["lambda"] = run_lambda(quick=args.quick)
            except Exception:
                broken.append(section)
                results[section] = {"error": traceback.format_exc()[-3000:]}
                print(f"{section}: BROKEN\n{traceback.format_exc()}", file=sys.stderr)
            results.setdefault("section_seconds", {})[section] = round(time.monotonic() - t0, 1)
    finally:
        results["loadavg_after"] = loadavg()
        results["run_seconds"] = round(time.monotonic() - started, 1)
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"working files kept in {work}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "latest.json" if not args.quick else "quick.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    from bench.report import write_report

    write_report(results, quick=args.quick)
    print(f"loadavg after: {results['loadavg_after']}; {results['run_seconds']} s; results in bench/results/{name}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
