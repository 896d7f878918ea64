"""The committed benchmark results: bench/results/latest.json carries every headline figure as a number, with the
machine and the date, and docs/PERFORMANCE.md (generated from it) shows the same numbers. Checks the artefacts,
never times anything."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LATEST = REPO / "bench" / "results" / "latest.json"
DOC = REPO / "docs" / "PERFORMANCE.md"
BEGIN, END = "<!-- bench:begin", "<!-- bench:end -->"

FIGURES = (
    "capacity.max_concurrent_calls",
    "capacity.rtp_loss_pct",
    "capacity.asterisk_cpu_pct_per_call",
    "reload.dropped_calls",
    "reload.apply_s",
    "post_dial.invite_hop_p99_ms",
    "post_dial.answer_hop_p99_ms",
    "gateway_core.calls_per_core",
    "gateway_core.ratio_to_reference",
    "gateway_core.asterisk_cpu_pct_per_call",
    "gateway_core.cpu_per_call_ratio_to_reference",
    "media_delay.delay_p99_ms",
    "media_delay.delay_p99_ratio_to_reference",
    "media_delay.added_jitter_ms",
    "provision_s.median",
    "failover_rto_s.median",
    "failover_rto_s.p95",
)


def _get(doc: dict[str, Any], path: str) -> Any:
    value: Any = doc
    for part in path.split("."):
        assert isinstance(value, dict), f"{path}: {part!r} is not under a mapping"
        assert part in value, f"{path}: no {part!r}"
        value = value[part]
    return value


@pytest.fixture(scope="module")
def latest() -> dict[str, Any]:
    return json.loads(LATEST.read_text())


@pytest.fixture(scope="module")
def generated() -> str:
    text = DOC.read_text()
    assert BEGIN in text, "docs/PERFORMANCE.md has no generated results section"
    assert END in text, "docs/PERFORMANCE.md's generated results section is not closed"
    return text[text.index(BEGIN) : text.index(END)]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.parametrize("path", FIGURES)
def test_latest_has_the_figure_as_a_number(latest: dict[str, Any], path: str) -> None:
    value = _get(latest, path)
    assert _is_number(value), f"{path} = {value!r}"


def test_latest_has_the_machine_and_the_date(latest: dict[str, Any]) -> None:
    machine = latest["machine"]
    assert isinstance(machine.get("cpu_model"), str)
    assert machine["cpu_model"]
    assert _is_number(machine.get("cores"))
    assert machine["cores"] >= 1
    assert _is_number(machine.get("memory_gib"))
    assert machine.get("kernel")
    assert machine.get("os")
    assert dt.datetime.fromisoformat(latest["date"]).tzinfo is not None
    for section in ("capacity", "reload", "local"):
        run = latest["section_runs"][section]
        assert dt.datetime.fromisoformat(run["date"]).tzinfo is not None, section


def test_side_by_side_figures_come_from_enough_runs(latest: dict[str, Any]) -> None:
    """The ratios that survive a change of machine: at least 3 runs of the rendered config and the reference."""
    summary = latest["gateway_core"]["summary"]
    assert summary["runs"] >= 3
    assert len(summary["calls_per_core"]) == len(summary["reference_calls_per_core"]) == summary["runs"]
    assert _is_number(summary["calls_per_core_spread"]["spread_pct"])
    assert {lv["calls"] for lv in latest["media_delay"]["levels"]} >= {1, 100, 300}
    for section in ("gateway_core", "media_delay"):
        assert latest["section_runs"][section]["background"]["loadavg"], section


def test_local_figures_come_from_enough_runs(latest: dict[str, Any]) -> None:
    assert latest["provision_s"]["runs"] >= 5
    assert latest["failover_rto_s"]["runs"] >= 10
    assert _is_number(latest["failover_rto_s"]["detection_median"])
    assert _is_number(latest["failover_rto_s"]["movement_median"])
    assert latest["provision_s"]["per_step_median_s"]
    assert latest["provision_s"] == latest["local"]["provision_s"]
    assert latest["failover_rto_s"] == latest["local"]["failover_rto_s"]


@pytest.mark.parametrize("path", FIGURES)
def test_the_doc_shows_the_same_number(latest: dict[str, Any], generated: str, path: str) -> None:
    row = re.search(r"^\| `" + re.escape(path) + r"` \|[^|]*\| \*\*([^*]+)\*\* \|", generated, re.MULTILINE)
    assert row, f"docs/PERFORMANCE.md's results table has no row for {path}"
    assert float(row.group(1)) == pytest.approx(_get(latest, path), abs=0), f"{path}: doc {row.group(1)}"


def test_the_doc_names_the_run_and_the_machine(latest: dict[str, Any], generated: str) -> None:
    assert f"Written {latest['date']}" in generated
    machine = latest["machine"]
    assert f"**{machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gib']} GiB**" in generated
    for section, run in latest["section_runs"].items():
        assert f"| {section} | {run['date']} |" in generated, section


IMAGE_FIGURES = (
    "image.compile_s",
    "image.install_host_s",
    "image.peak_pss_mib",
    "image.peak_rss_mib",
    "image.time.max_process_rss_mib",
    "image.load1.mean",
    "image.load1.max",
)


@pytest.mark.parametrize("path", IMAGE_FIGURES)
def test_the_image_build_figures_are_numbers(latest: dict[str, Any], path: str) -> None:
    assert _is_number(_get(latest, path)), path


def test_the_image_build_was_measured_on_the_build_it_describes(latest: dict[str, Any]) -> None:
    image = latest["image"]
    assert re.fullmatch(r"22\.\d+\.\d+", image["asterisk_version"])
    assert image["nice"] == 19  # the machine is shared: the load average during the build is part of the figure
    assert image["cores"] >= 1
    assert image["busy_samples"] > 0  # the sampler saw the build's processes
    assert image["compile_s"] <= image["install_host_s"]
    assert image["steps_s"]["build-asterisk"] == image["compile_s"]
    assert dt.datetime.fromisoformat(latest["section_runs"]["image"]["date"]).tzinfo is not None
