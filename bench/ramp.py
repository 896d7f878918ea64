"""How a level is found and how a figure is made to survive a change of machine (pure functions).

A level is found by **ramping**: start low, step up while a level passes, and at the first failure try once more
half-way between the last pass and the failure (one refinement); the level found is the highest that passed.

A figure that must survive a change of machine is measured **side by side** with a fixed reference in the same
run (the same minute, the same background load) and reported as a ratio; repeated runs give its spread."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Ramp:
    """Levels ``start, start + step, ...`` up to ``top``; after the first failure one refinement half-way."""

    start: int
    step: int
    top: int
    refine: bool = True

    def next_level(self, history: Sequence[tuple[int, bool]]) -> int | None:
        """The next level to run given ``(level, passed)`` so far, or ``None`` when the ramp is over."""
        if self.start <= 0 or self.step <= 0:
            raise ValueError("start and step must be positive")
        if not history:
            return min(self.start, self.top)
        passed = [lvl for lvl, ok in history if ok]
        failed = [lvl for lvl, ok in history if not ok]
        best = max(passed, default=0)
        if not failed:
            last = history[-1][0]
            nxt = last + self.step
            return nxt if nxt <= self.top else None
        lowest_fail = min(failed)
        if not self.refine or len(failed) > 1 or history[-1][1]:
            return None
        middle = (best + lowest_fail) // 2
        if middle <= best or middle >= lowest_fail or best == 0:
            return None
        # round to a multiple of 10 calls, still strictly between the pass and the failure
        return max(best + 1, min(lowest_fail - 1, round(middle / 10) * 10))

    @staticmethod
    def found(history: Sequence[tuple[int, bool]]) -> int:
        """The highest passing level below the first failure (0 when none passed)."""
        failed = [lvl for lvl, ok in history if not ok]
        ceiling = min(failed, default=None)
        passed = [lvl for lvl, ok in history if ok and (ceiling is None or lvl < ceiling)]
        return max(passed, default=0)


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Median, min, max and the relative spread ``(max - min) / median`` (percent) of repeated runs."""
    vals = [float(v) for v in values]
    if not vals:
        return {"runs": 0, "median": None, "min": None, "max": None, "spread_pct": None}
    med = statistics.median(vals)
    return {
        "runs": len(vals),
        "median": round(med, 4),
        "min": round(min(vals), 4),
        "max": round(max(vals), 4),
        "spread_pct": round(100 * (max(vals) - min(vals)) / med, 1) if med else None,
    }


def ratios(measured: Sequence[float | None], reference: Sequence[float | None]) -> list[float]:
    """Per-run ratio measured / reference, the runs paired in order (a run missing either side is skipped)."""
    if len(measured) != len(reference):
        raise ValueError("the measured and the reference runs must pair up")
    return [m / r for m, r in zip(measured, reference, strict=True) if m is not None and r]
