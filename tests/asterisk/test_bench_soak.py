"""The soak benchmark's short path (bench/soak.py with a 20 s plan) on the real Asterisk 22: calls go through the
product's rendered gateway while `core reload` and config applies by the host agent's code run, and every figure
the long run reports is produced. The long run (22 minutes) is `python -m bench.run --only soak`, not a test."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.soak import SoakPlan, run

pytestmark = pytest.mark.asterisk


def test_the_short_soak_carries_calls_through_reloads_and_applies_and_reports_its_growth(
    asterisk_root: Path, tmp_path: Path
) -> None:
    plan = SoakPlan(duration_s=20, rate_cps=10, hold_ms=500, reload_every_s=4, apply_every_s=6, sample_s=1)

    result = run(asterisk_root, tmp_path / "soak", plan, log=lambda _: None)

    assert result["failed"] == 0, result["events"]
    assert result["successful"] == plan.calls
    assert result["calls_processed"] >= plan.calls  # Asterisk counted them (each carrier call is one)
    assert result["reloads"] >= 2
    assert result["applies"] >= 2
    applies = [e for e in result["events"] if e["kind"] == "apply"]
    assert all(e["changed"] for e in applies), applies
    assert len({e["version"] for e in applies}) == len(applies)  # a new version each time
    assert len(result["samples"]) >= 15
    assert {"rss_mib", "fds", "threads", "cpu_pct", "channels", "calls_processed"} <= set(result["samples"][-1])
    assert max(s["channels"] for s in result["samples"]) > 0  # sampled while calls were up
    assert all(isinstance(v, float) for v in result["growth_per_1000_calls"].values()), result["growth_per_1000_calls"]
    assert result["idle_after"]["channels"] == 0
    assert isinstance(result["flat"], bool)
