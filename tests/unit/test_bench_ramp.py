"""The pure parts of the side-by-side figures (bench/ramp.py, bench/gateway_core.py, bench/calibrate.py): levels are
found by ramping with one refinement, runs pair up into ratios against the reference, spreads are reported, and
the gateway-core summary takes CPU per call at the highest level both configs passed.

Negative controls: ``test_the_ramp_refines_once_after_the_first_failure`` fails with a ramp that stops at the
first failure (a single jump); ``test_found_ignores_a_pass_above_a_failure`` fails when a lucky pass above a failed
level counts; ``test_cpu_per_call_is_compared_at_a_level_both_passed`` fails when each config's CPU is taken at its
own highest level."""

from __future__ import annotations

from typing import Any

import pytest

from bench.calibrate import per_call_in_loops
from bench.gateway_core import core_summary, media_summary, worst
from bench.ramp import Ramp, ratios, spread

pytestmark = pytest.mark.unit


def drive(ramp: Ramp, capacity: int) -> list[tuple[int, bool]]:
    history: list[tuple[int, bool]] = []
    while (level := ramp.next_level(history)) is not None:
        history.append((level, level <= capacity))
    return history


def test_the_ramp_steps_up_while_levels_pass() -> None:
    assert [lvl for lvl, _ in drive(Ramp(100, 100, 500), 10_000)] == [100, 200, 300, 400, 500]


def test_the_ramp_refines_once_after_the_first_failure() -> None:
    history = drive(Ramp(100, 100, 800), 370)
    assert history == [(100, True), (200, True), (300, True), (400, False), (350, True)]
    assert Ramp.found(history) == 350


def test_the_refinement_failing_ends_the_ramp() -> None:
    history = drive(Ramp(100, 100, 800), 320)
    assert history[-2:] == [(400, False), (350, False)]
    assert Ramp.found(history) == 300


def test_nothing_passing_finds_zero() -> None:
    assert drive(Ramp(100, 100, 800), 50) == [(100, False)]
    assert Ramp.found([(100, False)]) == 0


def test_found_ignores_a_pass_above_a_failure() -> None:
    assert Ramp.found([(100, True), (200, False), (300, True)]) == 100


def test_a_ramp_without_refinement_stops_at_the_failure() -> None:
    assert drive(Ramp(100, 100, 800, refine=False), 250)[-1] == (300, False)


def test_ramp_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        Ramp(0, 100, 800).next_level([])


def test_spread_and_ratios() -> None:
    s = spread([300, 400, 350])
    assert s == {"runs": 3, "median": 350.0, "min": 300.0, "max": 400.0, "spread_pct": 28.6}
    assert ratios([300, None, 400], [200, 300, 0]) == [1.5]
    assert spread([])["median"] is None
    with pytest.raises(ValueError, match="pair"):
        ratios([1.0], [])


def test_calibration_units() -> None:
    assert per_call_in_loops(0.25, 0.2) == pytest.approx(0.0125)
    assert per_call_in_loops(None, 0.2) is None


def _level(calls: int, ok: bool, cpu: float) -> dict[str, Any]:
    return {"calls": calls, "ok": ok, "asterisk_cpu_pct_per_call": cpu}


def _rep(prod: list[dict[str, Any]], ref: list[dict[str, Any]], found: tuple[int, int]) -> dict[str, Any]:
    return {
        "rendered": {"levels": prod, "calls_per_core": found[0]},
        "reference": {"levels": ref, "calls_per_core": found[1]},
    }


def test_cpu_per_call_is_compared_at_a_level_both_passed() -> None:
    prod = [_level(100, True, 0.30), _level(200, True, 0.28), _level(300, False, 0.27)]
    ref = [_level(100, True, 0.20), _level(200, True, 0.19), _level(300, True, 0.18), _level(400, False, 0.2)]
    reps = [_rep(prod, ref, (200, 300))] * 3
    s = core_summary(reps, {"loop_cpu_s": 0.2})
    assert s["cpu_level_calls"] == [200, 200, 200]
    assert s["asterisk_cpu_pct_per_call"] == [0.28, 0.28, 0.28]
    assert s["cpu_per_call_ratio_to_reference"]["median"] == pytest.approx(0.28 / 0.19, abs=1e-4)
    assert s["ratio_to_reference"]["median"] == pytest.approx(200 / 300, abs=1e-4)
    assert s["calls_per_core_spread"]["spread_pct"] == 0.0
    assert s["projected_calls"]["t4g.small"]["calls"] == 400
    assert s["projected_calls"]["t4g.small"]["sustained_at_baseline"] == 80
    assert s["cpu_per_call_in_loops"][0] == pytest.approx(0.014)


def _media(calls: int, config: str, p99: tuple[float, float], jitter: float = 0.1) -> dict[str, Any]:
    return {
        "calls": calls,
        "config": config,
        "to_agent": {"delay_ms": {"p50": 0.1, "p99": p99[0], "p99_9": 2.0}, "added_jitter_ms": {"median": jitter}},
        "to_carrier": {"delay_ms": {"p50": 0.2, "p99": p99[1], "p99_9": 3.0}, "added_jitter_ms": {"median": 0.0}},
        "control_echo": {"delay_ms": {"p99": 0.5}},
    }


def test_media_headline_is_the_worse_direction_at_300_calls() -> None:
    levels = [
        _media(1, "rendered", (0.2, 0.3)),
        _media(300, "rendered", (1.5, 0.9), jitter=0.7),
        _media(300, "reference", (1.0, 0.8)),
        _media(400, "rendered", (9.0, 9.0)),
    ]
    s = media_summary(levels)
    assert s["at_calls"] == 300
    assert s["delay_p99_ms"] == 1.5
    assert s["delay_p99_9_ms"] == 3.0
    assert s["added_jitter_ms"] == 0.7
    assert s["delay_p99_ratio_to_reference"] == 1.5
    assert worst({}, "delay_ms", "p99") is None


def capacity_row(config: str, calls: int, cpu_per_call: float, failed: int = 0) -> dict[str, Any]:
    return {"config": config, "calls": calls, "asterisk_cpu_pct_per_call": cpu_per_call, "failed_calls": failed}


def test_records_cost_is_the_rendered_cpu_per_call_minus_records_off_at_levels_both_carried() -> None:
    from bench.run import records_cost

    cap = {
        "levels": [capacity_row("rendered", 100, 0.30), capacity_row("rendered", 200, 0.28),
                   capacity_row("rendered", 300, 0.27, failed=2)],
        "candidate": [capacity_row("records_off", 100, 0.26), capacity_row("records_off", 200, 0.27),
                      capacity_row("records_off", 300, 0.25), capacity_row("other", 100, 0.1)],
    }  # fmt: skip
    # a level with a failed call on either side says nothing; another candidate is not records_off
    assert records_cost(cap) == {"100": 0.04, "200": 0.01}
    assert records_cost({"levels": cap["levels"]}) == {}
