"""The soak benchmark's verdict (bench/soak.py): the growth per thousand calls is a least-squares slope over the
samples past the warm-up, and "flat" fails on a leaking series. Hand-made samples, nothing run."""

from __future__ import annotations

from typing import Any

import pytest

from bench.soak import GOAL_RSS_MIB_PER_1000, growth_per_1000, slope, verdict

pytestmark = pytest.mark.unit


def series(per_call_mib: float, *, fds_per_call: float = 0.0, noise: float = 0.3) -> list[dict[str, Any]]:
    """30 samples, 1,000 calls apart, RSS from 80 MiB growing ``per_call_mib`` per call, with alternating noise."""
    rows = []
    for i in range(30):
        calls = 1000 * i
        jitter = noise if i % 2 else -noise
        rows.append({"calls_processed": calls, "rss_mib": 80 + per_call_mib * calls + jitter,
                     "fds": 40 + fds_per_call * calls + (3 if i % 3 == 0 else 0)})  # fmt: skip
    return rows


def test_the_slope_is_least_squares() -> None:
    assert slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert slope([0, 1], [0, 1]) is None  # too few points to fit
    assert slope([5, 5, 5], [1, 2, 3]) is None  # no spread in calls


def test_a_flat_run_is_flat_despite_the_noise_of_calls_in_flight() -> None:
    rows = series(0.0)
    growth = {"rss_mib": growth_per_1000(rows, "rss_mib", 0), "fds": growth_per_1000(rows, "fds", 0)}
    assert abs(growth["rss_mib"] or 0) < 0.02
    result = verdict(growth, {"fds": 30}, {"fds": 30, "channels": 0})
    assert result == {"flat": True, "problems": []}


def test_a_leak_of_a_few_hundred_bytes_per_call_is_not_flat() -> None:
    """Negative control: 300 bytes per call is 0.29 MiB per thousand calls, over the goal."""
    rows = series(300 / 1024 / 1024)
    growth = {"rss_mib": growth_per_1000(rows, "rss_mib", 0), "fds": growth_per_1000(rows, "fds", 0)}
    assert growth["rss_mib"] == pytest.approx(0.286, abs=0.01)
    result = verdict(growth, {"fds": 30}, {"fds": 30, "channels": 0})
    assert result["flat"] is False
    assert result["problems"] == [f"RSS grows {growth['rss_mib']} MiB per 1000 calls (goal ≤ {GOAL_RSS_MIB_PER_1000})"]


def test_leaked_descriptors_and_channels_left_are_not_flat() -> None:
    rows = series(0.0, fds_per_call=0.002)
    growth = {"rss_mib": growth_per_1000(rows, "rss_mib", 0), "fds": growth_per_1000(rows, "fds", 0)}
    result = verdict(growth, {"fds": 30}, {"fds": 90, "channels": 2})
    assert result["problems"] == [
        f"descriptors grow {growth['fds']} per 1000 calls (goal ≤ 0.5)",
        "idle descriptors 30 before the run, 90 after it drained",
        "2 channels left after the run drained",
    ]


def test_the_warm_up_is_left_out_of_the_fit() -> None:
    rows = series(0.0)
    for row in rows[:3]:  # pools filling during the first calls
        row["rss_mib"] -= 20
    assert (growth_per_1000(rows, "rss_mib", 0) or 0) > GOAL_RSS_MIB_PER_1000
    assert abs(growth_per_1000(rows, "rss_mib", 3000) or 0) < 0.02


def test_calls_in_flight_are_load_not_growth_and_a_leak_still_shows_with_them() -> None:
    """A machine that slows down holds more calls up at once (each with its memory): the raw slope rises with them,
    the slope with the channels held fixed does not. Negative control: the same series plus 300 bytes per call
    done is still reported as growth with the channels held fixed."""
    rows = []
    for i in range(30):
        channels = 20 + 3 * i + (7 if i % 2 else 0)  # piling up, with noise
        rows.append({"calls_processed": 1000 * i, "channels": channels, "rss_mib": 60 + 0.5 * channels})
    assert (growth_per_1000(rows, "rss_mib", 0) or 0) > 1.0
    assert abs(growth_per_1000(rows, "rss_mib", 0, given_channels=True) or 0) < 1e-6

    leaking = [{**r, "rss_mib": r["rss_mib"] + 300 / 1024 / 1024 * r["calls_processed"]} for r in rows]
    assert growth_per_1000(leaking, "rss_mib", 0, given_channels=True) == pytest.approx(0.286, abs=0.01)
