"""The strict SDK conformance checker, and the request bodies the client builds held to the SDK models."""

from __future__ import annotations

from typing import Any

import pytest
from sip_trunk.elevenlabs import DesiredTrunk, InboundTrunk, OutboundTrunk
from support.fakes import live_number
from support.sdk_conformance import CREATE_REQUEST, GET_RESPONSE, UPDATE_REQUEST, conformance_errors

pytestmark = pytest.mark.unit

GATEWAY_HOST = "sip.gateway.example"


def desired(**changes: Any) -> DesiredTrunk:
    base: dict[str, Any] = {
        "phone_number": "+14155550100",
        "label": "aws-sip-trunk gateway",
        "address": "203.0.113.10:5060",
        "username": "elevenlabs",
        "password": "s3cret-outbound-pw",
    }
    base.update(changes)
    return DesiredTrunk.model_validate(base)


VARIANTS = {
    "tcp": {},
    "tcp+inbound-credentials+agent": {
        "inbound_username": "gw",
        "inbound_password": "s3cret-inbound-pw",
        "agent_id": "agent_1",
    },
    "tls": {"address": GATEWAY_HOST, "transport": "tls", "remote_domains": (GATEWAY_HOST,)},
    "tls+srtp+inbound-credentials+agent+allowlist": {
        "address": f"{GATEWAY_HOST}:5061",
        "transport": "tls",
        "media_encryption": "required",
        "remote_domains": (GATEWAY_HOST,),
        "inbound_username": "gw",
        "inbound_password": "s3cret-inbound-pw",
        "agent_id": "agent_1",
        "allowed_addresses": ("203.0.113.10/32",),
    },
    "tls+srtp-per-direction": {
        "address": GATEWAY_HOST,
        "transport": "tls",
        "media_encryption": "required",
        "inbound_media_encryption": "allowed",
        "remote_domains": (GATEWAY_HOST,),
    },
}


def operator_number(want: DesiredTrunk) -> Any:
    """The number as read after an operator set every optional field the dashboard offers."""
    return live_number(
        want,
        inbound_trunk=InboundTrunk(
            media_encryption="allowed",
            has_auth_credentials=True,
            username="operator-user",
            allowed_addresses=["198.51.100.0/24"],
            allowed_numbers=["+14155550199"],
            remote_domains=["other.example"],
            attributes_to_headers={"caller": "X-Caller"},
        ),
        outbound_trunk=OutboundTrunk(
            address="198.51.100.7",
            transport="udp",
            media_encryption="allowed",
            has_auth_credentials=True,
            username="old",
            headers={"X-Team": "support"},
            attributes_to_headers={"ticket": "X-Ticket"},
            enabled_codecs=["PCMU/8000", "G722/8000"],
        ),
    )


# --- the checker itself (negative controls) -----------------------------------------------------------
def test_checker_accepts_a_conforming_body() -> None:
    body = {"label": "x", "inbound_trunk_config": {"media_encryption": "disabled", "allowed_addresses": []}}
    assert conformance_errors(UPDATE_REQUEST, body) == []


def test_checker_rejects_an_unknown_field_even_nested() -> None:
    errors = conformance_errors(UPDATE_REQUEST, {"label": "x", "inbound_trunk_config": {"allowed_ips": []}})
    assert errors == ["$.inbound_trunk_config.allowed_ips: not a field of InboundSipTrunkConfigRequestModel"]


def test_checker_rejects_a_missing_required_field() -> None:
    errors = conformance_errors(UPDATE_REQUEST, {"outbound_trunk_config": {"transport": "tcp"}})
    assert errors == ["$.outbound_trunk_config.address: required by OutboundSipTrunkConfigRequestModel but missing"]


def test_checker_rejects_a_value_outside_the_enum_the_sdk_lets_through() -> None:
    # The SDK's own model accepts it (its enums end in `| Any`); the checker does not.
    body = {"outbound_trunk_config": {"address": "h", "transport": "sctp", "enabled_codecs": ["OPUS/48000"]}}
    assert UPDATE_REQUEST.model_validate(body) is not None
    assert conformance_errors(UPDATE_REQUEST, body) == [
        "$.outbound_trunk_config.transport: 'sctp' is not one of ['auto', 'udp', 'tcp', 'tls']",
        "$.outbound_trunk_config.enabled_codecs[0]: 'OPUS/48000' is not one of ['G722/8000', 'PCMU/8000', 'PCMA/8000']",
    ]


def test_checker_rejects_wrong_types_and_a_missing_required_response_field() -> None:
    body = {"phone_number": "+1", "label": "x", "phone_number_id": "p", "inbound_trunk": {"has_auth_credentials": 1}}
    errors = conformance_errors(GET_RESPONSE, body)
    assert "$.livekit_stack: required by PhoneNumbersGetResponse_SipTrunk but missing" in errors
    assert "$.inbound_trunk.has_auth_credentials: expected bool, got int" in errors
    assert any(e.startswith("$.inbound_trunk.allowed_addresses: required") for e in errors)


# --- what the client sends ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_create_body_conforms_to_the_sdk(variant: str) -> None:
    want = desired(**VARIANTS[variant])
    body = {"provider": "sip_trunk", "phone_number": want.phone_number, **want.request_body()}
    assert conformance_errors(CREATE_REQUEST, body) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_update_body_conforms_to_the_sdk_with_and_without_operator_fields(variant: str) -> None:
    want = desired(**VARIANTS[variant])
    assert conformance_errors(UPDATE_REQUEST, want.request_body()) == []
    assert conformance_errors(UPDATE_REQUEST, want.update_body(live_number(want))) == []
    assert conformance_errors(UPDATE_REQUEST, want.update_body(operator_number(want))) == []


# --- read, merge, write ---------------------------------------------------------------------------------
def test_update_body_carries_every_operator_field_and_overlays_the_products() -> None:
    want = desired()
    body = want.update_body(operator_number(want))
    assert body["inbound_trunk_config"] == {
        "allowed_addresses": ["198.51.100.0/24"],
        "allowed_numbers": ["+14155550199"],
        "remote_domains": ["other.example"],
        "attributes_to_headers": {"caller": "X-Caller"},
        "credentials": {"username": "operator-user"},  # no password: the stored one stays
        "media_encryption": "disabled",
    }
    assert body["outbound_trunk_config"] == {
        "headers": {"X-Team": "support"},
        "attributes_to_headers": {"ticket": "X-Ticket"},
        "enabled_codecs": ["PCMU/8000", "G722/8000"],
        "address": "203.0.113.10:5060",
        "transport": "tcp",
        "media_encryption": "disabled",
        "credentials": {"username": "elevenlabs", "password": "s3cret-outbound-pw"},
    }


def test_update_body_replaces_allowed_addresses_only_when_the_product_owns_them() -> None:
    owned = desired(allowed_addresses=("203.0.113.10/32",))
    assert owned.update_body(operator_number(owned))["inbound_trunk_config"]["allowed_addresses"] == ["203.0.113.10/32"]
    assert desired().update_body(operator_number(desired()))["inbound_trunk_config"]["allowed_addresses"] == [
        "198.51.100.0/24"
    ]


def test_product_inbound_credentials_replace_the_operators() -> None:
    want = desired(inbound_username="gw", inbound_password="s3cret-inbound-pw")
    creds = want.update_body(operator_number(want))["inbound_trunk_config"]["credentials"]
    assert creds == {"username": "gw", "password": "s3cret-inbound-pw"}


def test_allowed_addresses_must_be_ip_addresses_or_cidr_blocks() -> None:
    assert desired(allowed_addresses=("203.0.113.10",)).allowed_addresses == ("203.0.113.10/32",)
    with pytest.raises(ValueError, match="allowed_addresses"):
        desired(allowed_addresses=("gateway.example",))
    with pytest.raises(ValueError, match="allowed_addresses"):
        desired(allowed_addresses=("203.0.113.10/24",))  # host bits set: a typo, not a block
