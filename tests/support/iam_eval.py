"""IAM policy evaluation as AWS documents it, for the permission proof (docs/TESTING.md, ADR-25).

The part of AWS's evaluation logic the proof needs: explicit Deny beats Allow, anything not allowed is
denied; Action/NotAction, Resource/NotResource, Principal in resource policies; the condition operators
the templates use (String*, Arn*, Bool, Null, Numeric*, the `IfExists` suffix and the `ForAllValues:` /
`ForAnyValue:` set prefixes). An operator it does not know raises instead of guessing, so a new policy
feature makes the proof fail loudly rather than pass quietly.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ContextValue = str | Sequence[str]


@dataclass(frozen=True)
class Request:
    """One authorization AWS performs: who asks for which action on which resource, with which keys."""

    action: str
    resource: str
    context: Mapping[str, ContextValue] = field(default_factory=dict)
    principal: str = ""  # the role ARN (matched by resource policies' Principal)
    reason: str = ""  # why AWS checks it (an implied permission says what implies it)

    def key(self) -> tuple[Any, ...]:
        ctx = tuple(sorted((k.lower(), v if isinstance(v, str) else tuple(v)) for k, v in self.context.items()))
        return (self.action.lower(), self.resource, ctx, self.principal)

    def describe(self) -> str:
        keys = ", ".join(f"{k}={v if isinstance(v, str) else list(v)}" for k, v in sorted(self.context.items()))
        return f"{self.action} on {self.resource}" + (f" [{keys}]" if keys else "")


@dataclass(frozen=True)
class Policy:
    """A policy document with a name for messages (``HostRole/sip-trunk-agent``)."""

    name: str
    document: Mapping[str, Any]

    def statements(self) -> list[Mapping[str, Any]]:
        raw = self.document.get("Statement", [])
        return [raw] if isinstance(raw, Mapping) else list(raw)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    allowed_by: tuple[str, ...] = ()  # "policy/Sid" of each statement that allowed
    denied_by: str = ""  # the explicit Deny, if any

    def __bool__(self) -> bool:
        return self.allowed


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """IAM wildcards: `*` any run of characters (including `/` and `:`), `?` exactly one."""
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def arn_match(pattern: str, arn: str) -> bool:
    """ArnLike: each of the six colon-separated parts matched on its own (the last may contain colons)."""
    if pattern == "*":
        return True
    p_parts, a_parts = pattern.split(":", 5), arn.split(":", 5)
    if len(p_parts) != 6 or len(a_parts) != 6:
        return wildcard_match(pattern, arn)
    return all(wildcard_match(p, a) for p, a in zip(p_parts, a_parts, strict=True))


def _compare(base: str, policy_value: str, value: str) -> bool:
    if base in ("StringEquals", "StringNotEquals"):
        return policy_value == value
    if base in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return policy_value.lower() == value.lower()
    if base in ("StringLike", "StringNotLike"):
        return wildcard_match(policy_value, value)
    if base in ("ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike"):
        return arn_match(policy_value, value)
    if base == "Bool":
        return str(policy_value).lower() == value.lower()
    if base.startswith("Numeric"):
        a, b = float(value), float(policy_value)
        return {
            "NumericEquals": a == b,
            "NumericNotEquals": a == b,
            "NumericLessThan": a < b,
            "NumericLessThanEquals": a <= b,
            "NumericGreaterThan": a > b,
            "NumericGreaterThanEquals": a >= b,
        }[base]
    raise NotImplementedError(f"condition operator {base} is not modelled")


NEGATED = {
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringNotLike",
    "ArnNotEquals",
    "ArnNotLike",
    "NumericNotEquals",
}
KNOWN = NEGATED | {
    "StringEquals",
    "StringEqualsIgnoreCase",
    "StringLike",
    "ArnEquals",
    "ArnLike",
    "Bool",
    "NumericEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
}


def condition_holds(operator: str, key: str, policy_values: Any, context: Mapping[str, ContextValue]) -> bool:
    """One key of one condition operator, as AWS evaluates it."""
    lowered = {k.lower(): v for k, v in context.items()}
    present = key.lower() in lowered
    raw = lowered.get(key.lower())
    values = [] if raw is None else ([raw] if isinstance(raw, str) else list(raw))
    wanted = [str(v) for v in _as_list(policy_values)]
    if operator == "Null":
        # "true": the key is absent; "false": it is present.
        return any((w.lower() == "true") != present for w in wanted)
    qualifier, _, base = operator.rpartition(":")
    if_exists = base.endswith("IfExists")
    base = base.removesuffix("IfExists")
    if base not in KNOWN:
        raise NotImplementedError(f"condition operator {operator} is not modelled")
    negated = base in NEGATED

    def matches(value: str) -> bool:
        hit = any(_compare(base, w, value) for w in wanted)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        # Every value in the request must match; an absent or empty key matches (AWS's documented trap).
        return all(matches(v) for v in values)
    if qualifier == "ForAnyValue":
        return any(matches(v) for v in values)
    if qualifier:
        raise NotImplementedError(f"condition qualifier {qualifier} is not modelled")
    if not present:
        return if_exists or negated
    if negated:
        return all(matches(v) for v in values)
    return any(matches(v) for v in values)


def conditions_hold(condition: Mapping[str, Any] | None, context: Mapping[str, ContextValue]) -> bool:
    """Every operator, and every key within it, must hold (AND); values of one key are alternatives (OR)."""
    for operator, keys in (condition or {}).items():
        for key, values in keys.items():
            if not condition_holds(operator, key, values, context):
                return False
    return True


def _principal_matches(principal: Any, who: str) -> bool:
    if principal == "*":
        return True
    if not isinstance(principal, Mapping):
        return False
    for kind, values in principal.items():
        for value in _as_list(values):
            if kind == "AWS" and (value == "*" or value == who):
                return True
            account = who.split(":")[4] if who.count(":") >= 5 else ""
            if kind == "AWS" and account and value in (f"arn:aws:iam::{account}:root", account):
                return True
            if kind == "Service" and value == who:
                return True
    return False


def statement_applies(statement: Mapping[str, Any], request: Request, *, resource_policy: bool = False) -> bool:
    if "Action" in statement:
        if not any(wildcard_match(a, request.action, ignore_case=True) for a in _as_list(statement["Action"])):
            return False
    elif any(wildcard_match(a, request.action, ignore_case=True) for a in _as_list(statement.get("NotAction"))):
        return False
    if "Resource" in statement:
        if not any(wildcard_match(r, request.resource) for r in _as_list(statement["Resource"])):
            return False
    elif "NotResource" in statement:
        if any(wildcard_match(r, request.resource) for r in _as_list(statement["NotResource"])):
            return False
    elif not resource_policy:
        raise ValueError(f"statement without Resource/NotResource: {statement}")
    if resource_policy and not _principal_matches(statement.get("Principal"), request.principal):
        return False
    return conditions_hold(statement.get("Condition"), request.context)


def evaluate(policies: Iterable[Policy], request: Request, *, resource_policy: bool = False) -> Decision:
    """Explicit Deny > Allow > implicit deny, over every statement of every policy."""
    allowed: list[str] = []
    for policy in policies:
        for index, statement in enumerate(policy.statements()):
            if not statement_applies(statement, request, resource_policy=resource_policy):
                continue
            label = f"{policy.name}/{statement.get('Sid', index)}"
            if statement.get("Effect") == "Deny":
                return Decision(False, denied_by=label)
            allowed.append(label)
    return Decision(bool(allowed), tuple(allowed))


def evaluate_with_key_policy(identity: Sequence[Policy], key_policy: Policy, request: Request) -> Decision:
    """KMS: the key policy must allow the caller, either by name or by the account (which delegates to IAM:
    then the caller's own policies must allow too). An explicit Deny in either wins."""
    by_key = evaluate([key_policy], request, resource_policy=True)
    if by_key.denied_by:
        return by_key
    own = evaluate(identity, request)
    if own.denied_by:
        return own
    account = request.principal.split(":")[4] if request.principal.count(":") >= 5 else ""
    named = [s for s in key_policy.statements() if _names_principal(s.get("Principal"), request.principal)]
    if named and evaluate([Policy(key_policy.name, {"Statement": named})], request, resource_policy=True):
        return by_key
    delegated = bool(account) and by_key.allowed
    return Decision(delegated and own.allowed, own.allowed_by + by_key.allowed_by if delegated else ())


def _names_principal(principal: Any, who: str) -> bool:
    if not isinstance(principal, Mapping):
        return False
    return any(who == v for kind, vs in principal.items() if kind == "AWS" for v in _as_list(vs))
