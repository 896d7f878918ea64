"""The call record's log event is valid EMF and carries the media verdict as a metric by route and stack."""

from __future__ import annotations

from typing import Any

import pytest
from sip_trunk.agent import calls
from support.emf import metrics_of

pytestmark = pytest.mark.unit


def record(*, caller_rx: int, callee_rx: int, talk_ms: int = 12_000, route: str = "agent") -> dict[str, Any]:
    def leg(rx: int, tx: int) -> dict[str, Any]:
        return {"rx": {"packets": rx, "lost": 0, "jitter_s": 0.001, "mes": 90.0},
                "tx": {"packets": tx, "lost": 0, "jitter_s": 0.001, "mes": 90.0}}  # fmt: skip

    return {
        "v": 1, "call_id": "gw-1.1", "disposition": "ANSWER", "route": route, "pdd_ms": 40,
        "answer_ms": 1_796_303_919_000, "end_ms": 1_796_303_919_000 + talk_ms,
        "caller_leg": leg(caller_rx, callee_rx), "callee_leg": leg(callee_rx, caller_rx),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("caller_rx", "callee_rx", "media", "problem"),
    [(600, 600, "ok", 0.0), (600, 0, "one_way_in", 1.0), (0, 600, "one_way_out", 1.0), (0, 0, "silent", 1.0)],
)
def test_the_event_is_emf_with_the_media_metric(caller_rx: int, callee_rx: int, media: str, problem: float) -> None:
    # Given an answered 12 s call with these packet counts
    message = calls.emf_event(record(caller_rx=caller_rx, callee_rx=callee_rx), stack="st", timestamp_ms=1)
    # Then CloudWatch would extract MediaProblem per route and per stack, and the event names the verdict
    points = metrics_of(message)
    assert points[(calls.NAMESPACE, (("Stack", "st"), ("Route", "agent")), "MediaProblem")] == problem
    assert points[(calls.NAMESPACE, (("Stack", "st"),), "MediaProblem")] == problem
    assert points[(calls.NAMESPACE, (("Stack", "st"), ("Route", "agent")), "Calls")] == 1.0
    # only MediaProblem is rolled up per stack (each metric and dimension set is a billed custom metric)
    assert {name for (_, dims, name) in points if dims == (("Stack", "st"),)} == {"MediaProblem"}
    assert '"media":"' + media + '"' in message


def test_a_call_too_short_to_judge_gives_no_media_sample() -> None:
    message = calls.emf_event(record(caller_rx=0, callee_rx=0, talk_ms=1500), stack="st", timestamp_ms=1)
    points = metrics_of(message)
    assert not any(name == "MediaProblem" for (_, _, name) in points)
    assert points[(calls.NAMESPACE, (("Stack", "st"), ("Route", "agent")), "Answered")] == 1.0


def test_the_validator_refuses_what_cloudwatch_would_not_extract() -> None:
    good = calls.emf_event(record(caller_rx=600, callee_rx=600), stack="st", timestamp_ms=1)
    metrics_of(good)
    with pytest.raises(Exception, match="dimension Route"):
        metrics_of(good.replace('"Route":"agent"', '"Route":7'))
    with pytest.raises(Exception, match="is not of type 'integer'"):
        metrics_of(good.replace('"Timestamp":1', '"Timestamp":"1"'))


def test_the_alarm_watches_a_metric_the_events_carry() -> None:
    from support.deploy import load_template

    alarm = load_template()["Resources"]["MediaProblemAlarm"]["Properties"]
    message = calls.emf_event(record(caller_rx=600, callee_rx=0), stack="st", timestamp_ms=1)
    # the alarm's namespace, metric and dimension set are ones CloudWatch extracts from a one-way call's event
    dims = tuple((d["Name"], "st") for d in alarm["Dimensions"])
    assert alarm["Dimensions"] == [{"Name": "Stack", "Value": {"Ref": "AWS::StackName"}}]
    assert metrics_of(message)[(alarm["Namespace"], dims, alarm["MetricName"])] == 1.0
    assert alarm["Statistic"] == "Sum"
    assert alarm["AlarmActions"] == [{"Ref": "NotificationTopic"}]
