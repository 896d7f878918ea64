"""Security groups as host firewalls: what `stacks/network.yaml` admits, enforced in a local host's namespace.

On EC2 the hosts' security group drops every packet its ingress rules do not admit; a local host without a
firewall would accept anything, so a rule that locks out a legitimate sender (a probe, the peer host) would
pass every local test. Here the template's rules are evaluated for the deployment's parameters
(:class:`TemplateEvaluator`, just the intrinsics the network template uses) into :class:`Ingress` rules, and
those become an ``iptables-restore`` ruleset for the host's INPUT chain (:func:`iptables_ruleset`): loopback
and established/related traffic pass (security groups are stateful), each rule admits its sources, and
anything else is dropped. :func:`admits` answers the same question without a kernel, for unit tests.

A rule whose source is a security group (``SourceSecurityGroupId``) admits the *private* addresses of that
group's members, as on AWS; the caller says who the members are.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "CHAIN",
    "DROP_COMMENT",
    "FirewallError",
    "HostFirewall",
    "Ingress",
    "TemplateEvaluator",
    "admits",
    "iptables_ruleset",
    "keep_chains",
    "security_group_ingress",
]

CHAIN = "SG_INGRESS"
"""The chain holding the security group's rules; INPUT jumps to it after loopback and established traffic."""
DROP_COMMENT = "sg-default-drop"
"""Comment of INPUT's final DROP rule, whose packet counter says how much the firewall refused."""

_PROTOCOLS = {
    "-1": "all",
    "all": "all",
    "tcp": "tcp",
    "6": "tcp",
    "udp": "udp",
    "17": "udp",
    "icmp": "icmp",
    "1": "icmp",
}
_SUB_VARIABLE = re.compile(r"\$\{([^}!]+)\}")


class FirewallError(ValueError):
    """The template uses something this evaluator does not model, or the parameters are invalid."""


class _NoValue:
    """`AWS::NoValue`: the property it stands in for is removed."""

    def __repr__(self) -> str:
        return "AWS::NoValue"


NO_VALUE = _NoValue()


@dataclass(frozen=True)
class ResourceRef:
    """`Ref`/`GetAtt` to a resource of the template: only its logical id is known here."""

    logical_id: str


class TemplateEvaluator:
    """Evaluates Conditions and property values of one template for one set of parameter values.

    Supported: `Ref` (parameters with their defaults, `AWS::NoValue`, a few pseudo parameters, resources as
    :class:`ResourceRef`), `Fn::GetAtt` (as :class:`ResourceRef`), `Fn::If`, `Fn::Equals`/`Not`/`And`/`Or`,
    `Condition`, `Fn::Select`, `Fn::Split`, `Fn::Join` and `Fn::Sub` over parameters. Anything else raises
    :class:`FirewallError`, so a template change this model does not cover fails loudly instead of being
    guessed at. Parameter values are checked against `AllowedPattern`/`AllowedValues` as CloudFormation does.
    """

    PSEUDO: ClassVar[dict[str, str]] = {
        "AWS::Region": "us-east-1",
        "AWS::AccountId": "123456789012",
        "AWS::Partition": "aws",
    }

    def __init__(self, template: Mapping[str, Any], parameters: Mapping[str, str]) -> None:
        self.template = template
        declared: Mapping[str, Any] = template.get("Parameters", {})
        unknown = sorted(set(parameters) - set(declared))
        if unknown:
            raise FirewallError(f"parameters not declared by the template: {', '.join(unknown)}")
        self.values: dict[str, str] = {}
        for name, spec in declared.items():
            value = str(parameters.get(name, spec.get("Default", "")))
            pattern = spec.get("AllowedPattern")
            if pattern is not None and re.fullmatch(pattern, value) is None:
                raise FirewallError(f"parameter {name}={value!r} does not match {pattern}")
            allowed = spec.get("AllowedValues")
            if allowed is not None and value not in [str(a) for a in allowed]:
                raise FirewallError(f"parameter {name}={value!r} is not one of {allowed}")
            self.values[name] = value
        self._conditions: dict[str, bool] = {}

    # --- conditions ------------------------------------------------------------------------------------
    def condition(self, name: str | None) -> bool:
        """Whether the named condition holds (no condition: always)."""
        if name is None:
            return True
        if name not in self._conditions:
            conditions: Mapping[str, Any] = self.template.get("Conditions", {})
            if name not in conditions:
                raise FirewallError(f"condition {name} is not declared")
            self._conditions[name] = self._holds(conditions[name])
        return self._conditions[name]

    def _holds(self, node: Any) -> bool:
        if isinstance(node, dict) and len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Condition":
                return self.condition(str(arg))
            if key == "Fn::Equals":
                left, right = arg
                return bool(self.value(left) == self.value(right))
            if key == "Fn::Not":
                return not self._holds(arg[0])
            if key == "Fn::And":
                return all(self._holds(n) for n in arg)
            if key == "Fn::Or":
                return any(self._holds(n) for n in arg)
        raise FirewallError(f"cannot evaluate condition {node!r}")

    # --- values ----------------------------------------------------------------------------------------
    def value(self, node: Any) -> Any:
        """A property value with its intrinsics resolved (`NO_VALUE` where `AWS::NoValue` removes it)."""
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return self._ref(str(arg))
            if key == "Fn::GetAtt":
                logical = arg[0] if isinstance(arg, list) else str(arg).split(".")[0]
                return self._resource(str(logical))
            if key == "Fn::If":
                name, when_true, when_false = arg
                return self.value(when_true if self.condition(str(name)) else when_false)
            if key == "Fn::Select":
                index, items = self.value(arg[0]), self.value(arg[1])
                return items[int(index)]
            if key == "Fn::Split":
                delimiter, text = arg[0], self.value(arg[1])
                return str(text).split(str(delimiter))
            if key == "Fn::Join":
                delimiter, items = arg[0], self.value(arg[1])
                return str(delimiter).join(str(i) for i in items)
            if key == "Fn::Sub":
                return self._sub(arg)
            if key.startswith("Fn::") or key == "Condition":
                raise FirewallError(f"intrinsic {key} is not supported: {node!r}")
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not NO_VALUE}

    def _ref(self, name: str) -> Any:
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.values:
            return self.values[name]
        if name in self.PSEUDO:
            return self.PSEUDO[name]
        return self._resource(name)

    def _resource(self, logical_id: str) -> ResourceRef:
        if logical_id not in self.template.get("Resources", {}):
            raise FirewallError(f"reference to unknown resource or parameter {logical_id}")
        return ResourceRef(logical_id)

    def _sub(self, arg: Any) -> str:
        text, variables = (arg, {}) if isinstance(arg, str) else (arg[0], arg[1])
        local = {k: self.value(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            value = local[name] if name in local else self._ref(name)
            if isinstance(value, (ResourceRef, _NoValue)):
                raise FirewallError(f"Fn::Sub of {name} needs a deployed resource's value: {text!r}")
            return str(value)

        return _SUB_VARIABLE.sub(replace, str(text))


@dataclass(frozen=True)
class Ingress:
    """One admitted flow: protocol (tcp, udp, icmp or all), port range (None: every port) and one source."""

    name: str
    protocol: str
    from_port: int | None
    to_port: int | None
    cidr: str | None = None
    source_group: str | None = None
    description: str = ""

    def covers(self, protocol: str, port: int) -> bool:
        if self.protocol not in ("all", protocol):
            return False
        if self.from_port is None or self.to_port is None:
            return True
        return self.from_port <= port <= self.to_port


def _ingress(name: str, props: Mapping[str, Any]) -> Ingress:
    raw = str(props.get("IpProtocol", ""))
    if raw not in _PROTOCOLS:
        raise FirewallError(f"{name}: IpProtocol {raw!r} is not supported")
    protocol = _PROTOCOLS[raw]
    ports: tuple[int | None, int | None] = (None, None)
    if protocol in ("tcp", "udp") and "FromPort" in props:
        low, high = int(props["FromPort"]), int(props["ToPort"])
        if not (low == -1 and high == -1):
            ports = (low, high)
    sources = [k for k in ("CidrIp", "SourceSecurityGroupId", "CidrIpv6", "SourcePrefixListId") if k in props]
    if len(sources) != 1:
        raise FirewallError(f"{name}: exactly one source is needed, got {sources}")
    description = str(props.get("Description", ""))
    if sources[0] == "CidrIp":
        cidr = str(props["CidrIp"])
        try:
            ipaddress.IPv4Network(cidr)
        except ValueError as exc:
            raise FirewallError(f"{name}: CidrIp {cidr!r} is not an IPv4 network: {exc}") from None
        return Ingress(name, protocol, *ports, cidr=cidr, description=description)
    if sources[0] == "SourceSecurityGroupId":
        group = props["SourceSecurityGroupId"]
        if not isinstance(group, ResourceRef):
            raise FirewallError(f"{name}: SourceSecurityGroupId must name a group of the template, got {group!r}")
        return Ingress(name, protocol, *ports, source_group=group.logical_id, description=description)
    raise FirewallError(f"{name}: {sources[0]} is not modelled")


def security_group_ingress(template: Mapping[str, Any], group: str, parameters: Mapping[str, str]) -> list[Ingress]:
    """Every ingress rule of security group `group` (its inline rules and the `AWS::EC2::SecurityGroupIngress`
    resources attached to it whose Condition holds) for these parameter values."""
    ev = TemplateEvaluator(template, parameters)
    resources: Mapping[str, Any] = template.get("Resources", {})
    if resources.get(group, {}).get("Type") != "AWS::EC2::SecurityGroup":
        raise FirewallError(f"{group} is not an AWS::EC2::SecurityGroup of the template")
    rules: list[Ingress] = []
    inline = ev.value(resources[group].get("Properties", {})).get("SecurityGroupIngress", [])
    for index, props in enumerate(inline):
        rules.append(_ingress(f"{group}.SecurityGroupIngress[{index}]", props))
    for logical, res in resources.items():
        if res.get("Type") != "AWS::EC2::SecurityGroupIngress" or not ev.condition(res.get("Condition")):
            continue
        props = ev.value(res.get("Properties", {}))
        target = props.get("GroupId")
        if target == ResourceRef(group):
            rules.append(_ingress(logical, props))
    return rules


def _sources(rule: Ingress, members: Mapping[str, Sequence[str]]) -> list[str]:
    if rule.cidr is not None:
        return [rule.cidr]
    return [f"{ip}/32" for ip in members.get(rule.source_group or "", ())]


def admits(
    rules: Iterable[Ingress], members: Mapping[str, Sequence[str]], source: str, protocol: str, port: int
) -> list[str]:
    """The names of the rules that admit a new flow from `source` to `protocol`/`port` (empty: dropped)."""
    address = ipaddress.IPv4Address(source)
    return [
        rule.name
        for rule in rules
        if rule.covers(protocol, port) and any(address in ipaddress.IPv4Network(s) for s in _sources(rule, members))
    ]


def iptables_ruleset(rules: Iterable[Ingress], members: Mapping[str, Sequence[str]]) -> str:
    """The filter table for ``iptables-restore``: INPUT admits loopback, established/related traffic and the
    rules' flows (chain ``SG_INGRESS``, one line per source, commented with the rule's name); the rest is
    dropped by a final rule whose counter shows what was refused. OUTPUT and FORWARD stay open (the group's
    egress allows everything)."""
    lines = [
        "*filter",
        ":INPUT DROP [0:0]",
        ":FORWARD ACCEPT [0:0]",
        ":OUTPUT ACCEPT [0:0]",
        f":{CHAIN} - [0:0]",
        "-A INPUT -i lo -j ACCEPT",
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        f"-A INPUT -j {CHAIN}",
        f'-A INPUT -m comment --comment "{DROP_COMMENT}" -j DROP',
    ]
    for rule in rules:
        match = [] if rule.protocol == "all" else ["-p", rule.protocol]
        if rule.from_port is not None and rule.to_port is not None:
            match += ["--dport", f"{rule.from_port}:{rule.to_port}"]
        comment = re.sub(r"[^A-Za-z0-9_.\[\]-]", "_", rule.name)[:200]
        for source in _sources(rule, members):
            lines.append(" ".join([f"-A {CHAIN}", "-s", source, *match, "-m comment --comment", comment, "-j ACCEPT"]))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def keep_chains(ruleset: str, saved: str, prefix: str = "f2b-") -> str:
    """``ruleset`` with the chains named ``prefix…`` of ``saved`` (``iptables-save`` of the namespace, where the
    host's fail2ban keeps its bans), and INPUT's jumps to them still ahead of every other INPUT rule: rewriting
    the security group leaves the host's own firewall as it was, as a security group change on EC2 does."""
    declared: list[str] = []
    jumps: list[str] = []
    rules: list[str] = []
    table = ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line[1:]
            continue
        if table != "filter":
            continue
        words = line.split()
        if line.startswith(":" + prefix):
            declared.append(f"{words[0]} - [0:0]")
        elif len(words) > 1 and words[0] == "-A" and words[1].startswith(prefix):
            rules.append(line)
        elif words[:2] == ["-A", "INPUT"] and "-j" in words and words[words.index("-j") + 1].startswith(prefix):
            jumps.append(line)
    if not declared:
        return ruleset
    lines = ruleset.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("-A "))
    commit = len(lines) - 1 - lines[::-1].index("COMMIT")
    kept = lines[:first] + declared + jumps + lines[first:commit] + rules + lines[commit:]
    return "\n".join(kept) + "\n"


@dataclass(frozen=True)
class HostFirewall:
    """The hosts' security group as local mode enforces it in every host's namespace: its rules, its logical id
    (the hosts are its members) and the private addresses of other groups' members that rules name."""

    group: str
    rules: tuple[Ingress, ...]
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_template(
        cls,
        path: Path,
        parameters: Mapping[str, str],
        group: str = "SipSecurityGroup",
        members: Mapping[str, Sequence[str]] | None = None,
    ) -> HostFirewall:
        from sip_trunk_local.controlplane import load_template

        rules = security_group_ingress(load_template(path), group, parameters)
        return cls(group, tuple(rules), {k: tuple(v) for k, v in (members or {}).items()})

    def ruleset(self, host_ips: Sequence[str]) -> str:
        return iptables_ruleset(self.rules, {**self.members, self.group: tuple(host_ips)})

    def admits(self, host_ips: Sequence[str], source: str, protocol: str, port: int) -> list[str]:
        return admits(self.rules, {**self.members, self.group: tuple(host_ips)}, source, protocol, port)

    def without(self, *names: str) -> HostFirewall:
        """The same firewall missing the named rules (a planted defect: what a lost rule would break)."""
        unknown = set(names) - {r.name for r in self.rules}
        if unknown:
            raise FirewallError(f"no such rules: {sorted(unknown)}")
        return replace(self, rules=tuple(r for r in self.rules if r.name not in names))
