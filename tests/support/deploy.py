"""What `sam deploy` does with the template's parameters before CloudFormation sees them, read as data.

- `guided_transcript` replays `sam deploy --guided` (aws-sam-cli `GuidedContext.guided_prompts` and
  `prompt_parameters`, click's `prompt`/`confirm`): "Stack Name", "AWS Region", then one
  `Parameter <Key> [<default>]` prompt per template parameter *in template order*, then the confirm, IAM,
  rollback and save questions. A `NoEcho` parameter is asked with hidden input and **no default**, and
  click asks again on empty input, so an optional secret parameter cannot be skipped: the replay refuses
  it (`PromptRepeats`) as the real prompt would loop.
- `parameter_problems` is what CloudFormation refuses before creating anything: a parameter without a
  value or default, a value outside `AllowedValues`/`AllowedPattern`, a failed `Rules` assertion (with
  the AssertDescription the user would see).
- `profiles` reads samconfig.toml's environments and their `parameter_overrides`.

`python -m support.deploy` (from tests/) prints the guided transcript for docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SAMCONFIG = ROOT / "samconfig.toml"

# What a first-time user has on day one; everything else is left at its default (Enter).
DAY_ONE_ANSWERS = {"ElevenLabsPhoneNumber": "+14155550100", "AlarmEmail": "ops@example.com"}
DOC_REGION = "us-east-1"  # SAM's default region when none is configured


class PromptRepeats(AssertionError):
    """click asks again: a prompt without a default got an empty answer."""


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    from cfnlint.decode import decode

    template, matches = decode(str(path))
    assert not matches, matches
    assert template is not None
    return dict(template)


# --- samconfig -----------------------------------------------------------------------------------


def profiles(path: Path = SAMCONFIG) -> dict[str, dict[str, Any]]:
    """environment → {"stack_name", "deploy": {...}, "build": {...}, "parameters": {key: value}}."""
    config = tomllib.loads(path.read_text())
    out: dict[str, dict[str, Any]] = {}
    for env, commands in config.items():
        if not isinstance(commands, dict):
            continue
        deploy = commands.get("deploy", {}).get("parameters", {})
        overrides = deploy.get("parameter_overrides", [])
        items = overrides if isinstance(overrides, list) else shlex.split(overrides)
        out[env] = {
            "stack_name": commands.get("global", {}).get("parameters", {}).get("stack_name"),
            "deploy": deploy,
            "build": commands.get("build", {}).get("parameters", {}),
            "parameters": dict(item.split("=", 1) for item in items),
        }
    return out


# --- what CloudFormation refuses -------------------------------------------------------------------


def _rule_value(node: Any, values: dict[str, str], conditions: dict[str, Any] | None = None) -> Any:
    if not isinstance(node, dict):
        return node
    ((fn, arg),) = node.items()
    if fn == "Ref":
        return values[arg]
    if fn == "Condition" and conditions is not None:
        return _rule_value(conditions[arg], values, conditions)
    if fn == "Fn::If" and conditions is not None:
        branch = arg[1] if _rule_value(conditions[arg[0]], values, conditions) else arg[2]
        return _rule_value(branch, values, conditions)
    if fn == "Fn::Equals":
        return str(_rule_value(arg[0], values, conditions)) == str(_rule_value(arg[1], values, conditions))
    if fn == "Fn::Not":
        return not _rule_value(arg[0], values, conditions)
    if fn == "Fn::And":
        return all(_rule_value(a, values, conditions) for a in arg)
    if fn == "Fn::Or":
        return any(_rule_value(a, values, conditions) for a in arg)
    if fn == "Fn::Contains":
        return str(_rule_value(arg[1], values, conditions)) in [str(_rule_value(a, values, conditions)) for a in arg[0]]
    raise AssertionError(f"rule function {fn} not understood by the test evaluator: extend it")


def parameter_values(template: dict[str, Any], given: dict[str, str]) -> dict[str, str | None]:
    """What CloudFormation uses: the given value, else the Default, else None (missing)."""
    out: dict[str, str | None] = {}
    for key, spec in template["Parameters"].items():
        if key in given:
            out[key] = given[key]
        else:
            out[key] = str(spec["Default"]) if "Default" in spec else None
    return out


def parameter_problems(template: dict[str, Any], given: dict[str, str]) -> list[str]:
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
        if "RuleCondition" in rule and not _rule_value(rule["RuleCondition"], resolved):
            continue
        for assertion in rule["Assertions"]:
            if not _rule_value(assertion["Assert"], resolved):
                problems.append(f"rule {name}: {assertion.get('AssertDescription', '')}")
    return problems


# --- how long Provision can take -------------------------------------------------------------------


def function_environment(template: dict[str, Any], function: str, given: dict[str, str]) -> dict[str, str]:
    """A function's own environment variables as CloudFormation resolves them for these parameters."""
    values = {k: v for k, v in parameter_values(template, given).items() if v is not None}
    variables = template["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
    return {k: str(_rule_value(v, values, template.get("Conditions", {}))) for k, v in variables.items()}


def provision_worst_case_s(template: dict[str, Any], given: dict[str, str]) -> int:
    """The longest a Provision execution waits by design: the host stack (LaunchHost's STACK_TIMEOUT_S for
    these parameters), the apply and the verification deadlines (the workflow defaults unless a function
    sets them), plus ten minutes for the other steps and their retries (SyncElevenLabs alone may take 150 s
    per attempt)."""
    from sip_trunk.workflows.config import WorkflowConfig

    fields = WorkflowConfig.model_fields

    def setting(function: str, name: str) -> int:
        value = function_environment(template, function, given).get(name)
        default = next(f.default for f in fields.values() if f.alias == name)
        return int(value) if value is not None else int(default)

    stack = setting("LaunchHostFunction", "STACK_TIMEOUT_S")
    apply = setting("ApplyConfigFunction", "APPLY_TIMEOUT_S")
    verify = setting("VerifyTrunkFunction", "VERIFY_TIMEOUT_S")
    return stack + apply + verify + 600


# --- sam deploy --guided ------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    text: str
    default: str | None
    key: str | None = None
    """The parameter asked for, or None for SAM's own questions."""

    def line(self) -> str:
        return f"{self.text} [{self.default}]: " if self.default is not None else f"{self.text}: "


def _yes_no(default: bool) -> str:
    return "Y/n" if default else "y/N"


def guided_transcript(
    template: dict[str, Any], answers: dict[str, str], samconfig: Path = SAMCONFIG, region: str = DOC_REGION
) -> tuple[list[str], dict[str, str]]:
    """The lines `sam deploy --guided` prints and the user types, and the parameter values it sends.

    Starts from samconfig's `default` environment, as `sam deploy --guided` does. Raises
    `PromptRepeats` where the real prompt would ask again.
    """
    default = profiles(samconfig).get("default", {})
    deploy = default.get("deploy", {})
    lines = [
        "Configuring SAM deploy",
        "======================",
        "",
        f"\tLooking for config file [{samconfig.name}] :  Found",
        "\tReading default arguments  :  Success",
        "",
        "\tSetting default arguments for 'sam deploy'",
        "\t=========================================",
    ]

    def ask(prompt: Prompt) -> str:
        answer = answers.get(prompt.key or prompt.text, "")
        if not answer and prompt.default is None:
            raise PromptRepeats(f"{prompt.line()!r} asks again on an empty answer: it has no default")
        lines.append("\t" + prompt.line() + answer)
        return answer or str(prompt.default)

    ask(Prompt("Stack Name", default.get("stack_name") or "sam-app"))
    ask(Prompt("AWS Region", region))
    sent: dict[str, str] = {}
    cmdline = default.get("parameters", {})
    for key, spec in template["Parameters"].items():
        if spec.get("NoEcho"):
            sent[key] = ask(Prompt(f"Parameter {key}", None, key))
        else:
            sent[key] = ask(Prompt(f"Parameter {key}", cmdline.get(key) or str(spec.get("Default", "")), key))
    confirm = bool(deploy.get("confirm_changeset", False))
    lines.append("\t#Shows you resources changes to be deployed and require a 'Y' to initiate deploy")
    ask(Prompt("Confirm changes before deploy", _yes_no(confirm)))
    lines.append("\t#SAM needs permission to be able to create roles to connect to the resources in your template")
    ask(Prompt("Allow SAM CLI IAM role creation", _yes_no(True)))
    lines.append("\t#Preserves the state of previously provisioned resources when an operation fails")
    ask(Prompt("Disable rollback", _yes_no(False)))
    ask(Prompt("Save arguments to configuration file", _yes_no(True)))
    ask(Prompt("SAM configuration file", samconfig.name))
    ask(Prompt("SAM configuration environment", "default"))
    return lines, sent


if __name__ == "__main__":
    transcript, _ = guided_transcript(load_template(), DAY_ONE_ANSWERS)
    print("\n".join(line.replace("\t", "    ").rstrip() for line in transcript))
