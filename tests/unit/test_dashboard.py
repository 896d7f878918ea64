"""The dashboard's call widgets chart metrics the call records' EMF events actually carry."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from sip_trunk.agent import calls
from support.deploy import load_template

pytestmark = pytest.mark.unit

SEARCH = re.compile(r"SEARCH\('\{([^}]*)\} (.*?)', '([^']+)', (\d+)\)")


def dashboard() -> dict[str, Any]:
    body = load_template()["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    # CloudFormation's substitution, with stand-in values (every ${…} in the body is a parameter or an attribute)
    text = re.sub(r"\$\{(\w+)\.Arn\}", r"\1", body)  # an alarm's ARN -> its logical id
    text = re.sub(r"\$\{[^}!]+\}", "x", text)
    document: dict[str, Any] = json.loads(text)
    return document


def call_searches() -> dict[str, tuple[list[str], str]]:
    """metric name -> (the SEARCH's dimension schema, its statistic), for every search over the calls namespace."""
    found = {}
    for widget in dashboard()["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            for item in row:
                if isinstance(item, dict) and "expression" in item:
                    match = SEARCH.search(item["expression"])
                    assert match is not None, item
                    namespace, *schema = match[1].split(",")
                    if namespace == calls.NAMESPACE:
                        metric = re.search(r'MetricName="(\w+)"', match[2])
                        assert metric is not None
                        found[metric[1]] = (schema, match[3])
    return found


def test_the_call_widgets_chart_what_the_records_emit_per_route() -> None:
    searches = call_searches()
    # answer rate, volume and each quality figure, per route
    assert set(searches) == {"Answered", "Calls", "MediaProblem", "Loss", "MES", "PostDialDelay", "Jitter"}
    event = json.loads(calls.emf_event(
        {"disposition": "ANSWER", "route": "agent", "pdd_ms": 800, "answer_ms": 0, "end_ms": 60_000,
         "caller_leg": {"rx": {"packets": 3000, "lost": 3, "jitter_s": 0.002, "mes": 90},
                        "tx": {"packets": 3000, "lost": 0, "jitter_s": 0.001, "mes": 91}},
         "callee_leg": {"rx": {"packets": 3000, "lost": 0, "jitter_s": 0.001, "mes": 89},
                        "tx": {"packets": 3000, "lost": 0, "jitter_s": 0.001, "mes": 92}}},
        stack="s", timestamp_ms=0))  # fmt: skip
    emitted = {
        (m["Name"], tuple(sorted(dims)))
        for directive in event["_aws"]["CloudWatchMetrics"]
        for dims in directive["Dimensions"]
        for m in directive["Metrics"]
    }
    for name, (schema, _stat) in searches.items():
        # a SEARCH schema matches only metrics with exactly these dimensions: a set the events carry this metric in
        assert "Route" in schema
        assert (name, tuple(sorted(schema))) in emitted, (name, schema)
    # the answer and media rates are the Average of a 0/1 metric
    assert searches["Answered"][1] == searches["MediaProblem"][1] == "Average"


def test_the_one_way_audio_alarm_is_on_the_dashboard() -> None:
    alarms = next(w for w in dashboard()["widgets"] if w["type"] == "alarm")["properties"]["alarms"]
    resources = load_template()["Resources"]
    assert resources["MediaProblemAlarm"]["Type"] == "AWS::CloudWatch::Alarm"
    assert "MediaProblemAlarm" in alarms
    assert set(alarms) <= {k for k, v in resources.items() if v["Type"] == "AWS::CloudWatch::Alarm"}
