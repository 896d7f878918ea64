"""The gateway's own capacity per core, and the delay and jitter it adds to media, each side by side with a fixed
reference in the same run.

**Gateway core** (``run_core``): Asterisk pinned to CPU 0, every generator (carrier, agent, echoes) to CPU 1, so
the generators never take the gateway's core. Per repetition, the product's rendered config and the hand-written
minimal relay (bench/reference/) are each **ramped** (bench/ramp.py: 50, 150, 250, ... until a level fails, then one
step half-way) to the highest level with 0 failed calls and < 1 % end-to-end loss: relayed calls per gateway core.
The fixed CPU calibration loop (bench/calibrate.py) runs on CPU 0 before and after. Reported: calls per core per
run and their spread, the ratio rendered / reference per run, CPU per call (at the highest level both configs
passed in that run) as a percent of the core, in calibration loops, and as a ratio to the reference; projected
calls for the recommended instance types.

**Media delay** (``run_media``): at 1, 100, 300 calls and the highest level found above, the same pinned topology
with the carrier's audio marked per frame and a few seconds of the steady window captured on loopback
(bench/media_delay.py): added delay p50/p99/p99.9 and added jitter per direction, for the rendered config, the
reference, the candidate (bench/variants.py: the rendered config at normal priority) and the no-gateway control
(the agent's echo)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.calibrate import measure as calibrate
from bench.calibrate import per_call_in_loops
from bench.capacity import ConfigVariant, LevelPlan, run_level
from bench.ramp import Ramp, ratios, spread
from bench.variants import CANDIDATE, REFERENCE, RENDERED

GATEWAY_CPUS = "0"
GENERATOR_CPUS = "1"
GOAL_CALLS_PER_CORE = 400
GOAL_DELAY_P99_MS = 1.0
GOAL_ADDED_JITTER_MS = 0.5
GOAL_DELAY_CALLS = 300
CAPTURE_S = 4.0
# the instance types docs/DEPLOYMENT.md and docs/COSTS.md recommend: vCPUs (one Graviton core each) and the
# share of each vCPU a burstable type sustains without spending surplus credits
INSTANCE_TYPES = {
    "t4g.micro": {"vcpus": 2, "baseline_share": 0.10},
    "t4g.small": {"vcpus": 2, "baseline_share": 0.20},
    "c7g.large": {"vcpus": 2, "baseline_share": 1.0},
}


def core_plan(calls: int, *, quick: bool) -> LevelPlan:
    """Calls ramped in at up to 50/s, held through a steady window (shorter than the capacity section's)."""
    rate = float(min(50, max(5, calls // 5)))
    steady = 5.0 if quick else 10.0
    ramp = calls / rate
    return LevelPlan(calls=calls, call_s=max(8.0, ramp + 3 + steady + 3), steady_s=steady, rate=rate)


def _ramp(quick: bool) -> Ramp:
    return Ramp(start=10, step=20, top=50) if quick else Ramp(start=50, step=100, top=850)


def ramp_config(
    root: Path, work: Path, variant: ConfigVariant, *, quick: bool, log: Callable[[str], None]
) -> dict[str, Any]:
    ramp = _ramp(quick)
    history: list[tuple[int, bool]] = []
    rows: list[dict[str, Any]] = []
    while (level := ramp.next_level(history)) is not None:
        row = run_level(
            root,
            work / f"{variant.name}-{level}",
            core_plan(level, quick=quick),
            variant,
            gateway_cpus=GATEWAY_CPUS,
            generator_cpus=GENERATOR_CPUS,
            log=log,
        )
        rows.append(row)
        history.append((level, bool(row.get("ok"))))
    return {"config": variant.name, "history": history, "calls_per_core": Ramp.found(history), "levels": rows}


def _cpu_at(rows: list[dict[str, Any]], calls: int) -> float | None:
    return next((r["asterisk_cpu_pct_per_call"] for r in rows if r["calls"] == calls and r.get("ok")), None)


def core_summary(reps: list[dict[str, Any]], cal: dict[str, Any]) -> dict[str, Any]:
    """Calls per core and CPU per call over the repetitions, with their ratios to the reference (pure)."""
    product = [rep[RENDERED.name]["calls_per_core"] for rep in reps]
    reference = [rep[REFERENCE.name]["calls_per_core"] for rep in reps]
    cpu_prod: list[float | None] = []
    cpu_ref: list[float | None] = []
    common_levels: list[int | None] = []
    for rep in reps:
        p_rows, r_rows = rep[RENDERED.name]["levels"], rep[REFERENCE.name]["levels"]
        both = sorted(
            {r["calls"] for r in p_rows if r.get("ok")} & {r["calls"] for r in r_rows if r.get("ok")}, reverse=True
        )
        level = both[0] if both else None
        common_levels.append(level)
        cpu_prod.append(_cpu_at(p_rows, level) if level else None)
        cpu_ref.append(_cpu_at(r_rows, level) if level else None)
    loop_cpu = cal.get("loop_cpu_s")
    calls = spread([float(x) for x in product])
    # the core's worth: one core / CPU per call at a passing level (the level found is bounded by the share of the
    # core Asterisk got beside other work; this is what a whole core would carry at that CPU per call)
    from_cpu = [round(100 / c) if c else None for c in cpu_prod]
    median_calls = calls["median"]
    return {
        "runs": len(reps),
        "calls_per_core": product,
        "calls_per_core_spread": calls,
        "reference_calls_per_core": reference,
        "ratio_to_reference": spread(ratios([float(x) for x in product], [float(x) for x in reference])),
        "cpu_level_calls": common_levels,
        "asterisk_cpu_pct_per_call": cpu_prod,
        "reference_cpu_pct_per_call": cpu_ref,
        "cpu_per_call_ratio_to_reference": spread(ratios(cpu_prod, cpu_ref)),
        "cpu_per_call_spread": spread([c for c in cpu_prod if c is not None]),
        "cpu_per_call_in_loops": [per_call_in_loops(c, loop_cpu) for c in cpu_prod],
        "calls_per_whole_core_from_cpu": from_cpu,
        "projected_calls": {
            name: {
                "calls": int(median_calls * t["vcpus"]) if median_calls is not None else None,
                "sustained_at_baseline": int(median_calls * t["vcpus"] * t["baseline_share"])
                if median_calls is not None
                else None,
                **t,
            }
            for name, t in INSTANCE_TYPES.items()
        },
        "goal_calls_per_core": GOAL_CALLS_PER_CORE,
    }


def run_core(
    root: Path, work: Path, *, quick: bool = False, repeats: int = 3, log: Callable[[str], None] = print
) -> dict[str, Any]:
    cal_before = calibrate(GATEWAY_CPUS)
    log(f"  calibration loop on CPU {GATEWAY_CPUS}: {cal_before}")
    reps: list[dict[str, Any]] = []
    for i in range(repeats):
        order = (REFERENCE, RENDERED) if i % 2 == 0 else (RENDERED, REFERENCE)  # neither always goes first
        rep: dict[str, Any] = {}
        for variant in order:
            log(f"  run {i + 1}/{repeats}: {variant.name}, ramped")
            rep[variant.name] = ramp_config(root, work / f"run{i + 1}", variant, quick=quick, log=log)
        reps.append(rep)
        log(
            f"  run {i + 1}: calls per core {rep[RENDERED.name]['calls_per_core']} "
            f"(reference {rep[REFERENCE.name]['calls_per_core']})"
        )
    # the candidate once, right after the last run: its before/after against that run's rendered ramp
    log(f"  candidate {CANDIDATE.name}, ramped once")
    candidate = ramp_config(root, work / "candidate", CANDIDATE, quick=quick, log=log)
    cal_after = calibrate(GATEWAY_CPUS)
    cal = min((cal_before, cal_after), key=lambda c: float(c["loop_cpu_s"] or 0))
    summary = core_summary(reps, cal)
    med = summary["calls_per_core_spread"]["median"]
    return {
        "method": (
            f"Asterisk pinned to CPU {GATEWAY_CPUS}, the generators to CPU {GENERATOR_CPUS} (taskset, every thread); "
            "each config ramped (50, 150, 250, ... to the first failing level, then once half-way) to the highest "
            "level with 0 failed calls and < 1 % end-to-end loss; the rendered config and the hand-written reference "
            "alternate within each run"
        ),
        "pinning": {"gateway": GATEWAY_CPUS, "generators": GENERATOR_CPUS},
        "calibration": {"before": cal_before, "after": cal_after},
        "calls_per_core": med,
        "ratio_to_reference": summary["ratio_to_reference"]["median"],
        "asterisk_cpu_pct_per_call": summary["cpu_per_call_spread"]["median"],
        "cpu_per_call_ratio_to_reference": summary["cpu_per_call_ratio_to_reference"]["median"],
        "summary": summary,
        "candidate": {
            "config": CANDIDATE.name,
            "description": CANDIDATE.description,
            "calls_per_core": candidate["calls_per_core"],
            "rendered_calls_per_core_last_run": reps[-1][RENDERED.name]["calls_per_core"] if reps else None,
            "history": candidate["history"],
            "levels": candidate["levels"],
        },
        "runs": reps,
    }


def _level_figures(row: dict[str, Any]) -> dict[str, Any]:
    md = row.get("media_delay") or {}
    return {
        "calls": row["calls"],
        "config": row["config"],
        "ok": row.get("ok"),
        "failed_calls": row.get("failed_calls"),
        "loss_e2e_pct": row.get("loss_pct", {}).get("end_to_end"),
        "asterisk_cpu_pct": row.get("cpu_pct", {}).get("asterisk"),
        "asterisk_scheduling": row.get("asterisk_scheduling"),
        "machine_cpu_pct": row.get("cpu_pct", {}).get("machine"),
        **md,
    }


def worst(level: dict[str, Any], key: str, stat: str) -> float | None:
    """The worse of the two directions through the gateway for one figure (``delay_ms``/``added_jitter_ms``)."""
    vals = [level.get(d, {}).get(key, {}).get(stat) for d in ("to_agent", "to_carrier")]
    nums = [v for v in vals if v is not None]
    return max(nums) if nums else None


def media_summary(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline figures at the goal's level (300 calls, else the highest measured) and ratios to the reference."""
    rendered = [lv for lv in levels if lv["config"] == RENDERED.name]
    reference = {lv["calls"]: lv for lv in levels if lv["config"] == REFERENCE.name}
    others = sorted({lv["config"] for lv in levels} - {RENDERED.name, REFERENCE.name})
    by_config = {name: {lv["calls"]: lv for lv in levels if lv["config"] == name} for name in others}
    at = next((lv for lv in rendered if lv["calls"] == GOAL_DELAY_CALLS), rendered[-1] if rendered else None)
    rows = []
    for lv in rendered:
        ref = reference.get(lv["calls"])
        p99, ref_p99 = worst(lv, "delay_ms", "p99"), worst(ref, "delay_ms", "p99") if ref else None
        rows.append(
            {
                "calls": lv["calls"],
                "delay_p99_ms": p99,
                "reference_delay_p99_ms": ref_p99,
                "delay_p99_ratio_to_reference": round(p99 / ref_p99, 3) if p99 is not None and ref_p99 else None,
                "control_echo_p99_ms": lv.get("control_echo", {}).get("delay_ms", {}).get("p99"),
                "added_jitter_median_ms": worst(lv, "added_jitter_ms", "median"),
                **{
                    f"{name}_delay_p99_ms": worst(rows_by_calls[lv["calls"]], "delay_ms", "p99")
                    for name, rows_by_calls in by_config.items()
                    if lv["calls"] in rows_by_calls
                },
            }
        )
    return {
        "at_calls": at["calls"] if at else None,
        "delay_p50_ms": worst(at, "delay_ms", "p50") if at else None,
        "delay_p99_ms": worst(at, "delay_ms", "p99") if at else None,
        "delay_p99_9_ms": worst(at, "delay_ms", "p99_9") if at else None,
        "added_jitter_ms": worst(at, "added_jitter_ms", "median") if at else None,
        "delay_p99_ratio_to_reference": next(
            (r["delay_p99_ratio_to_reference"] for r in rows if at and r["calls"] == at["calls"]), None
        ),
        "per_level": rows,
        "candidates_at_goal_level": {
            name: {
                "delay_p50_ms": worst(rows_by_calls[at["calls"]], "delay_ms", "p50"),
                "delay_p99_ms": worst(rows_by_calls[at["calls"]], "delay_ms", "p99"),
                "delay_p99_9_ms": worst(rows_by_calls[at["calls"]], "delay_ms", "p99_9"),
                "added_jitter_ms": worst(rows_by_calls[at["calls"]], "added_jitter_ms", "median"),
                "ok": rows_by_calls[at["calls"]].get("ok"),
            }
            for name, rows_by_calls in by_config.items()
            if at and at["calls"] in rows_by_calls
        },
    }


def run_media(
    root: Path,
    work: Path,
    *,
    quick: bool = False,
    highest: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    base = [1, 20] if quick else [1, 100, GOAL_DELAY_CALLS]
    if highest and highest not in base and not quick:
        base.append(highest)
    levels: list[dict[str, Any]] = []
    for calls in sorted(base):
        for variant in (RENDERED, REFERENCE, CANDIDATE):
            lp = core_plan(calls, quick=quick)
            lp.steady_s = max(lp.steady_s, CAPTURE_S + 1)
            lp.call_s = max(lp.call_s, lp.ramp_s + 3 + lp.steady_s + 3)
            row = run_level(
                root,
                work / f"media-{variant.name}-{calls}",
                lp,
                variant,
                gateway_cpus=GATEWAY_CPUS,
                generator_cpus=GENERATOR_CPUS,
                capture_s=CAPTURE_S,
                log=log,
            )
            fig = _level_figures(row)
            levels.append(fig)
            log(
                f"    delay {variant.name} {calls} calls: p50/p99/p99.9 to agent "
                f"{_triple(fig, 'to_agent')}, to carrier {_triple(fig, 'to_carrier')} ms; echo control "
                f"{_triple(fig, 'control_echo')} ms; added jitter {worst(fig, 'added_jitter_ms', 'median')} ms"
            )
    summary = media_summary(levels)
    return {
        "method": (
            "AF_PACKET capture on loopback, kernel timestamps (SO_TIMESTAMPNS) of each frame's outgoing copy, "
            "packets matched by a frame index in the payload, flows paired by votes; Asterisk on CPU 0, "
            f"generators and the capture on CPU 1; {CAPTURE_S:g} s captured per level"
        ),
        "goal_delay_p99_ms": GOAL_DELAY_P99_MS,
        "goal_added_jitter_ms": GOAL_ADDED_JITTER_MS,
        "goal_calls": GOAL_DELAY_CALLS,
        **summary,
        "levels": levels,
    }


def _triple(fig: dict[str, Any], direction: str) -> str:
    d = fig.get(direction, {}).get("delay_ms", {})
    return f"{d.get('p50')}/{d.get('p99')}/{d.get('p99_9')}"
