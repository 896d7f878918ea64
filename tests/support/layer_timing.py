"""Time spent per test layer, printed at the end of a run.

`make test` runs every layer in one pytest session; this says where its minutes go (setup, call and teardown
of each test, session fixtures included in the first test that needs them), so a slow layer is visible in
every CI log without a second run. With pytest-xdist the seconds are summed over the workers, so they add up
to more than the run's wall time.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

LAYERS = ("unit", "integration", "statemachine", "asterisk", "e2e", "image", "aws")


class LayerTiming:
    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.tests: defaultdict[str, set[str]] = defaultdict(set)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # The report's keywords hold the item's markers, also when a pytest-xdist worker ran the test and
        # this process never collected it.
        layer = next((name for name in LAYERS if name in report.keywords), "unmarked")
        self.seconds[layer] += report.duration
        self.tests[layer].add(report.nodeid)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.seconds:
            return
        terminalreporter.section("time per layer")
        total = sum(self.seconds.values())
        for layer in sorted(self.seconds, key=lambda name: -self.seconds[name]):
            seconds = self.seconds[layer]
            share = 100 * seconds / total if total else 0.0
            terminalreporter.write_line(
                f"{layer:<13} {len(self.tests[layer]):>5} tests {seconds:>8.1f} s  {share:>3.0f} %"
            )
        terminalreporter.write_line(f"{'all':<13} {sum(map(len, self.tests.values())):>5} tests {total:>8.1f} s")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LayerTiming(), "layer-timing")
