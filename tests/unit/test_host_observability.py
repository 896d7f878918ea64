"""The CloudWatch agent's metrics and logs land exactly where template.yaml's alarms and metric filters look."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CW_CONFIG = REPO / "layers/sip_trunk/src/sip_trunk/agent/host_files/cloudwatch-agent.json"
STACK = "mystack"


def cfn_load(path: Path) -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        key = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
        if isinstance(node, yaml.ScalarNode):
            value: Any = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        return {key: value}

    Loader.add_multi_constructor("!", tag)
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass
    return document


def resolve(value: Any) -> Any:
    """Plain strings, ``{"Ref": "AWS::StackName"}`` and ``{"Fn::Sub": "...${AWS::StackName}..."}`` as text."""
    if isinstance(value, dict) and value.get("Ref") == "AWS::StackName":
        return STACK
    if isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
        return value["Fn::Sub"].replace("${AWS::StackName}", STACK)
    return value


def rendered_config() -> dict[str, Any]:
    from sip_trunk.agent.bootstrap import cloudwatch_agent_config

    config: dict[str, Any] = json.loads(cloudwatch_agent_config(STACK))
    return config


def template() -> dict[str, Any]:
    return cfn_load(REPO / "template.yaml")


def published_metrics(config: dict[str, Any]) -> set[tuple[str, str, frozenset[tuple[str, str]]]]:
    """(namespace, metric, dimensions) the agent publishes as a Stack-only series (the aggregation rollup)."""
    metrics = config["metrics"]
    assert "append_dimensions" not in metrics, "no global dimensions: they would be added to every series"
    rollups = [set(d) for d in metrics.get("aggregation_dimensions", [])]
    out = set()
    for section in metrics["metrics_collected"].values():
        dims = section.get("append_dimensions", {})
        for name in section["measurement"]:
            for rollup in rollups:
                out.add((metrics["namespace"], name, frozenset((k, v) for k, v in dims.items() if k in rollup)))
    return out


def test_cloudwatch_agent_publishes_what_the_host_alarms_watch() -> None:
    # Given the agent config as bootstrap renders it, and the template's alarms on AwsSipTrunk/Host
    config = rendered_config()
    alarms = [
        r["Properties"]
        for r in template()["Resources"].values()
        if r["Type"] == "AWS::CloudWatch::Alarm" and r["Properties"].get("Namespace") == "AwsSipTrunk/Host"
    ]
    assert {a["MetricName"] for a in alarms} == {"mem_used_percent", "disk_used_percent"}

    # Then every alarm's (namespace, metric, dimensions) is a series the agent writes
    published = published_metrics(config)
    for alarm in alarms:
        dims = frozenset((d["Name"], resolve(d["Value"])) for d in alarm["Dimensions"])
        assert (alarm["Namespace"], alarm["MetricName"], dims) in published, (alarm, published)
    # and Stack is the only dimension, disk is measured on / only, and the host name is not a dimension
    assert config["agent"]["omit_hostname"] is True
    for section in config["metrics"]["metrics_collected"].values():
        assert section["append_dimensions"] == {"Stack": STACK}
    assert config["metrics"]["metrics_collected"]["disk"]["resources"] == ["/"]
    assert config["metrics"]["aggregation_dimensions"] == [["Stack"]]


def test_dashboard_reads_the_same_series() -> None:
    body = (REPO / "template.yaml").read_text()
    for metric in ("mem_used_percent", "disk_used_percent"):
        assert f'["AwsSipTrunk/Host", "{metric}", "Stack", "${{AWS::StackName}}"]' in body


def test_asterisk_logs_go_to_the_log_group_the_metric_filters_read() -> None:
    # Given the log group and the metric filters in the template
    resources = template()["Resources"]
    group = resolve(resources["AsteriskLogGroup"]["Properties"]["LogGroupName"])
    filters = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::Logs::MetricFilter"]
    assert filters
    assert all(f["LogGroupName"] == {"Ref": "AsteriskLogGroup"} for f in filters)

    # Then messages and security logs (what the filters match) are shipped there
    collected = rendered_config()["logs"]["logs_collected"]["files"]["collect_list"]
    shipped = {entry["file_path"]: entry["log_group_name"] for entry in collected}
    assert shipped["/var/log/asterisk/messages.log"] == group == f"/aws-sip-trunk/{STACK}/asterisk"
    assert shipped["/var/log/asterisk/security.log"] == group
    # and the host stack is handed the same log group (its role may write only there)
    text = json.dumps(resources["HostParametersParameter"]["Properties"]["Value"])
    assert '\\"AsteriskLogGroup\\": \\"${AsteriskLogGroup}\\"' in text


def test_the_shipped_config_is_valid_json_with_a_stack_placeholder() -> None:
    raw = CW_CONFIG.read_text()
    assert "__STACK__" in raw
    json.loads(raw)
    from sip_trunk.agent.bootstrap import cloudwatch_agent_config

    with pytest.raises(ValueError, match="unsafe"):
        cloudwatch_agent_config('x"; rm -rf /')
