"""Reading call records back: --since, the days a listing reads, and the days a call id points at."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sip_trunk.callrecords import MAX_DAYS, day_prefix, days_back, days_of_call, parse_since

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 3, 0, 30, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("text", "seconds_back"), [("90m", 5400), ("2h", 7200), ("7d", 604800), ("45s", 45), (" 1 h ", 3600)]
)
def test_since_durations(text: str, seconds_back: int) -> None:
    assert parse_since(text, NOW) == NOW - seconds_back


def test_since_times_are_utc_unless_they_say_otherwise() -> None:
    assert parse_since("2026-12-02T22:00Z", NOW) == datetime(2026, 12, 2, 22, tzinfo=UTC).timestamp()
    assert parse_since("2026-12-02T22:00", NOW) == datetime(2026, 12, 2, 22, tzinfo=UTC).timestamp()
    assert parse_since("2026-12-02T23:00+01:00", NOW) == datetime(2026, 12, 2, 22, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="give a duration"):
        parse_since("yesterday", NOW)


def test_a_listing_reads_the_days_back_to_since_newest_first() -> None:
    assert days_back(NOW - 3600, NOW) == ["20261203", "20261202"]  # 00:30 minus an hour is yesterday
    assert days_back(NOW - 60, NOW) == ["20261203"]
    assert len(days_back(NOW - 400 * 86400, NOW)) == MAX_DAYS


def test_a_call_id_points_at_the_day_it_was_set_up_and_the_next() -> None:
    # Asterisk's UNIQUEID: [systemname-]epoch.sequence, taken when the call arrived
    epoch = int(datetime(2026, 12, 2, 23, 59, tzinfo=UTC).timestamp())
    assert days_of_call(f"gw-host-1-{epoch}.42") == ["20261203", "20261202"]
    assert days_of_call(f"{epoch}.7") == ["20261203", "20261202"]
    assert days_of_call("not-an-id") is None
    assert day_prefix("20261203") == "calls/dt=2026-12-03/"
    with pytest.raises(ValueError, match="not a day"):
        day_prefix("2026-12")
