"""Reading call records back: --since, the days a listing reads, and the days a call id points at."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sip_trunk.callrecords import (
    MAX_DAYS,
    day_prefix,
    days_back,
    days_of_call,
    end_ms,
    find_call,
    parse_since,
    recent_calls,
    split_lines,
)

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


class Objects:
    """The bucket in memory; notes which day prefixes were listed."""

    def __init__(self, objects: dict[str, list[dict[str, object]]]) -> None:
        self.objects = {k: "".join(json.dumps(r) + "\n" for r in rs).encode() for k, rs in objects.items()}
        self.listed: list[str] = []

    def keys(self, bucket: str, prefix: str) -> list[str]:
        self.listed.append(prefix)
        return [k for k in self.objects if k.startswith(prefix)]

    def read(self, bucket: str, key: str) -> bytes:
        return self.objects[key]


def ended(day: str, hour: int, n: int, call_id: str | None = None) -> dict[str, object]:
    when = datetime.strptime(f"{day}{hour:02d}", "%Y%m%d%H").replace(tzinfo=UTC)
    return {"call_id": call_id or f"gw-{int(when.timestamp()) - 60}.{n}", "end_ms": int(when.timestamp() * 1000)}


def test_recent_calls_stop_after_the_day_that_fills_the_limit() -> None:
    now = datetime(2026, 12, 3, 12, tzinfo=UTC).timestamp()
    store = Objects({
        "calls/dt=2026-12-03/i-1-1.jsonl": [ended("20261203", 9, 1), ended("20261203", 11, 2)],
        "calls/dt=2026-12-02/i-1-2.jsonl": [ended("20261202", 23, 3)],
        "calls/dt=2026-12-02/i-2-3.jsonl": [ended("20261202", 8, 4)],
        "calls/dt=2026-12-01/i-1-4.jsonl": [ended("20261201", 8, 5)],
    })  # fmt: skip
    found = recent_calls(store, "b", since_s=now - 7 * 86400, now_s=now, limit=3)
    assert [r["call_id"] for r in found] == [ended("20261203", 11, 2)["call_id"], ended("20261203", 9, 1)["call_id"],
                                             ended("20261202", 23, 3)["call_id"]]  # fmt: skip
    assert store.listed == ["calls/dt=2026-12-03/", "calls/dt=2026-12-02/"]  # 2026-12-01 never read
    # the window cuts inside a day too
    assert len(recent_calls(store, "b", since_s=now - 2 * 3600, now_s=now, limit=50)) == 1


def test_find_call_reads_the_days_of_its_id_or_else_the_window() -> None:
    now = datetime(2026, 12, 5, 12, tzinfo=UTC).timestamp()
    record = ended("20261203", 0, 1)  # set up on 2026-12-02 at 23:59, ended after midnight
    odd = ended("20261204", 10, 2, call_id="carrier-side-id")
    store = Objects({"calls/dt=2026-12-03/i-1-1.jsonl": [record], "calls/dt=2026-12-04/i-1-2.jsonl": [odd]})
    assert find_call(store, "b", str(record["call_id"]), since_s=now - 86400, now_s=now) == [record]
    assert store.listed == ["calls/dt=2026-12-03/", "calls/dt=2026-12-02/"]
    store.listed.clear()
    assert find_call(store, "b", "carrier-side-id", since_s=now - 2 * 86400, now_s=now) == [odd]
    assert store.listed == ["calls/dt=2026-12-05/", "calls/dt=2026-12-04/", "calls/dt=2026-12-03/"]


def test_json_lines_keep_objects_and_set_aside_what_is_not_one() -> None:
    text = '{"call_id": "a", "end_ms": 5}\n\nnot json\n[1, 2]\n{"call_id": "b"}\n  \n{"call_id": "c", "end_ms": true}'
    records, bad = split_lines(text)
    assert [r["call_id"] for r in records] == ["a", "b", "c"]
    assert bad == ["not json", "[1, 2]"]
    assert [end_ms(r) for r in records] == [5, 0, 0]
    assert end_ms(records[1], default=7) == 7
