"""The functions' environment in template.yaml covers the workflows' config model, and each function's
Timeout covers its worst case (probes and ElevenLabs requests with the client's retry budget)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# Optional tunables with production defaults in the config model (CONTRACTS.md).
TUNABLES: dict[str, Any] = {
    "ELEVENLABS_API_URL": "https://api.elevenlabs.io",
    "STACK_TIMEOUT_S": 1800,
    "APPLY_TIMEOUT_S": 600,
    "VERIFY_TIMEOUT_S": 300,
    "PROBE_TIMEOUT_S": 3,
    "CERTIFICATE_MIN_DAYS": 14,
    "HEARTBEAT_MAX_AGE_S": 180,
    "FAILOVER_AFTER_FAILURES": 3,
    "FAILOVER_LOCK_TTL_S": 900,
    "PROBE_TARGETS": {},
}
# Tunables the template does set, only on the functions that read them: name → functions.
# STACK_TIMEOUT_S: a stock Ubuntu host builds Asterisk at boot (docs/IMAGE.md), so LaunchHost's deadline for the
# host stack depends on the image source.
# PROBE_FUNCTION: with the ElevenLabs static range, the functions that probe hand it to the in-VPC probe
# function (ADR-27).
TEMPLATE_SET_TUNABLES: dict[str, set[str]] = {
    "STACK_TIMEOUT_S": {"launch_host"},
    "PROBE_FUNCTION": {"verify_trunk", "failover_confirm", "failover_verify", "health_check"},
}
# Read by Powertools, not by the config model.
POWERTOOLS = {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL"}

# Deliberate waits per function: SIP probes and ElevenLabs requests (sip_trunk.workflows.*).
PROBES = {"verify_trunk": 1, "failover_confirm": 2, "failover_verify": 1, "health_check": 3}
ELEVENLABS_REQUESTS = {
    "verify_trunk": 2,  # find_by_number: list, then get
    "sync_elevenlabs": 4,  # list, get, update (or create), read back
}
AWS_BUDGET_S = 20.0
"""AWS calls of one step at normal latency, with room for botocore's retries."""


def load() -> dict[str, Any]:
    template, matches = decode(str(ROOT / "template.yaml"))
    assert not matches
    return json.loads(json.dumps(template))


def functions(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for res in template["Resources"].values():
        if res["Type"] == "AWS::Serverless::Function":
            out[res["Properties"]["CodeUri"].strip("/").rsplit("/", 1)[-1]] = res["Properties"]
    return out


def environment(template: dict[str, Any], function: str) -> dict[str, Any]:
    env = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    env.update(functions(template)[function].get("Environment", {}).get("Variables", {}))
    return env


def config_fields() -> dict[str, Any]:
    from sip_trunk.workflows.config import WorkflowConfig

    return {f.alias: f for f in WorkflowConfig.model_fields.values()}


def evaluated(node: Any) -> str:
    """A deploy-time value for an intrinsic, good enough for the config model's constraints."""
    if isinstance(node, str):
        return node
    if isinstance(node, int | float):
        return str(node)
    if "Ref" in node:
        return {"AWS::StackName": "sip-prod"}.get(node["Ref"], f"{node['Ref'].lower()}-value")
    if "Fn::Sub" in node:
        text = node["Fn::Sub"] if isinstance(node["Fn::Sub"], str) else node["Fn::Sub"][0]
        return re.sub(r"\$\{([^}]+)\}", lambda m: "sip-prod" if m[1] == "AWS::StackName" else "x", text)
    if "Fn::GetAtt" in node:
        return "arn:aws:x:us-east-1:123456789012:" + ".".join(node["Fn::GetAtt"])
    if "Fn::If" in node:
        return evaluated(node["Fn::If"][1])
    raise AssertionError(f"cannot evaluate {node}")


def test_every_config_field_is_set_by_the_template_or_is_a_tunable_with_a_default() -> None:
    template = load()
    fields = config_fields()
    for function in functions(template):
        env = environment(template, function)
        for alias, field in fields.items():
            if alias in TEMPLATE_SET_TUNABLES:
                assert not field.is_required(), alias
                wanted = function in TEMPLATE_SET_TUNABLES[alias]
                assert (alias in env) == wanted, f"{function}: {alias} should {'' if wanted else 'not '}be set"
            elif alias in TUNABLES:
                assert not field.is_required(), alias
                assert alias not in env, f"{function}: {alias} is a tunable; production uses its default"
            else:
                assert alias in env, f"{function}: the template does not set {alias}"
        unread = set(env) - set(fields) - POWERTOOLS
        assert not unread, f"{function}: {unread} set but read by nothing"


def test_tunables_are_exactly_the_config_models_optional_fields_with_their_defaults() -> None:
    from sip_trunk.workflows.config import parse_config

    fields = config_fields()
    assert set(TUNABLES) <= set(fields)
    config = parse_config(
        {"STACK_NAME": "s", "CONFIG_PREFIX": "/s/asterisk", "SETTINGS_PARAMETER": "/s/settings", "STATE_TABLE": "t"}
    )
    defaults = {f.alias: getattr(config, name) for name, f in type(config).model_fields.items()}
    for alias, value in TUNABLES.items():
        assert defaults[alias] == value, f"{alias}: default {defaults[alias]!r}, documented {value!r}"


def test_the_templates_environment_parses_into_the_config_model() -> None:
    from sip_trunk.workflows.config import parse_config

    template = load()
    for function in functions(template):
        env = {k: evaluated(v) for k, v in environment(template, function).items()}
        config = parse_config(env)
        assert config.probe_targets == {}, "production probes the real address"
        if function in TEMPLATE_SET_TUNABLES["PROBE_FUNCTION"]:
            assert config.probe_function, f"{function}: PROBE_FUNCTION (the static range's branch)"
        assert config.host_stack_name == "sip-prod-host"


def test_contracts_document_every_variable_and_tunable_default() -> None:
    contracts = (ROOT / "docs" / "CONTRACTS.md").read_text()
    for alias in config_fields():
        assert f"`{alias}`" in contracts, f"CONTRACTS.md does not mention {alias}"
    for alias, value in TUNABLES.items():
        if isinstance(value, int) and not isinstance(value, bool):
            assert re.search(rf"`{alias}`[^\n]*?\b{value}\b", contracts), f"CONTRACTS.md: {alias} default {value}"
    assert "pk=health#address, sk=probe" in contracts


def elevenlabs_request_bound_s() -> float:
    """One ElevenLabs request at most: every attempt times out, with the longest back-off between them."""
    from sip_trunk.aws.wiring import build_deps
    from sip_trunk.workflows.config import parse_config

    config = parse_config(
        {"STACK_NAME": "s", "CONFIG_PREFIX": "/s/asterisk", "SETTINGS_PARAMETER": "/s/settings", "STATE_TABLE": "t"}
    )
    client: Any = build_deps(config).elevenlabs("k" * 24)
    backoff = sum(
        min(client.backoff_max_s, client.backoff_base_s * 2 ** (attempt - 1))
        for attempt in range(1, client.max_attempts)
    )
    return float(client.max_attempts * client.timeout_s + backoff)


def test_elevenlabs_client_budget_is_what_the_template_assumes() -> None:
    # 3 attempts x 10 s plus 0.5 s + 1 s of back-off (documented next to the Timeouts)
    assert elevenlabs_request_bound_s() == pytest.approx(31.5)


def test_every_timeout_covers_its_worst_case() -> None:
    from sip_trunk.workflows.failover import CONFIRM_PROBES

    assert PROBES["failover_confirm"] == CONFIRM_PROBES
    template = load()
    per_request = elevenlabs_request_bound_s()
    probe_s = TUNABLES["PROBE_TIMEOUT_S"]
    for function, props in functions(template).items():
        timeout = props.get("Timeout", template["Globals"]["Function"]["Timeout"])
        worst = PROBES.get(function, 0) * probe_s + ELEVENLABS_REQUESTS.get(function, 0) * per_request + AWS_BUDGET_S
        assert timeout >= worst, f"{function}: Timeout {timeout} s < worst case {worst} s"
        assert timeout <= 900
    assert functions(template)["verify_trunk"]["Timeout"] == 90
    assert functions(template)["health_check"]["Timeout"] < 60, "a run must end before the next minute's"


def test_stack_timeout_covers_the_host_stacks_creation_policies() -> None:
    """LaunchHost's deadline outlasts the host stack's own, even if the two hosts booted one after the other
    (they boot side by side: the standby's user data names no other host), each within its CreationPolicy
    timeout. (That the deadline is LaunchHost's start plus STACK_TIMEOUT_S, and that CheckHostStack keeps it, is
    tests/unit/test_workflow_provision.py's.)"""
    template = load()
    value = functions(template)["launch_host"]["Environment"]["Variables"]["STACK_TIMEOUT_S"]
    condition, ubuntu, image = value["Fn::If"]
    assert condition == "UseUbuntu"
    assert template["Conditions"]["UseUbuntu"] == {"Fn::Equals": [{"Ref": "AmiSource"}, "ubuntu-24.04"]}
    assert int(image) == TUNABLES["STACK_TIMEOUT_S"]
    host, _ = decode(str(ROOT / "stacks" / "host.yaml"))
    assert host is not None
    timeouts = []
    for res in host["Resources"].values():
        if res["Type"] == "AWS::EC2::Instance":
            match = re.fullmatch(r"PT(\d+)M", res["CreationPolicy"]["ResourceSignal"]["Timeout"])
            assert match
            timeouts.append(int(match[1]) * 60)
    assert len(timeouts) == 2
    assert int(ubuntu) >= sum(timeouts), "one host after the other, each up to its CreationPolicy timeout"
    assert int(ubuntu) <= sum(timeouts) + 900, "and not much more"
