"""What CloudFormation's resource handlers call, and whether an identity policy allows it.

The permission lists come from the CloudFormation registry schemas that cfn-lint ships
(`handlers.<operation>.permissions`, `tagging.permissions`). The evaluator is the part of IAM's identity-policy
logic these policies use: Allow/Deny statements, `Action` and `Resource` with `*`/`?` wildcards (actions
case-insensitive, ARNs segment by segment, the resource segment's `*` spanning `/` and `:`), and the String/Arn
condition operators with `IfExists`. Anything else raises, so an unsupported policy cannot pass by accident.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import cfnlint

SCHEMAS = Path(cfnlint.__file__).parent / "data" / "schemas"
OPERATIONS = ("create", "read", "update", "delete")
"""The handlers a stack operation invokes. `list` serves resource discovery (Cloud Control ListResources,
the IaC generator), never a stack create/update/delete."""


@cache
def provider_schema(resource_type: str, region: str = "us-east-1") -> dict[str, Any]:
    index = json.loads((SCHEMAS / "providers" / f"{region}.json").read_text())
    schema: dict[str, Any] = json.loads((SCHEMAS / "resources" / f"{index[resource_type]}.json").read_text())
    return schema


def handler_permissions(resource_type: str) -> dict[str, list[str]]:
    """operation -> the IAM actions its handler may call."""
    handlers = provider_schema(resource_type)["handlers"]
    found = {op: list(handlers.get(op, {}).get("permissions", [])) for op in OPERATIONS}
    empty = [op for op, actions in found.items() if not actions]
    assert not empty, f"{resource_type}: the schema lists no permissions for {empty}; the check would be vacuous"
    return found


def tag_permissions(resource_type: str) -> list[str]:
    """The actions CloudFormation needs to apply stack tags to this type ([] where it propagates none)."""
    tagging = provider_schema(resource_type).get("tagging", {})
    return list(tagging.get("permissions", [])) if tagging.get("taggable") else []


@dataclass(frozen=True)
class Request:
    """One authorization AWS makes: an action on a resource, with the request's condition keys."""

    action: str
    resource: str
    context: Mapping[str, str] = field(default_factory=dict)
    why: str = ""

    def __str__(self) -> str:
        keys = ", ".join(f"{k}={v}" for k, v in sorted(self.context.items()))
        return f"{self.action} on {self.resource}" + (f" [{keys}]" if keys else "") + f" ({self.why})"


def _glob(pattern: str, flags: int = 0) -> re.Pattern[str]:
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), flags | re.DOTALL)


def action_matches(pattern: str, action: str) -> bool:
    return _glob(pattern, re.IGNORECASE).fullmatch(action) is not None


def arn_matches(pattern: str, arn: str) -> bool:
    """IAM's Resource/ArnLike matching: wildcards stay within the partition/service/region/account segments."""
    if pattern == "*":
        return True
    want, have = pattern.split(":", 5), arn.split(":", 5)
    if len(want) != 6 or len(have) != 6:
        return False
    return all(_glob(w).fullmatch(h) is not None for w, h in zip(want, have, strict=True))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


STRING_OPERATORS = {
    "StringEquals": lambda want, have: want == have,
    "StringLike": lambda want, have: _glob(want).fullmatch(have) is not None,
    "ArnEquals": arn_matches,
    "ArnLike": arn_matches,
}


def condition_holds(condition: Mapping[str, Mapping[str, Any]], context: Mapping[str, str]) -> bool:
    keys = {k.lower(): v for k, v in context.items()}
    for operator, tests in condition.items():
        name = operator.removesuffix("IfExists")
        if name not in STRING_OPERATORS:
            raise NotImplementedError(f"condition operator {operator}")
        for key, wanted in tests.items():
            have = keys.get(key.lower())
            if have is None:
                if operator.endswith("IfExists"):
                    continue
                return False
            if not any(STRING_OPERATORS[name](str(w), have) for w in _as_list(wanted)):
                return False
    return True


def statement_matches(statement: Mapping[str, Any], request: Request) -> bool:
    unsupported = {"NotAction", "NotResource", "NotPrincipal", "Principal"} & set(statement)
    if unsupported:
        raise NotImplementedError(f"statement elements {sorted(unsupported)}")
    return (
        any(action_matches(a, request.action) for a in _as_list(statement["Action"]))
        and any(arn_matches(r, request.resource) for r in _as_list(statement["Resource"]))
        and condition_holds(statement.get("Condition", {}), request.context)
    )


def allowed(statements: Sequence[Mapping[str, Any]], request: Request) -> bool:
    """An explicit Deny wins; otherwise some Allow must match (IAM's implicit deny)."""
    matching = [s["Effect"] for s in statements if statement_matches(s, request)]
    return "Allow" in matching and "Deny" not in matching


def missing(statements: Sequence[Mapping[str, Any]], requests: Iterable[Request]) -> list[str]:
    """Every request the statements do not allow, described for a failure message."""
    return sorted({str(r) for r in requests if not allowed(statements, r)})


def resolve(node: Any, refs: Mapping[str, str], attrs: Mapping[str, str] | None = None) -> Any:
    """A template fragment with Ref/Fn::Sub/Fn::GetAtt replaced by representative values."""
    attrs = attrs or {}
    if isinstance(node, list):
        return [resolve(item, refs, attrs) for item in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((fn, arg),) = node.items()
        if fn == "Ref":
            return refs[arg]
        if fn == "Fn::GetAtt":
            name = arg if isinstance(arg, str) else ".".join(arg)
            return attrs[name]
        if fn == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else arg
            scope = {**refs, **attrs, **{k: str(resolve(v, refs, attrs)) for k, v in variables.items()}}
            return re.sub(r"\$\{([A-Za-z0-9:._]+)\}", lambda m: scope[m[1]], text)
        if fn.startswith("Fn::"):
            raise NotImplementedError(f"intrinsic {fn}")
    return {key: resolve(value, refs, attrs) for key, value in node.items()}
