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
Both are local mode's own (`sip_trunk_local.profiles`): `sip-trunk local up --config-env` refuses exactly
what these tests show CloudFormation refusing.

`python -m support.deploy` (from tests/) prints the guided transcript for docs/DEPLOYMENT.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip_trunk_local import profiles as _profiles
from sip_trunk_local.profiles import parameter_problems, parameter_values
from sip_trunk_local.profiles import rule_value as _rule_value

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
SAMCONFIG = ROOT / "samconfig.toml"

# What a first-time user has on day one; everything else is left at its default (Enter).
DAY_ONE_ANSWERS = {"ElevenLabsPhoneNumber": "+14155550100", "AlarmEmail": "ops@example.com"}
DOC_REGION = "us-east-1"  # SAM's default region when none is configured

__all__ = ["parameter_problems", "parameter_values", "profiles"]


class PromptRepeats(AssertionError):
    """click asks again: a prompt without a default got an empty answer."""


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    from cfnlint.decode import decode

    template, matches = decode(str(path))
    assert not matches, matches
    assert template is not None
    return dict(template)


# --- samconfig and what CloudFormation refuses: local mode's reader (sip_trunk_local.profiles) ---------------


def profiles(path: Path = SAMCONFIG) -> dict[str, dict[str, Any]]:
    """environment → {"stack_name", "deploy": {...}, "build": {...}, "parameters": {key: value}}."""
    return _profiles.profiles(path)


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
