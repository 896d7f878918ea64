"""Which settings document a deployment runs on AWS, and the fields its stack owns (ADR-16).

The root stack writes a *template document* from its parameters (`SettingsParameter`). An operator may store
a complete document of their own in the *operator parameter* (`sip-trunk push`; not a CloudFormation
resource, so no stack update touches it). When it exists it is the source of truth, except for what the stack
itself built, which the document cannot change:

- **taken from the stack** (a differing value is replaced and reported in `notes`): `name` (the
  `DeploymentName` parameter), `network.public_address` (the Elastic IP), `network.public_hostname` when the
  stack manages the DNS record or the operator's certificate secret (the name it must cover), and the VPC
  network, which always stays first in `network.local_nets` (the operator's networks follow it);
- **fixed by the security group** (a differing value is refused): `network.sip_port`, `network.tls_port`,
  `network.rtp_port_start`, `network.rtp_port_end`;
- **only if the stack built it** (may be turned off, not on; refused otherwise): `network.udp_enabled`
  (UDP 5060 is open only to `AllowedSipCidrs`), `tls.enabled` (5061 only with `EnableTls`),
  `dialplan.recording` (the recordings bucket only with `RecordingsEnabled`).

Everything else — the ElevenLabs trunk (including which secrets it references), carriers, softphones, the
dialplan and the IVR — is the operator's. Pure: no I/O; used by the functions and by `sip-trunk push`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sip_trunk.settings import Settings, SettingsError, parse_settings

Source = Literal["template", "operator"]

FIXED_PORTS = ("sip_port", "tls_port", "rtp_port_start", "rtp_port_end")


@dataclass(frozen=True)
class EffectiveSettings:
    settings: Settings
    document: Any
    """The document the settings were parsed from (what the config version and digest describe)."""
    source: Source
    notes: tuple[str, ...] = ()
    """Stack-owned values that replaced the operator's (never secrets: the document holds only references)."""


def effective_settings(template_document: Any, operator_document: Any | None) -> EffectiveSettings:
    """The settings a deployment runs: the operator's document with the stack's facts, else the template's.

    `SettingsError` (field-pointing, naming which document) when either is invalid or the operator's document
    asks for something the stack did not build."""
    template = parse_settings(template_document, "template settings")
    if operator_document is None:
        return EffectiveSettings(settings=template, document=template_document, source="template")
    operator = parse_settings(operator_document, "operator settings")
    problems = _refusals(template, operator)
    if problems:
        lines = [f"operator settings: {len(problems)} problem(s) with what the stack owns", *problems]
        raise SettingsError("\n".join(f"  - {p}" if i else p for i, p in enumerate(lines)))
    document, notes = _with_stack_facts(template, operator)
    return EffectiveSettings(
        settings=parse_settings(document, "operator settings with the stack's fields"),
        document=document,
        source="operator",
        notes=tuple(notes),
    )


def _refusals(template: Settings, operator: Settings) -> list[str]:
    problems: list[str] = []
    for name in FIXED_PORTS:
        stack_value, wanted = getattr(template.network, name), getattr(operator.network, name)
        if wanted != stack_value:
            problems.append(
                f"network.{name}: the stack's security group opens {stack_value}, not {wanted}; "
                "remove the field or set it to the stack's value"
            )
    capabilities = [
        (
            "network.udp_enabled",
            operator.network.udp_enabled,
            template.network.udp_enabled,
            "the stack opens no SIP UDP 5060 (its AllowedSipCidrs parameter is empty)",
        ),
        (
            "tls.enabled",
            operator.tls.enabled,
            template.tls.enabled,
            "the stack opens no SIP TLS 5061 (its EnableTls parameter is false)",
        ),
        (
            "dialplan.recording",
            operator.dialplan.recording,
            template.dialplan.recording,
            "the stack has no recordings bucket (its RecordingsEnabled parameter is false)",
        ),
    ]
    for where, wanted, built, why in capabilities:
        if wanted and not built:
            problems.append(f"{where}: {why}; turn it on in the stack first, or set it to false")
    return problems


def _with_stack_facts(template: Settings, operator: Settings) -> tuple[dict[str, Any], list[str]]:
    document = operator.model_dump(mode="json")
    notes: list[str] = []
    network = document["network"]
    if operator.name != template.name:
        notes.append(f"name: '{operator.name}' is replaced by the stack's deployment name '{template.name}'")
    document["name"] = template.name
    stack_address = template.network.public_address
    if operator.network.public_address not in (None, stack_address):
        notes.append(
            f"network.public_address: {operator.network.public_address} is replaced by the stack's "
            f"{stack_address or 'Elastic IP'}"
        )
    network["public_address"] = stack_address
    if template.network.public_hostname is not None:
        if operator.network.public_hostname not in (None, template.network.public_hostname):
            notes.append(
                f"network.public_hostname: {operator.network.public_hostname} is replaced by the stack's DNS "
                f"name {template.network.public_hostname}"
            )
        network["public_hostname"] = template.network.public_hostname
    stack_nets = list(template.network.local_nets)
    extra = [n for n in operator.network.local_nets if n not in stack_nets]
    if "local_nets" not in operator.network.model_fields_set:
        extra = []
    elif any(n not in operator.network.local_nets for n in stack_nets):
        notes.append(f"network.local_nets: the stack's network {', '.join(stack_nets)} is added before yours")
    network["local_nets"] = stack_nets + extra
    return document, notes
