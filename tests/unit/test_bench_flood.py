"""The pure parts of the flood benchmark (bench/flood.py): a level's pass/fail decision, sipp's achieved rate read
from its statistics rows, the ramp's summary per state, and the ban rules the bench inserts in place of fail2ban.

Negative controls: ``test_a_failed_legitimate_call_fails_the_level`` fails when a failed call is ignored as long as
the media kept flowing; ``test_the_achieved_rate_ignores_the_wait_for_the_last_answers`` fails when sipp's final
``CallRate(C)`` (which counts the tail after the flood) is taken as the rate; ``test_a_pass_above_a_failure_does_
not_count`` fails when the highest pass anywhere is reported; ``test_the_ban_is_the_products_banaction`` fails when
the jail's banaction changes and the bench's rules no longer are what it inserts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.flood import (
    BANACTION,
    DEFAULT_BLOCKTYPE,
    achieved_rate,
    ban_rules,
    blocktype,
    level_passed,
    limited_by,
    log_errors,
    state_summary,
    summarize,
    unban_rules,
)
from bench.run import DEFAULT_SECTIONS, NEEDS_ROOT, SECTIONS

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
JAIL_TEMPLATE = REPO / "layers" / "sip_trunk" / "src" / "sip_trunk" / "templates" / "fail2ban-jail.local.j2"

START = "2026-12-04\t20:18:04.324883\t1796415484.324883"


def _stat(rows: list[tuple[float, int]]) -> str:
    """A sipp ``-trace_stat`` file: (seconds since start, calls created) per row, CallRate(C) as sipp computes it."""
    lines = ["StartTime;CurrentTime;CallRate(C);TotalCallCreated;"]
    for t, created in rows:
        now = 1796415484.324883 + t
        lines.append(f"{START};2026-12-04\t20:18:0x.0\t{now:.6f};{created / t if t else 0:.3f};{created};")
    return "\n".join(lines) + "\n"


def _level(rate: int, *, failed: int = 0, loss: float | None = 0.0, achieved: float | None = None) -> dict[str, Any]:
    return {
        "offered_rate": rate,
        "achieved_rate": rate if achieved is None else achieved,
        "generator_saturated": achieved is not None and achieved < 0.9 * rate,
        "failed_calls": failed,
        "loss_pct": loss,
        "ok": level_passed(failed, loss),
    }


def test_a_level_passes_with_no_failed_call_and_little_loss() -> None:
    assert level_passed(0, 0.0)
    assert level_passed(0, 0.99)


def test_a_failed_legitimate_call_fails_the_level() -> None:
    assert not level_passed(1, 0.0)
    assert not level_passed(20, 0.0)


def test_loss_at_the_limit_or_unmeasured_fails_the_level() -> None:
    assert not level_passed(0, 1.0)
    assert not level_passed(0, 12.5)
    assert not level_passed(0, None)  # no carrier packets counted: nothing proves the calls kept their media
    assert not level_passed(None, 0.0)


def test_the_achieved_rate_is_sipps_while_it_created_calls() -> None:
    text = _stat([(0.0, 0), (1.0, 602), (2.0, 1200), (3.0, 1200), (3.01, 1200)])
    assert achieved_rate(text) == pytest.approx(602.0)


def test_the_achieved_rate_ignores_the_wait_for_the_last_answers() -> None:
    # 1200 calls created in 2 s, then 1.5 s waiting for the last 401s: sipp's final CallRate(C) says 343
    text = _stat([(0.0, 0), (1.01, 607), (2.7, 1200), (3.5, 1200)])
    assert achieved_rate(text) == pytest.approx(601.0, abs=0.1)


def test_the_achieved_rate_of_a_generator_that_saturated() -> None:
    text = _stat([(0.0, 0), (1.0, 300), (2.0, 600), (3.0, 900), (4.0, 1000)])
    assert achieved_rate(text) == pytest.approx(300.0)


def test_the_achieved_rate_when_every_call_was_created_in_the_first_period() -> None:
    assert achieved_rate(_stat([(0.0, 0), (0.5, 100), (0.6, 100)])) == pytest.approx(200.0)


def test_no_statistics_no_rate() -> None:
    assert achieved_rate("") is None
    assert achieved_rate("StartTime;CurrentTime;TotalCallCreated;\n") is None
    assert achieved_rate(_stat([(0.0, 0), (1.0, 0)])) == 0.0


def test_the_summary_takes_the_highest_pass_below_the_first_failure() -> None:
    levels = [_level(200), _level(600), _level(1000, failed=2), _level(800)]
    s = state_summary(levels)
    assert s["highest_passing_rate"] == 800
    assert s["highest_passing_achieved_rate"] == 800
    assert "first failure at 1000" in s["stopped"]
    assert "2 legitimate calls failed" in s["stopped"]


def test_a_pass_above_a_failure_does_not_count() -> None:
    levels = [_level(200), _level(600, loss=3.2), _level(1000)]
    s = state_summary(levels)
    assert s["highest_passing_rate"] == 200
    assert "RTP loss 3.2 %" in s["stopped"]


def test_the_summary_says_when_no_level_failed_and_when_the_generator_saturated() -> None:
    levels = [_level(200), _level(600), _level(1000, achieved=640.0)]
    s = state_summary(levels)
    assert s["highest_passing_rate"] == 1000
    assert "no level failed up to 1000" in s["stopped"]
    assert "the flood reached 640.0/s" in s["stopped"]


def test_none_passing_is_zero_and_both_states_are_reported() -> None:
    out = summarize({"unbanned": [_level(200, failed=1)], "banned": [_level(200), _level(600)]})
    assert out["highest_passing_rate"] == 0
    assert out["highest_passing_rate_banned"] == 600
    assert out["by_state"]["unbanned"]["highest_passing_achieved_rate"] is None


def test_the_ban_is_the_products_banaction() -> None:
    jail = JAIL_TEMPLATE.read_text()
    assert f"banaction = {BANACTION}\n" in jail
    # the bench's rules assume the banaction's defaults: TCP, every port, the stock blocktype
    for setting in ("protocol", "port", "blocktype", "chain"):
        assert f"\n{setting} =" not in jail, setting


def test_the_ban_rules_reject_the_stranger_on_every_tcp_port_and_are_removed() -> None:
    rules = ban_rules("127.0.1.7", "f2b-x", DEFAULT_BLOCKTYPE)
    assert ["-I", "INPUT", "-p", "tcp", "-j", "f2b-x"] in rules
    ban = rules[-1]
    assert ban == ["-I", "f2b-x", "1", "-s", "127.0.1.7", "-j", "REJECT", "--reject-with", "icmp-port-unreachable"]
    assert ["-A", "f2b-x", "-j", "RETURN"] in rules
    assert not any("--dport" in rule for rule in rules)
    assert unban_rules("f2b-x")[0] == ["-D", "INPUT", "-p", "tcp", "-j", "f2b-x"]
    assert unban_rules("f2b-x")[-1] == ["-X", "f2b-x"]


def test_the_blocktype_is_read_from_fail2bans_action() -> None:
    conf = "[Init]\n# blocktype = DROP\nblocktype = REJECT --reject-with icmp-port-unreachable\n"
    assert blocktype(conf) == "REJECT --reject-with icmp-port-unreachable"
    assert blocktype("[Init]\nblocktype = DROP\n") == "DROP"
    assert blocktype("[Init]\n") == DEFAULT_BLOCKTYPE


def test_the_section_is_registered_and_runs_with_make_bench() -> None:
    assert "flood" in SECTIONS
    assert "flood" in DEFAULT_SECTIONS
    assert "flood" in NEEDS_ROOT


def test_a_flood_short_of_its_offer_names_what_held_it_back() -> None:
    assert limited_by(1000, 950.0, 3.0) is None
    assert "the generator" in str(limited_by(1000, 600.0, 95.0))
    assert "the gateway" in str(limited_by(1000, 600.0, 3.4))


def test_the_gateways_errors_are_counted_and_the_full_io_queue_named() -> None:
    log = (
        "[2026-12-04 20:21:04] ERROR[30019] pjproject: ../src/pj/ioqueue_epoll.c Assert failed: "
        "!pj_list_empty(&ioqueue->free_list)\n"
        "[2026-12-04 20:21:04] ERROR[30019] pjproject: ../src/pj/ioqueue_epoll.c Assert failed: "
        "!pj_list_empty(&ioqueue->free_list)\n"
        "[2026-12-04 20:20:57] WARNING[29976] res_musiconhold.c: No music on hold classes configured\n"
        "[2026-12-04 20:20:58] ERROR[30014] res_pjsip.c: Error 120032 'Broken pipe'\n"
    )
    out = log_errors(log)
    assert (out["errors"], out["ioqueue_full"]) == (3, 2)
    assert len(out["sample"]) == 2
    assert log_errors("")["errors"] == 0
