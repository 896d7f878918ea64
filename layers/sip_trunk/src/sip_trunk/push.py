"""Deploying an operator's full settings document to a stack (`sip-trunk push`, ADR-16).

The stack is found by its Outputs (template.yaml): where the template's and the operator's documents live and
which state machine provisions. The plan is computed before anything is stored: the document is validated
with the same model and the same stack-owned rules the functions apply (`sip_trunk.stackowned`), its secret
references are checked, and the change to the settings the deployment runs is shown as a diff."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import yaml

from sip_trunk.aws.operator import OperatorAws, SecretState
from sip_trunk.settings import Settings, SettingsError
from sip_trunk.stackowned import EffectiveSettings, effective_settings

OUTPUT_PROVISION_MACHINE = "ProvisionStateMachineArn"
OUTPUT_TEMPLATE_SETTINGS = "SettingsParameterName"
OUTPUT_OPERATOR_SETTINGS = "OperatorSettingsParameterName"
REQUIRED_OUTPUTS = (OUTPUT_PROVISION_MACHINE, OUTPUT_TEMPLATE_SETTINGS, OUTPUT_OPERATOR_SETTINGS)

PARAMETER_DESCRIPTION = "Operator settings document (sip-trunk push); not managed by CloudFormation."


class PushError(Exception):
    """The stack or the account is not as push needs it (exit 1). Settings problems are `SettingsError`."""


@dataclass(frozen=True)
class Target:
    stack: str
    region: str
    provision_machine_arn: str
    template_parameter: str
    operator_parameter: str


def find_target(aws: OperatorAws, stack: str) -> Target:
    info = aws.stacks.describe(stack)
    if info is None:
        raise PushError(f"stack {stack} does not exist in {aws.region}")
    missing = [o for o in REQUIRED_OUTPUTS if not info.outputs.get(o)]
    if missing:
        raise PushError(
            f"stack {stack} ({info.status}) has no output {', '.join(missing)}: "
            "deploy this version's template.yaml first (sam deploy)"
        )
    return Target(
        stack=stack,
        region=aws.region,
        provision_machine_arn=info.outputs[OUTPUT_PROVISION_MACHINE],
        template_parameter=info.outputs[OUTPUT_TEMPLATE_SETTINGS],
        operator_parameter=info.outputs[OUTPUT_OPERATOR_SETTINGS],
    )


@dataclass(frozen=True)
class Stored:
    document: Any | None
    version: int | None


@dataclass(frozen=True)
class Plan:
    target: Target
    document: Any
    """The operator's document as given (what is stored)."""
    effective: EffectiveSettings
    """What the functions will run on after the push."""
    current: EffectiveSettings | None
    """What they run on now (None: the stored operator document is no longer valid for this stack)."""
    stored: Stored
    diff: list[str]
    secrets: dict[str, SecretState]

    @property
    def unchanged(self) -> bool:
        return bool(self.stored.document == self.document)

    @property
    def missing_secrets(self) -> list[str]:
        return [ref for ref, state in self.secrets.items() if state == "missing"]

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.effective.document, sort_keys=True).encode()).hexdigest()


def _json(aws: OperatorAws, name: str) -> tuple[Any, int] | None:
    found = aws.parameters.get(name)
    if found is None:
        return None
    value, version = found
    try:
        return json.loads(value), version
    except ValueError as exc:
        raise PushError(f"parameter {name} does not hold JSON ({exc.__class__.__name__})") from None


def settings_yaml(settings: Settings) -> list[str]:
    """The complete settings (defaults included) as YAML lines, so a diff shows only real changes."""
    text = yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
    return text.splitlines(keepends=True)


def secret_refs(settings: Settings) -> list[str]:
    refs = settings.secret_refs()
    if settings.elevenlabs.api_key is not None:
        refs.append(settings.elevenlabs.api_key)
    return list(dict.fromkeys(refs))


def plan_push(aws: OperatorAws, target: Target, document: Any, source_name: str) -> Plan:
    """Everything push will do, computed without storing anything. `SettingsError` when the document is
    invalid for this stack (field-pointing, no values)."""
    template = _json(aws, target.template_parameter)
    if template is None:
        raise PushError(f"the stack's settings parameter {target.template_parameter} does not exist")
    found = _json(aws, target.operator_parameter)
    stored = Stored(document=found[0], version=found[1]) if found else Stored(document=None, version=None)
    effective = effective_settings(template[0], document)
    try:
        current: EffectiveSettings | None = effective_settings(template[0], stored.document)
    except SettingsError:
        current = None
    if current is None:
        before: list[str] = []
        label = f"stored operator document v{stored.version} (invalid for this stack)"
    elif current.source == "operator":
        before, label = settings_yaml(current.settings), f"deployed: operator document v{stored.version}"
    else:
        before, label = settings_yaml(current.settings), "deployed: template document"
    diff = list(difflib.unified_diff(before, settings_yaml(effective.settings), label, f"pushed: {source_name}"))
    secrets = {ref: aws.secrets.state(ref) for ref in secret_refs(effective.settings)}
    return Plan(
        target=target,
        document=document,
        effective=effective,
        current=current,
        stored=stored,
        diff=diff,
        secrets=secrets,
    )


def store(aws: OperatorAws, plan: Plan) -> int:
    value = json.dumps(plan.document, separators=(",", ":"), sort_keys=True)
    return aws.parameters.put(plan.target.operator_parameter, value, PARAMETER_DESCRIPTION)


def execution_name(version: int, digest: str, stamp: str) -> str:
    """A unique, readable execution name (Step Functions: up to 80 of `A-Za-z0-9-_`)."""
    return f"push-v{version}-{digest[:12]}-{stamp}"[:80]


def start_provision(aws: OperatorAws, target: Target, version: int, digest: str, stamp: str) -> str:
    payload = json.dumps({"reason": f"sip-trunk push: operator settings v{version}"})
    return aws.executions.start(target.provision_machine_arn, execution_name(version, digest, stamp), payload)


def execution_console_url(region: str, execution_arn: str) -> str:
    return f"https://{region}.console.aws.amazon.com/states/home?region={region}#/v2/executions/details/{execution_arn}"
