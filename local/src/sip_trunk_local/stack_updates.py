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
from collections.abc import Callable, Mapping
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


def load_template(text: str) -> dict[str, Any]:
    """A YAML or JSON template with its short-form intrinsics (`!Sub`) in their long form, as cfn-lint reads it."""
    from cfnlint.decode import decode_str

    template, problems = decode_str(text)
    if not isinstance(template, dict) or not isinstance(template.get("Resources"), dict):
        raise ValueError(f"unreadable template: {problems}")
    return dict(template)


def plan_text_update(
    old_template: str, old: Mapping[str, str], new_template: str, new: Mapping[str, str], stack_name: str = "stack"
) -> list[Interruption]:
    """The interruptions of an update given both templates as text (what moto's UpdateStack receives)."""
    before = load_template(old_template)
    after = before if new_template == old_template else load_template(new_template)
    return interruptions(plan_update(before, old, new, new_template=after, stack_name=stack_name))


Patch = Callable[[Any, str, Any], None]
"""`setattr` that is undone later (pytest's `monkeypatch.setattr`, `Ec2Hooks._patch`)."""


def emulate_updates(patch: Patch, record: Callable[[str, list[Interruption]], None]) -> None:
    """Make moto's UpdateStack do what CloudFormation does to instances, and report what it interrupts.

    moto has no update handler for `AWS::EC2::Instance`: a changed instance is dropped from the stack (its
    `GetAtt`s then fail). Here each UpdateStack is planned first; an instance the plan replaces is created anew
    and the old one terminated (CloudFormation creates the replacement, then deletes the old one), any other
    changed instance stays as it is (moto models no stop/start). `record` gets (stack, interruptions) for each.
    """
    from moto.cloudformation.models import CloudFormationBackend
    from moto.ec2.models import ec2_backends, instances

    update_stack = CloudFormationBackend.update_stack
    replacing: set[str] = set()

    def planned_update_stack(backend: Any, name: str, template: str, *args: Any, **kwargs: Any) -> Any:
        stack = backend.get_stack(name)
        parameters = kwargs.get("parameters", args[1] if len(args) > 1 else [])
        new = backend._resolve_update_parameters(instance=stack, incoming_params=parameters)
        try:
            plan = plan_text_update(str(stack.template), dict(stack.parameters), str(template), dict(new), stack.name)
        except ValueError:  # not a template: moto refuses it as CloudFormation does ("Template format error")
            return update_stack(backend, name, template, *args, **kwargs)
        replacing.clear()
        replacing.update(i.resource for i in plan if i.impact == "replacement")
        try:
            updated = update_stack(backend, name, template, *args, **kwargs)
        finally:
            replacing.clear()
        record(updated.name, plan)
        return updated

    def update_instance(
        cls: Any,
        original_resource: Any,
        new_resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
    ) -> Any:
        logical = next(
            (t["value"] for t in original_resource.get_tags() if t["key"] == "aws:cloudformation:logical-id"), ""
        )
        if logical not in replacing:
            return original_resource
        replacement = cls.create_from_cloudformation_json(
            new_resource_name, cloudformation_json, account_id, region_name
        )
        ec2_backends[account_id][region_name].terminate_instances([original_resource.id])
        return replacement

    patch(CloudFormationBackend, "update_stack", planned_update_stack)
    patch(instances.Instance, "update_from_cloudformation_json", classmethod(update_instance))
