"""The EventBridge rules of template.yaml match the real event shapes in tests/events, and what they pass
to the state machines is what the first states and their handlers expect.

The matcher implements the subset of EventBridge content filtering the rules use (AWS: "Content filtering
in Amazon EventBridge event patterns"): a field's list matches when any entry matches; an entry is an exact
value, `{"prefix": s}`, `{"anything-but": v | [v, ...]}` or `{"exists": bool}`; nested objects must match
recursively; an event field that is a list matches when any element matches.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.decode import decode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"
STACK = "trunk"
STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/trunk/5f7c2a40-e6f3-11f0-9d2a-0a1b2c3d4e5f"
_MISSING = object()


def entry_matches(entry: Any, value: Any) -> bool:
    if isinstance(entry, dict):
        (op, arg), = entry.items()  # fmt: skip
        if op == "prefix":
            return isinstance(value, str) and value.startswith(arg)
        if op == "anything-but":
            return value is not _MISSING and value not in (arg if isinstance(arg, list) else [arg])
        if op == "exists":
            return (value is not _MISSING) == arg
        raise AssertionError(f"pattern operator {op} not implemented by the test matcher")
    return value is not _MISSING and entry == value


def matches(pattern: dict[str, Any], event: dict[str, Any]) -> bool:
    for key, wanted in pattern.items():
        value = event.get(key, _MISSING) if isinstance(event, dict) else _MISSING
        if isinstance(wanted, dict):
            if not isinstance(value, dict) or not matches(wanted, value):
                return False
            continue
        values = value if isinstance(value, list) else [value]
        if not any(entry_matches(entry, v) for entry in wanted for v in values):
            return False
    return True


def resolve(node: Any) -> Any:
    """The template's intrinsics with this test's stack."""
    if isinstance(node, list):
        return [resolve(v) for v in node]
    if not isinstance(node, dict):
        return node
    if node.keys() == {"Ref"}:
        return {"AWS::StackName": STACK, "AWS::StackId": STACK_ID}[node["Ref"]]
    if node.keys() == {"Fn::Sub"}:
        return re.sub(r"\$\{AWS::StackName\}", STACK, node["Fn::Sub"])
    return {k: resolve(v) for k, v in node.items()}


def template() -> dict[str, Any]:
    parsed, matches_ = decode(str(ROOT / "template.yaml"))
    assert not matches_
    return json.loads(json.dumps(parsed))


def rule(name: str) -> dict[str, Any]:
    return template()["Resources"][name]["Properties"]


def event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def variant(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    node[last] = value
    return out


# --- the matcher itself --------------------------------------------------------------------------------


def test_matcher_follows_eventbridge_semantics() -> None:
    assert matches({"a": ["x", "y"]}, {"a": "y"})
    assert not matches({"a": ["x"]}, {"a": "X"})
    assert not matches({"a": ["x"]}, {})
    assert matches({"a": [{"prefix": "ab"}]}, {"a": "abc"})
    assert not matches({"a": [{"prefix": "ab"}]}, {"a": "xabc"})
    assert matches({"a": [{"anything-but": ["x"]}]}, {"a": "y"})
    assert not matches({"a": [{"anything-but": "x"}]}, {"a": "x"})
    assert not matches({"a": [{"anything-but": "x"}]}, {})
    assert matches({"a": {"b": ["1"]}}, {"a": {"b": "1", "c": 2}})
    assert matches({"a": ["x"]}, {"a": ["w", "x"]})


# --- host-down alarm → Failover ----------------------------------------------------------------------


def failover_pattern() -> dict[str, Any]:
    return resolve(rule("HostDownToFailoverRule")["EventPattern"])


def test_host_down_alarm_matches_the_failover_rule() -> None:
    pattern = failover_pattern()
    alarm = event("host_down_alarm_state_change.json")
    probe_alarm = resolve(template()["Resources"]["SipProbeAlarm"]["Properties"]["AlarmName"])
    assert alarm["detail"]["alarmName"] == probe_alarm, "the fixture is the template's SIP probe alarm"
    assert matches(pattern, alarm)
    assert matches(pattern, variant(alarm, "detail.alarmName", f"{STACK}-host-down-primary-status"))


def test_other_alarm_events_do_not_start_failover() -> None:
    pattern = failover_pattern()
    alarm = event("host_down_alarm_state_change.json")
    assert not matches(pattern, variant(alarm, "detail.state.value", "OK")), "recovery must not fail over"
    assert not matches(pattern, variant(alarm, "detail.state.value", "INSUFFICIENT_DATA"))
    assert not matches(pattern, variant(alarm, "detail.alarmName", f"other-{STACK}-host-down-x"))
    assert not matches(pattern, variant(alarm, "detail.alarmName", f"{STACK}-host-memory"))
    # An alarm outside the host-down family (alarm_state_change.json) is not a reason to move the address.
    assert not matches(pattern, event("alarm_state_change.json"))


def test_failover_rule_passes_the_alarm_event_to_the_first_state() -> None:
    from sip_trunk.events import failover_trigger
    from sip_trunk.workflows.common import StepInput

    target = rule("HostDownToFailoverRule")["Targets"][0]
    assert not {"Input", "InputPath", "InputTransformer"} & set(target), "the whole event is the execution input"
    alarm = event("host_down_alarm_state_change.json")
    task = first_task_input(ROOT / "statemachines" / "failover.asl.yaml", alarm)
    StepInput.model_validate(task)
    trigger = failover_trigger(task["trigger"])
    assert trigger.source == "alarm"
    assert trigger.alarm_name == alarm["detail"]["alarmName"]
    assert trigger.reason.startswith("Threshold Crossed")


def test_health_check_payload_is_a_failover_trigger_too() -> None:
    from sip_trunk.events import failover_trigger

    task = first_task_input(
        ROOT / "statemachines" / "failover.asl.yaml", {"source": "health_check", "reason": "3 failed"}
    )
    assert failover_trigger(task["trigger"]).source == "health_check"


# --- stack status → Provision --------------------------------------------------------------------------


def provision_pattern() -> dict[str, Any]:
    return resolve(rule("StackReadyToProvisionRule")["EventPattern"])


@pytest.mark.parametrize("status", ["CREATE_COMPLETE", "UPDATE_COMPLETE"])
def test_own_stack_ready_matches_the_provision_rule(status: str) -> None:
    ready = variant(event("stack_status_change.json"), "detail.status-details.status", status)
    assert matches(provision_pattern(), ready)


@pytest.mark.parametrize(
    "status",
    ["CREATE_IN_PROGRESS", "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "UPDATE_ROLLBACK_COMPLETE", "DELETE_COMPLETE"],
)
def test_other_stack_statuses_do_not_provision(status: str) -> None:
    other = variant(event("stack_status_change.json"), "detail.status-details.status", status)
    assert not matches(provision_pattern(), other)


def test_other_stacks_do_not_provision() -> None:
    base = event("stack_status_change.json")
    nested = STACK_ID.replace("stack/trunk/", "stack/trunk-NetworkStack-1ABC/")
    assert not matches(provision_pattern(), variant(base, "detail.stack-id", nested))
    assert not matches(provision_pattern(), variant(base, "detail.stack-id", STACK_ID.replace("trunk", "trunk-host")))


def test_provision_rule_passes_an_input_the_first_states_accept() -> None:
    from sip_trunk.workflows.common import StepInput
    from sip_trunk.workflows.provision import ProvisionRequest

    target = rule("StackReadyToProvisionRule")["Targets"][0]
    assert not {"Input", "InputPath", "InputTransformer"} & set(target), "the whole event is the execution input"
    status = event("stack_status_change.json")
    request = ProvisionRequest.model_validate(status)
    assert request.rotate_credentials is False, "a stack event never rotates credentials"
    task = first_task_input(ROOT / "statemachines" / "provision.asl.yaml", status)
    assert StepInput.model_validate(task).execution.name == "exec-1"


# --- a tiny Step Functions input processor (Pass Parameters, then the first Task's Parameters) ----------


def path_value(path: str, data: Any, context: dict[str, Any]) -> Any:
    root, rest = (context, path[3:]) if path.startswith("$$.") else (data, path[2:] if path != "$" else "")
    node = root
    for key in filter(None, rest.split(".")):
        node = node[key]
    return node


def apply_parameters(parameters: dict[str, Any], data: Any, context: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in parameters.items():
        if key.endswith(".$"):
            out[key[:-2]] = path_value(value, data, context)
        elif isinstance(value, dict):
            out[key] = apply_parameters(value, data, context)
        else:
            out[key] = value
    return out


def first_task_input(path: Path, execution_input: dict[str, Any]) -> dict[str, Any]:
    machine = yaml.safe_load(path.read_text())
    context = {
        "Execution": {
            "Name": "exec-1",
            "Id": "arn:aws:states:us-east-1:1:execution:m:exec-1",
            "StartTime": "2026-01-01T00:00:00Z",
        },
        "State": {"EnteredTime": "2026-01-01T00:00:01Z"},
    }
    data: Any = execution_input
    state = machine["States"][machine["StartAt"]]
    while state["Type"] == "Pass":
        data = apply_parameters(state["Parameters"], data, context) if "Parameters" in state else data
        state = machine["States"][state["Next"]]
    assert state["Type"] == "Task"
    return apply_parameters(state["Parameters"], data, context)
