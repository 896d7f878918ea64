"""``python -m bench.run [--only capacity,reload,post_dial,flood,soak,lambda,local,flap,image] [--quick]``: run the
benchmarks, merge their results into bench/results/latest.json (sections not run keep their last numbers), write the
plots, and regenerate the results of docs/PERFORMANCE.md.

Needs root (chroot, iptables, network namespaces). Prints numbers. Exit status: 0 when every section that ran
produced its numbers or recorded a failure of the product (a missed goal, or a local-mode command that fails,
is a result); 1 when a benchmark itself broke, i.e. the benchmark code raised (a missing harness or tool, an
exception while measuring, output it could not read): that section then holds ``{"error": ...}``."""

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

from bench.common import RESULTS, CpuWindow, loadavg, machine, now_iso

SECTIONS = (
    "capacity",
    "gateway_core",
    "media_delay",
    "reload",
    "post_dial",
    "flood",
    "soak",
    "lambda",
    "local",
    "flap",
    "image",
)
# image (the host install path's Asterisk compile, `make image-check`) takes 30+ minutes uncached: only on request
# soak runs 22 minutes (--quick: 40 s)
DEFAULT_SECTIONS = (
    "capacity", "gateway_core", "media_delay", "reload", "post_dial", "flood", "soak", "lambda", "local", "flap",
)  # fmt: skip
NEEDS_ROOT = {"capacity", "gateway_core", "media_delay", "reload", "post_dial", "flood", "soak"}
FULL_LEVELS = (50, 100, 200, 300, 400)
QUICK_LEVELS = (10, 30)
GOAL_LOSS = 1.0
BACKGROUND_SAMPLE_S = 3.0


def asterisk_version(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["chroot", str(root), "/usr/sbin/asterisk", "-V"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.strip() or None


def _root() -> Path:
    from sip_trunk_local.asterisk_runner import DEFAULT_ROOT, ensure_root, root_problem

    from bench.common import REPO

    root = ensure_root(DEFAULT_ROOT, script=REPO / "scripts" / "asterisk-root.sh")
    problem = root_problem(root)
    if problem:
        raise RuntimeError(problem)
    return root


def _default_root() -> Path:
    """The cached Asterisk root the harness and local mode's hosts run from (not built here)."""
    from sip_trunk_local.asterisk_runner import DEFAULT_ROOT

    return Path(DEFAULT_ROOT)


def run_capacity(root: Path, work: Path, *, quick: bool, levels: tuple[int, ...]) -> dict[str, Any]:
    from bench.capacity import plan, run_level
    from bench.variants import CANDIDATES, RENDERED

    out: dict[str, Any] = {"product_config": RENDERED.name, "levels": [], "transcoding": [], "candidate": []}
    print("capacity: the product's config as rendered, G.711 mu-law end to end")
    for n in levels:
        out["levels"].append(run_level(root, work / f"rendered-{n}", plan(n, quick=quick), RENDERED))
    for cand in CANDIDATES:
        print(f"capacity: candidate config {cand.name} ({cand.description})")
        for n in levels[-1:] if quick else tuple(x for x in levels if x >= 100):
            out["candidate"].append(run_level(root, work / f"{cand.name}-{n}", plan(n, quick=quick), cand))
    print("capacity: one transcoding point (carrier mu-law, agent G.722), the product's config")
    for n in levels[:1] if quick else (100, 200):
        out["transcoding"].append(
            run_level(root, work / f"g722-{n}", plan(n, quick=quick), RENDERED, agent_codec="g722")
        )
    out["variants"] = {v.name: v.description for v in (RENDERED, *CANDIDATES)}
    out["summary"] = summarize(out)
    return out


def product_rows(cap: dict[str, Any], codec: str = "ulaw") -> list[dict[str, Any]]:
    """The levels measured on the product's config (``product_config``), one codec on the agent leg."""
    product = cap.get("product_config", "rendered")
    rows = [*cap.get("levels", []), *cap.get("candidate", []), *cap.get("transcoding", [])]
    return sorted(
        (r for r in rows if r.get("config") == product and r.get("agent_codec") == codec), key=lambda r: r["calls"]
    )


def headline(cap: dict[str, Any]) -> dict[str, Any]:
    """The capacity figures held against the goals, from the product's config with G.711 end to end:
    the highest level with 0 failed calls and < 1 % end-to-end loss (0 when none), the end-to-end loss at that
    level, and the worst Asterisk CPU per call over the levels whose calls all came up."""
    rows = product_rows(cap)
    ok = [r for r in rows if r.get("ok")]
    best = max(ok, key=lambda r: r["calls"]) if ok else None
    all_up = [r["asterisk_cpu_pct_per_call"] for r in rows if r.get("failed_calls") == 0]
    return {
        "max_concurrent_calls": best["calls"] if best else 0,
        "rtp_loss_pct": best.get("loss_pct", {}).get("end_to_end") if best else None,
        "asterisk_cpu_pct_per_call": max(all_up) if all_up else None,
        "highest_level_run": max((r["calls"] for r in rows), default=None),
        "headline_basis": (
            f"config {cap.get('product_config', 'rendered')!r}, G.711 mu-law end to end: highest level with 0 failed "
            f"and < {GOAL_LOSS} % end-to-end loss, its end-to-end loss, worst Asterisk CPU per call over the levels "
            "whose calls all came up"
        ),
    }


def summarize(cap: dict[str, Any]) -> dict[str, Any]:
    def best(rows: list[dict[str, Any]]) -> int | None:
        ok = [r["calls"] for r in rows if r.get("ok")]
        return max(ok) if ok else None

    g711 = product_rows(cap)
    return {
        "max_calls_ok_rendered": best(cap["levels"]),
        "max_calls_ok_candidate": best(cap.get("candidate", [])),
        "max_calls_ok_g722": best(cap.get("transcoding", [])),
        "saturates_first": saturation(cap["levels"]),
        "saturates_first_candidate": saturation(cap.get("candidate", [])) if cap.get("candidate") else None,
        "saturates_first_product": saturation(g711),
        "records_cost_cpu_pct_per_call": records_cost(cap),
    }


def records_cost(cap: dict[str, Any]) -> dict[str, float]:
    """Asterisk CPU per call of the rendered config (call records on) minus ``records_off``'s, per level both
    carried with every call up (G.711): what writing the records costs, measured side by side in one run."""
    off = {r["calls"]: r for r in cap.get("candidate", []) if r.get("config") == "records_off"}
    cost = {}
    for r in cap.get("levels", []):
        other = off.get(r["calls"])
        if other is None or r.get("failed_calls") != 0 or other.get("failed_calls") != 0:
            continue
        on_cpu, off_cpu = r.get("asterisk_cpu_pct_per_call"), other.get("asterisk_cpu_pct_per_call")
        if isinstance(on_cpu, int | float) and isinstance(off_cpu, int | float):
            cost[str(r["calls"])] = round(on_cpu - off_cpu, 4)
    return cost


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


def background() -> dict[str, Any]:
    """The machine's load just before a section starts: 1/5/15-minute load average and the share of all cores
    busy over a few seconds (other work on the machine, nothing of the benchmark's)."""
    window = CpuWindow(pids={}).start()
    time.sleep(BACKGROUND_SAMPLE_S)
    cpu = window.stop()
    return {"loadavg": loadavg(), "cpu_pct": cpu["machine"], "sample_s": cpu["seconds"]}


def load_previous(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_section(
    section: str,
    *,
    root: Path | None,
    work: Path,
    quick: bool,
    levels: tuple[int, ...],
    results: dict[str, Any] | None = None,
    repeats: int = 3,
) -> Any:
    if section == "gateway_core":
        from bench.gateway_core import run_core

        assert root is not None
        print(f"gateway core: Asterisk pinned to one core, generators to the other; {repeats} runs, ramped")
        return run_core(root, work / "gateway_core", quick=quick, repeats=repeats)
    if section == "media_delay":
        from bench.gateway_core import run_media

        assert root is not None
        core = (results or {}).get("gateway_core")
        highest = core.get("calls_per_core") if isinstance(core, dict) else None
        print("media delay and jitter added per packet, per direction (loopback capture, payload-marked audio)")
        return run_media(root, work / "media_delay", quick=quick, highest=int(highest) if highest else None)
    if section == "capacity":
        assert root is not None
        return run_capacity(root, work / "capacity", quick=quick, levels=levels)
    if section == "reload":
        from bench.reload import run as run_reload

        assert root is not None
        print("reload under load")
        return run_reload(root, work / "reload", calls=10 if quick else 60, call_s=15 if quick else 40)
    if section == "post_dial":
        from bench.post_dial import run as run_post_dial

        assert root is not None
        print("post-dial delay: carrier INVITE → agent (digest challenge) → 200 back, calls per second ramped")
        return run_post_dial(root, work / "post_dial", quick=quick)
    if section == "flood":
        from bench.flood import FULL, QUICK
        from bench.flood import run as run_flood

        assert root is not None
        fp = QUICK if quick else FULL
        print(
            f"flood: {fp.calls} calls up, unauthenticated INVITEs from a stranger {fp.flood_s:g} s per level, rate "
            f"ramped from {fp.ramp.start}/s by {fp.ramp.step} to {fp.ramp.top}, without and with the ban"
        )
        return run_flood(root, work / "flood", quick=quick)
    if section == "soak":
        from bench.soak import FULL, QUICK
        from bench.soak import run as run_soak

        assert root is not None
        soak_plan = QUICK if quick else FULL
        print(
            f"soak: {soak_plan.calls} calls at {soak_plan.rate_cps:g}/s over {soak_plan.duration_s:g} s, core reload "
            f"every {soak_plan.reload_every_s:g} s, a config apply every {soak_plan.apply_every_s:g} s"
        )
        return run_soak(root, work / "soak", soak_plan)
    if section == "lambda":
        from bench.lambda_cost import run as run_lambda

        print("lambda cost signals")
        return run_lambda(quick=quick)
    if section == "local":
        from bench.local import run as run_local

        ups, failovers = (2, 2) if quick else (5, 10)
        print(f"local mode: {ups} x `local up` (provisioning), `local drill failover --repeat {failovers}`")
        return run_local(ups=ups, failovers=failovers)
    if section == "flap":
        from bench.flap import FULL_RUNS, QUICK_RUNS
        from bench.flap import run as run_flap

        runs = QUICK_RUNS if quick else FULL_RUNS
        print(f"flap: `local up`, `local drill flap --repeat {runs}` (crash, reboot, partition, blip), `local down`")
        return run_flap(runs=runs)
    if section == "image":
        from bench.image_build import run as run_image

        print("image: install-host.sh's Asterisk build (scripts/image-check.sh --build-only; cached when unchanged)")
        return run_image()
    raise ValueError(section)


def promote(results: dict[str, Any]) -> None:
    """The figures held against the goals, at the top of the document and of their sections."""
    cap = results.get("capacity")
    if isinstance(cap, dict) and "levels" in cap:
        cap.update(headline(cap))
        cap["summary"] = summarize(cap)
    core = results.get("gateway_core")
    if isinstance(core, dict) and core.get("runs"):
        from bench.gateway_core import core_summary

        cal = core.get("calibration", {})
        best: dict[str, Any] = min(
            (c for c in (cal.get("before"), cal.get("after")) if c), key=lambda c: c["loop_cpu_s"], default={}
        )
        core["summary"] = core_summary(core["runs"], best)
    media = results.get("media_delay")
    if isinstance(media, dict) and media.get("levels"):
        from bench.gateway_core import media_summary

        media.update(media_summary(media["levels"]))
    local = results.get("local")
    if isinstance(local, dict) and "provision_s" in local:
        results["provision_s"] = dict(local["provision_s"])
        results["failover_rto_s"] = dict(local["failover_rto_s"])
    else:
        results["provision_s"] = results["failover_rto_s"] = None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    ap.add_argument("--only", default=",".join(DEFAULT_SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    ap.add_argument("--quick", action="store_true", help="small levels, short calls, few local runs (smoke run)")
    ap.add_argument("--levels", default="", help="capacity levels, e.g. 50,100,200 (overrides the default)")
    ap.add_argument("--repeats", type=int, default=3, help="gateway_core: runs of the side-by-side ramp (>= 3)")
    ap.add_argument("--keep-work", action="store_true", help="keep the sipp/Asterisk working files")
    ap.add_argument("--fresh", action="store_true", help="do not keep the sections not run from the last results")
    ap.add_argument("--report-only", action="store_true", help="regenerate the figures, plots and doc from latest.json")
    args = ap.parse_args(argv)
    if args.report_only:
        from bench.report import write_report

        previous = load_previous(RESULTS / "latest.json")
        promote(previous)
        (RESULTS / "latest.json").write_text(json.dumps(previous, indent=2, sort_keys=False) + "\n")
        write_report(previous, quick=False)
        return 0
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress shows under make/tee
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"unknown sections {unknown}")
    levels = tuple(int(x) for x in args.levels.split(",") if x) or (QUICK_LEVELS if args.quick else FULL_LEVELS)
    name = "latest.json" if not args.quick else "quick.json"
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="sip-trunk-bench-"))
    previous = {} if args.fresh else load_previous(RESULTS / name)
    results: dict[str, Any] = {k: v for k, v in previous.items() if k in (*SECTIONS, "section_runs")}
    results.setdefault("section_runs", {})
    results.update(date=now_iso(), mode="quick" if args.quick else "full", sections=only, loadavg_before=loadavg())
    broken: list[str] = []
    root: Path | None = None
    try:
        try:
            if NEEDS_ROOT & set(only):
                root = _root()
        except Exception:
            # without the Asterisk root none of these can run: they broke; the others still run
            for section in NEEDS_ROOT & set(only):
                broken.append(section)
                results[section] = {"error": traceback.format_exc()[-3000:]}
            print(f"Asterisk root: BROKEN\n{traceback.format_exc()}", file=sys.stderr)
        results["machine"] = machine(asterisk_version(root or _default_root()))
        print(f"machine: {results['machine']}\nloadavg before: {results['loadavg_before']}")
        for section in only:
            if section in broken:
                continue
            bg = background()
            print(f"{section}: background load {bg}")
            window = CpuWindow(pids={}).start()
            t0 = time.monotonic()
            run_info: dict[str, Any] = {"date": now_iso(), "mode": results["mode"], "background": bg}
            try:
                results[section] = run_section(
                    section,
                    root=root,
                    work=work,
                    quick=args.quick,
                    levels=levels,
                    results=results,
                    repeats=1 if args.quick else args.repeats,
                )
            except Exception as exc:
                from bench.local import LocalModeFailed

                results[section] = {"error": traceback.format_exc()[-3000:]}
                if isinstance(exc, LocalModeFailed):
                    # the product's local mode failed: a result, recorded; not a broken benchmark
                    results[section].update(failed=str(exc), command=exc.command, output=exc.output)
                    print(f"{section}: local mode FAILED: {exc}\n{exc.output[-1500:]}", file=sys.stderr)
                else:
                    broken.append(section)
                    print(f"{section}: BROKEN\n{traceback.format_exc()}", file=sys.stderr)
            during = window.stop()
            run_info.update(
                seconds=round(time.monotonic() - t0, 1),
                machine_cpu_pct_during=during["machine"],
                loadavg_after=loadavg(),
                machine=results["machine"],
            )
            results["section_runs"][section] = run_info
    finally:
        results["loadavg_after"] = loadavg()
        results["run_seconds"] = round(time.monotonic() - started, 1)
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"working files kept in {work}")
    promote(results)
    ordered = {k: results[k] for k in (
        "date", "mode", "sections", "machine", "loadavg_before", "loadavg_after", "run_seconds",
        "provision_s", "failover_rto_s", "section_runs", *SECTIONS) if k in results}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(ordered, indent=2, sort_keys=False) + "\n")
    from bench.report import write_report

    write_report(ordered, quick=args.quick)
    print(f"loadavg after: {results['loadavg_after']}; {results['run_seconds']} s; results in bench/results/{name}")
    if broken:
        print(f"broken: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
