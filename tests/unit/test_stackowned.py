"""Which settings a deployment runs: the operator's document with the fields the stack owns (ADR-16)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from sip_trunk.settings import SettingsError
from sip_trunk.stackowned import effective_settings

pytestmark = pytest.mark.unit

TRUNK = {
    "phone_number": "+14155550100",
    "outbound_username": "gateway-out",
    "outbound_password": "secretsmanager:stk/sip/outbound-password",
    "inbound_username": "elevenlabs-in",
    "inbound_password": "secretsmanager:stk/sip/inbound-password",
}


def template(**network: Any) -> dict[str, Any]:
    return {
        "name": "stk",
        "elevenlabs": dict(TRUNK),
        "network": {"public_address": "198.51.100.7", "local_nets": ["10.1.0.0/16"], **network},
        "tls": {"enabled": True},
        "dialplan": {"recording": True},
    }


def operator(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "mine", "elevenlabs": {**TRUNK, "inbound_username": "acme-in"}}
    for section, values in changes.items():
        doc[section] = values
    return copy.deepcopy(doc)


def test_without_an_operator_document_the_template_document_is_used_unchanged() -> None:
    doc = template()
    result = effective_settings(doc, None)
    assert result.source == "template"
    assert result.document is doc
    assert result.notes == ()


def test_the_operator_document_wins_except_for_the_stack_facts() -> None:
    result = effective_settings(template(), operator(network={"public_address": "203.0.113.10"}))
    assert result.source == "operator"
    assert result.settings.elevenlabs.inbound_username == "acme-in"
    assert result.settings.name == "stk"
    assert result.settings.network.public_address == "198.51.100.7"
    # local_nets left out: the stack's network only (not the model's 10.0.0.0/16 default)
    assert result.settings.network.local_nets == ["10.1.0.0/16"]
    assert any(n.startswith("network.public_address: 203.0.113.10") for n in result.notes)
    assert any(n.startswith("name: 'mine'") for n in result.notes)


def test_the_vpc_network_stays_first_in_local_nets() -> None:
    result = effective_settings(template(), operator(network={"local_nets": ["192.168.0.0/24"]}))
    assert result.settings.network.local_nets == ["10.1.0.0/16", "192.168.0.0/24"]
    assert any(n.startswith("network.local_nets") for n in result.notes)
    same = effective_settings(template(), operator(network={"local_nets": ["10.1.0.0/16"]}))
    assert same.settings.network.local_nets == ["10.1.0.0/16"]
    assert same.notes == ("name: 'mine' is replaced by the stack's deployment name 'stk'",)


def test_the_dns_name_is_the_stacks_only_when_the_stack_manages_it() -> None:
    mine = operator(network={"public_hostname": "sip.acme.example"})
    assert effective_settings(template(), mine).settings.network.public_hostname == "sip.acme.example"
    managed = effective_settings(template(public_hostname="sip.stack.example"), mine)
    assert managed.settings.network.public_hostname == "sip.stack.example"


@pytest.mark.parametrize("field", ["sip_port", "tls_port", "rtp_port_start", "rtp_port_end"])
def test_ports_the_security_group_opens_cannot_change(field: str) -> None:
    values = {"sip_port": 5080, "tls_port": 5081, "rtp_port_start": 12000, "rtp_port_end": 19998}
    with pytest.raises(SettingsError, match=rf"network\.{field}: the stack's security group opens"):
        effective_settings(template(), operator(network={field: values[field]}))


def test_capabilities_can_be_turned_off_but_not_on() -> None:
    no_tls = template()
    no_tls["tls"] = {"enabled": False}
    no_tls["dialplan"] = {"recording": False}
    with pytest.raises(SettingsError) as raised:
        effective_settings(no_tls, operator(tls={"enabled": True}, dialplan={"recording": True}))
    assert "tls.enabled: the stack opens no SIP TLS 5061" in str(raised.value)
    assert "dialplan.recording: the stack has no recordings bucket" in str(raised.value)
    assert "2 problem(s)" in str(raised.value)
    off = effective_settings(template(), operator(tls={"enabled": False}, dialplan={"recording": False}))
    assert off.settings.tls.enabled is False
    assert off.settings.dialplan.recording is False


def test_each_document_is_named_in_its_errors() -> None:
    with pytest.raises(SettingsError, match=r"^operator settings: .*\n  - elevenlabs\.phone_number"):
        effective_settings(template(), operator(elevenlabs={**TRUNK, "phone_number": "123"}))
    broken = template()
    broken["elevenlabs"]["phone_number"] = "123"
    with pytest.raises(SettingsError, match=r"^template settings: "):
        effective_settings(broken, None)
