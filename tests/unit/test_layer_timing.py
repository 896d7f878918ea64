"""The per-layer time summary counts each test once, under its layer, with setup and teardown included."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.unit


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["one-process", "xdist-workers"])
def test_summary_adds_setup_call_and_teardown_per_layer(pytester: pytest.Pytester, workers: list[str]) -> None:
    pytester.makeconftest(
        """
        import time
        import pytest

        @pytest.fixture
        def slow_setup():
            time.sleep(0.2)
            yield
        """
    )
    pytester.makepyfile(
        """
        import time
        import pytest

        @pytest.mark.integration
        def test_slow(slow_setup):
            time.sleep(0.1)

        @pytest.mark.unit
        def test_fast_one():
            pass

        @pytest.mark.unit
        def test_fast_two():
            pass
        """
    )
    result = pytester.runpytest(
        "-p", "support.layer_timing", "-m", "unit or integration", "-o", "markers=unit\nintegration", *workers
    )

    result.assert_outcomes(passed=3)
    rows = [line.split() for line in result.outlines]
    lines = {row[0]: row for row in rows if row[:1] in (["unit"], ["integration"])}
    assert lines["unit"][1] == "2"
    assert lines["integration"][1] == "1"
    assert float(lines["integration"][3]) >= 0.3
    assert float(lines["unit"][3]) < 0.3
