"""What a CloudFormation stack update does to each resource, decided the way CloudFormation decides it.

CloudFormation compares a resource's properties as the template renders them with the old and the new
parameters. A changed property is an update without interruption, with *some* interruption (EC2 instance
`UserData`, `InstanceType`: stop and start) or a replacement (`ImageId`, `LaunchTemplate`: a new instance),
and a replaced resource changes every `Ref`/`GetAtt` that names it, so its dependents change in turn. The
registry schemas cfn-lint ships say which properties are which: `createOnlyProperties` (replacement) and
`conditionalCreateOnlyProperties` (interruption or replacement, depending on the value). Dynamic references
(`{{resolve:ssm:…}}`) are compared as text, as CloudFormation does: a new parameter *value* under the same
name is no change at all.

moto updates stacks without any of this, so local mode and the test world use `plan_update` to notice what a
real update would interrupt (`Interruption`), and tests assert that a code deploy interrupts nothing.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

Impact = Literal["replacement", "interruption"]

# Attributes that change on every update of their resource, not only on its replacement.
_VERSIONED_ATTRIBUTES = {("AWS::EC2::LaunchTemplate", "LatestVersionNumber")}
_REGION = "us-east-1"
_NO_VALUE = object()


@dataclass(frozen=True)
class Change:
    resource: str
    type: str
    properties: tuple[str, ...]
    impact: Impact | None
    """None: an update without interruption."""


@dataclass(frozen=True)
class Interruption:
    """A resource the update stops/starts or replaces, and the properties that make it so."""

    resource: str
    type: str
    impact: Impact
    properties: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.resource} ({self.type}): {self.impact}, {', '.join(self.properties)} changed"


@lru_cache(maxsize=64)
def _schema_lists(resource_type: str) -> tuple[frozenset[str], frozenset[str]]:
    """(create-only, conditionally create-only) top-level property names of a resource type."""
    from cfnlint.schema.manager import PROVIDER_SCHEMA_MANAGER

    try:
        schema = PROVIDER_SCHEMA_MANAGER.get_resource_schema(_REGION, resource_type).schema
    except Exception:
        return frozenset({"*"}), frozenset()

    def names(key: str) -> frozenset[str]:
        return frozenset(p.split("/")[2] for p in schema.get(key, []) if p.startswith("/properties/"))

    return names("createOnlyProperties"), names("conditionalCreateOnlyProperties")


def classify(resource_type: str, properties: set[str]) -> Impact | None:
    """The worst impact of changing these top-level properties of a resource of this type."""
    create_only, conditional = _schema_lists(resource_type)
    if "*" in create_only or properties & create_only:
        return "replacement"
    if properties & conditional:
        return "interruption"
    return None


class _Renderer:
    """Evaluates a template's intrinsic functions for one set of parameters; other resources' identities and
    attributes become tokens that differ only when the resource is replaced (or, for versioned attributes, updated)."""

    def __init__(
        self,
        template: Mapping[str, Any],
        parameters: Mapping[str, str],
        stack_name: str,
        renewed: Mapping[str, int],
    ) -> None:
        self.template = template
        self.resources: Mapping[str, Any] = template.get("Resources") or {}
        declared = template.get("Parameters") or {}
        self.params: dict[str, Any] = {}
        for name, spec in declared.items():
            value = parameters.get(name, spec.get("Default"))
            if value is None:
                raise ValueError(f"parameter {name} has no value and no default")
            self.params[name] = value.split(",") if str(spec.get("Type", "")).startswith("List<") else value
        self.pseudo = {
            "AWS::Region": _REGION,
            "AWS::AccountId": "123456789012",
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack_name,
            "AWS::StackId": f"arn:aws:cloudformation:{_REGION}:123456789012:stack/{stack_name}/id",
        }
        self.renewed = renewed
        self._conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self._conditions:
            self._conditions[name] = bool(self.value((self.template.get("Conditions") or {})[name]))
        return self._conditions[name]

    def ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return _NO_VALUE
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.params:
            return self.params[name]
        return f"<{name}#{self.renewed.get(name, 0)}>"

    def get_att(self, name: str, attribute: str) -> str:
        kind = (self.resources.get(name) or {}).get("Type", "")
        generation = self.renewed.get(name, 0)
        if (kind, attribute) in _VERSIONED_ATTRIBUTES:
            generation = self.renewed.get(f"{name}@updated", 0)
        return f"<{name}.{attribute}#{generation}>"

    def sub(self, text: str, variables: Mapping[str, Any]) -> str:
        out, i = [], 0
        while (start := text.find("${", i)) >= 0:
            out.append(text[i:start])
            end = text.index("}", start)
            key = text[start + 2 : end]
            if key.startswith("!"):
                out.append("${" + key[1:] + "}")
            elif key in variables:
                out.append(str(variables[key]))
            elif "." in key and key.split(".", 1)[0] in self.resources:
                out.append(self.get_att(*key.split(".", 1)))
            else:
                out.append(str(self.ref(key)))
            i = end + 1
        out.append(text[i:])
        return "".join(out)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(x) for x in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::GetAtt":
                name, attribute = arg.split(".", 1) if isinstance(arg, str) else arg
                return self.get_att(name, attribute)
            if key == "Fn::Sub":
                if isinstance(arg, str):
                    return self.sub(arg, {})
                text, variables = arg
                return self.sub(text, {k: self.value(v) for k, v in variables.items()})
            if key == "Fn::If":
                name, yes, no = arg
                return self.value(yes if self.condition(name) else no)
            if key == "Fn::Equals":
                a, b = (self.value(x) for x in arg)
                return str(a) == str(b)
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::And":
                return all(self.value(x) for x in arg)
            if key == "Fn::Or":
                return any(self.value(x) for x in arg)
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::Join":
                separator, items = arg
                return str(separator).join(str(x) for x in self.value(items))
            if key == "Fn::Split":
                separator, text = arg
                return str(self.value(text)).split(separator)
            if key == "Fn::Select":
                index, items = arg
                return self.value(items)[int(self.value(index))]
            if key == "Fn::Base64":
                return base64.b64encode(str(self.value(arg)).encode()).decode()
            if key == "Fn::GetAZs":
                return [f"{_REGION}a", f"{_REGION}b"]
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not _NO_VALUE}

    def render(self) -> dict[str, tuple[str, dict[str, Any]]]:
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for name, resource in self.resources.items():
            if "Condition" in resource and not self.condition(resource["Condition"]):
                continue
            out[name] = (resource["Type"], self.value(resource.get("Properties") or {}))
        return out


def render_resources(
    template: Mapping[str, Any], parameters: Mapping[str, str], stack_name: str = "stack"
) -> dict[str, tuple[str, dict[str, Any]]]:
    """Logical id → (type, properties) as CloudFormation would see them with these parameters."""
    return _Renderer(template, parameters, stack_name, {}).render()


def plan_update(
    template: Mapping[str, Any],
    old: Mapping[str, str],
    new: Mapping[str, str],
    *,
    new_template: Mapping[str, Any] | None = None,
    stack_name: str = "stack",
) -> list[Change]:
    """Every resource the update changes, in template order, with the impact CloudFormation gives it.

    A replacement renews the resource's tokens and the plan is recomputed until nothing more changes, so a
    dependent of a replaced resource (a `GetAtt PrimaryInstance.PrivateIp` in another instance's user data)
    shows up too. A resource that is created or deleted by the update is not listed.
    """
    before = _Renderer(template, old, stack_name, {}).render()
    renewed: dict[str, int] = {}
    for _ in range(1 + len(before)):
        after = _Renderer(new_template or template, new, stack_name, renewed).render()
        changes: list[Change] = []
        for name, (kind, props) in after.items():
            if name not in before or before[name][0] != kind:
                continue
            old_props = before[name][1]
            changed = tuple(
                k
                for k in sorted(set(props) | set(old_props))
                if _canonical(props.get(k)) != _canonical(old_props.get(k))
            )
            if changed:
                changes.append(Change(name, kind, changed, classify(kind, set(changed))))
        wanted = {c.resource: 1 for c in changes if c.impact == "replacement"}
        wanted |= {f"{c.resource}@updated": 1 for c in changes}
        if wanted == renewed:
            return changes
        renewed = wanted
    raise RuntimeError("the update plan does not settle")  # pragma: no cover -- each pass only adds


def interruptions(changes: list[Change]) -> list[Interruption]:
    return [Interruption(c.resource, c.type, c.impact, c.properties) for c in changes if c.impact is not None]


def dynamic_references(resources: Mapping[str, tuple[str, dict[str, Any]]]) -> list[str]:
    """`resource.property` whose rendered value holds a `{{resolve:…}}` reference (re-resolved only when its
    text changes, so a new value of the same parameter never reaches the resource)."""
    found = []
    for name, (_, props) in resources.items():
        for key, value in props.items():
            text = json.dumps(value)
            if "{{resolve:" in text:
                found.append(f"{name}.{key}")
    return found


def _canonical(value: Any) -> str:
    if isinstance(value, str) and value:
        try:  # compare user data as the text it encodes
            return base64.b64decode(value, validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            return value
    return json.dumps(value, sort_keys=True, default=str)
