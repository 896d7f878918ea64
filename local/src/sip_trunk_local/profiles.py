"""What `sam deploy --config-env NAME` hands CloudFormation, and what CloudFormation refuses before it creates
anything — read as data, so local mode deploys a samconfig.toml profile as `sam deploy` would.

- `profiles` reads samconfig.toml's environments: the stack name and the `parameter_overrides` (a list of
  `Key=Value` items, or one string of them, as SAM CLI accepts).
- `parameter_problems` is CloudFormation's refusal at CreateStack: a parameter without a value or default, a
  value outside `AllowedValues`/`AllowedPattern`, an unknown parameter, a failed `Rules` assertion (with the
  AssertDescription the user would see). moto checks none of the rules, so local mode asks this first
  (`controlplane.create_control_plane`) and refuses what CloudFormation refuses.
- `profile_parameters` is one profile's stack name and parameters, with the values `sam deploy --guided` would
  have asked for where the profile leaves a required parameter open.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SAMCONFIG = "samconfig.toml"


class ProfileError(ValueError):
    """The profile does not exist or its parameter overrides cannot be read."""


class ParametersRefused(ValueError):
    """CloudFormation would refuse these parameters at CreateStack; `problems` says why, one line each."""

    def __init__(self, stack_name: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"CreateStack {stack_name} refused: " + "; ".join(problems))


# --- samconfig -----------------------------------------------------------------------------------


def _overrides(raw: Any, env: str) -> dict[str, str]:
    items = raw if isinstance(raw, list) else shlex.split(str(raw))
    out: dict[str, str] = {}
    for item in items:
        text = str(item)
        if text.startswith("ParameterKey="):  # the CloudFormation CLI form SAM also accepts
            match = re.fullmatch(r"ParameterKey=([^,]+),ParameterValue=(.*)", text)
            if match is None:
                raise ProfileError(f"{env}: cannot read parameter override {text!r}")
            out[match[1]] = match[2]
            continue
        if "=" not in text:
            raise ProfileError(f"{env}: parameter override {text!r} is not Key=Value")
        key, value = text.split("=", 1)
        out[key] = value
    return out


def profiles(path: Path) -> dict[str, dict[str, Any]]:
    """environment → {"stack_name", "deploy": {...}, "build": {...}, "parameters": {key: value}}."""
    config = tomllib.loads(path.read_text())
    out: dict[str, dict[str, Any]] = {}
    for env, commands in config.items():
        if not isinstance(commands, dict):
            continue
        deploy = commands.get("deploy", {}).get("parameters", {})
        out[env] = {
            "stack_name": commands.get("global", {}).get("parameters", {}).get("stack_name")
            or deploy.get("stack_name"),
            "deploy": deploy,
            "build": commands.get("build", {}).get("parameters", {}),
            "parameters": _overrides(deploy.get("parameter_overrides", []), env),
        }
    return out


def profile_parameters(
    path: Path, env: str, template: Mapping[str, Any], answers: Mapping[str, str]
) -> tuple[str, dict[str, str], dict[str, str]]:
    """(stack name, parameters, answered): the profile's overrides, plus `answers` for each required parameter
    (no Default) the profile leaves open — what `sam deploy --guided` would ask for. Raises ProfileError."""
    found = profiles(path)
    if env not in found:
        raise ProfileError(f"no profile {env!r} in {path} (profiles: {', '.join(sorted(found))})")
    profile = found[env]
    if not profile["stack_name"]:
        raise ProfileError(f"{env}: no stack_name in {path}")
    parameters = dict(profile["parameters"])
    answered: dict[str, str] = {}
    for name, spec in template.get("Parameters", {}).items():
        if "Default" not in spec and name not in parameters and name in answers:
            answered[name] = parameters[name] = answers[name]
    return str(profile["stack_name"]), parameters, answered


# --- what CloudFormation refuses -------------------------------------------------------------------


def rule_value(node: Any, values: Mapping[str, str], conditions: Mapping[str, Any] | None = None) -> Any:
    """Evaluate a rule (or condition) expression of Ref, Condition, Fn::If/Equals/Not/And/Or/Contains."""
    if not isinstance(node, dict):
        return node
    ((fn, arg),) = node.items()
    if fn == "Ref":
        return values[arg]
    if fn == "Condition" and conditions is not None:
        return rule_value(conditions[arg], values, conditions)
    if fn == "Fn::If" and conditions is not None:
        branch = arg[1] if rule_value(conditions[arg[0]], values, conditions) else arg[2]
        return rule_value(branch, values, conditions)
    if fn == "Fn::Equals":
        return str(rule_value(arg[0], values, conditions)) == str(rule_value(arg[1], values, conditions))
    if fn == "Fn::Not":
        return not rule_value(arg[0], values, conditions)
    if fn == "Fn::And":
        return all(rule_value(a, values, conditions) for a in arg)
    if fn == "Fn::Or":
        return any(rule_value(a, values, conditions) for a in arg)
    if fn == "Fn::Contains":
        return str(rule_value(arg[1], values, conditions)) in [str(rule_value(a, values, conditions)) for a in arg[0]]
    raise ValueError(f"rule function {fn} is not understood here: extend sip_trunk_local.profiles.rule_value")


def parameter_values(template: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, str | None]:
    """What CloudFormation uses: the given value, else the Default, else None (missing)."""
    out: dict[str, str | None] = {}
    for key, spec in template["Parameters"].items():
        if key in given:
            out[key] = given[key]
        else:
            out[key] = str(spec["Default"]) if "Default" in spec else None
    return out


def parameter_problems(template: Mapping[str, Any], given: Mapping[str, str]) -> list[str]:
    """Why CloudFormation would refuse `given` before creating anything; empty when it accepts them."""
    params = template["Parameters"]
    problems = [f"unknown parameter {key}" for key in given if key not in params]
    values = parameter_values(template, given)
    for key, value in values.items():
        spec = params[key]
        if value is None:
            problems.append(f"{key}: no value and no default")
            continue
        allowed = spec.get("AllowedValues")
        if allowed is not None and value not in [str(a) for a in allowed]:
            problems.append(f"{key}={value!r}: not in AllowedValues")
        pattern = spec.get("AllowedPattern")
        if pattern is not None and re.fullmatch(pattern, value) is None:
            problems.append(f"{key}={value!r}: {spec.get('ConstraintDescription', pattern)}")
    if problems:
        return problems
    resolved = {k: v for k, v in values.items() if v is not None}
    for name, rule in template.get("Rules", {}).items():
        if "RuleCondition" in rule and not rule_value(rule["RuleCondition"], resolved):
            continue
        for assertion in rule["Assertions"]:
            if not rule_value(assertion["Assert"], resolved):
                problems.append(f"rule {name}: {assertion.get('AssertDescription', '')}")
    return problems
