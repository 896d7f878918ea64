"""Every role's trust policy can be satisfied by the service that assumes the role.

A condition on a key the assuming service does not put in its AssumeRole request makes the role unusable: with
`StringEquals`, an absent key never matches, so the service is refused and the stack or schedule that needs the
role fails on its first use. IAM's policy evaluation accepts any such policy, and moto does not assume service
roles, so nothing else notices. Each service's documented keys are listed here with the page that documents
them; a key outside that list may only be used with an `...IfExists` operator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = [
    ROOT / "template.yaml",
    *sorted((ROOT / "stacks").glob("*.yaml")),
    *sorted((ROOT / "asterisk_image").glob("*.yaml")),
]

# Request-context keys each service principal documents for the role it assumes.
DOCUMENTED_SOURCE_KEYS: dict[str, frozenset[str]] = {
    # EventBridge user guide, "Using IAM policy conditions": the rule's account and ARN.
    "events.amazonaws.com": frozenset({"aws:sourceaccount", "aws:sourcearn"}),
    # EventBridge Scheduler user guide, "Set up the execution role": the schedule group's account and ARN.
    "scheduler.amazonaws.com": frozenset({"aws:sourceaccount", "aws:sourcearn"}),
    # VPC user guide, "IAM role for publishing flow logs to CloudWatch Logs".
    "vpc-flow-logs.amazonaws.com": frozenset({"aws:sourceaccount", "aws:sourcearn"}),
    # CloudFormation's service-role page documents no request-context key for a stack's service role; EC2 and
    # Image Builder's instance profile roles none either.
}


def roles(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    template, matches = decode(str(path))
    assert not matches, f"{path.name} does not parse: {matches}"
    plain: dict[str, Any] = json.loads(json.dumps(template))
    for name, resource in plain.get("Resources", {}).items():
        if resource.get("Type") == "AWS::IAM::Role":
            yield f"{path.name}:{name}", resource["Properties"]["AssumeRolePolicyDocument"]


def services(statement: dict[str, Any]) -> list[str]:
    principal = statement.get("Principal", {})
    service = principal.get("Service", []) if isinstance(principal, dict) else []
    return [service] if isinstance(service, str) else list(service)


def unsupplied_conditions(document: dict[str, Any]) -> list[str]:
    """Conditions that would refuse the assuming service because it never sends the key."""
    problems = []
    statements = document["Statement"]
    for statement in statements if isinstance(statements, list) else [statements]:
        if statement.get("Effect") != "Allow":
            continue
        for service in services(statement):
            documented = DOCUMENTED_SOURCE_KEYS.get(service, frozenset())
            for operator, keys in statement.get("Condition", {}).items():
                if operator.endswith("IfExists") or operator == "Null":
                    continue
                problems += [
                    f"{service} with {operator} {key}"
                    for key in keys
                    if key.lower().startswith("aws:source") and key.lower() not in documented
                ]
    return problems


def test_every_role_in_the_templates_is_found() -> None:
    found = {name for path in TEMPLATES for name, _ in roles(path)}
    assert "template.yaml:HostStackRole" in found
    assert any(name.startswith("host.yaml:") for name in found)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_trust_conditions_use_only_keys_the_service_supplies(path: Path) -> None:
    problems = {name: found for name, document in roles(path) if (found := unsupplied_conditions(document))}
    assert not problems, f"the assuming service does not document these keys (use ...IfExists): {problems}"


def test_a_key_the_service_does_not_supply_is_caught() -> None:
    document = {
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "cloudformation.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}},
            }
        ]
    }
    assert unsupplied_conditions(document) == ["cloudformation.amazonaws.com with StringEquals aws:SourceAccount"]
    document["Statement"][0]["Condition"] = {"StringEqualsIfExists": {"aws:SourceAccount": "123456789012"}}
    assert unsupplied_conditions(document) == []


def test_a_documented_key_passes() -> None:
    document = {
        "Statement": {
            "Effect": "Allow",
            "Principal": {"Service": ["scheduler.amazonaws.com"]},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}},
        }
    }
    assert unsupplied_conditions(document) == []
