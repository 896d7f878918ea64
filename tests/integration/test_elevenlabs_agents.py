"""SyncElevenLabs and the ElevenLabs part of VerifyTrunk for several agents, through the real ElevenLabsClient
over HTTP against the API stand-in on 127.0.0.1 (whose PATCH replaces a nested trunk config as a whole, so a
client that does not read, merge and write loses the operator's fields)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sip_trunk.elevenlabs import ElevenLabsClient, ElevenLabsNotFound
from sip_trunk.workflows import provision
from sip_trunk.workflows.common import load_settings
from sip_trunk_local.elevenlabs_api import ElevenLabsStandIn
from support.fakes import (
    API_KEY,
    INBOUND_PASSWORD,
    OUTBOUND_PASSWORD,
    PUBLIC_IP,
    FakeSettings,
    FakeWorld,
    settings_document,
)
from support.sdk_conformance import UPDATE_REQUEST, conformance_errors

pytestmark = pytest.mark.integration

DEFAULT = "+14155550100"
SALES = "+14155550111"
SUPPORT = "+14155550122"
SUPPORT_PASSWORD = "support-out-password-Q7"
SECRETS = (API_KEY, INBOUND_PASSWORD, OUTBOUND_PASSWORD, SUPPORT_PASSWORD)
OPERATOR_OUTBOUND = {"headers": {"X-Team": "sales"}, "enabled_codecs": ["PCMU/8000"]}


@pytest.fixture
def api() -> Iterator[ElevenLabsStandIn]:
    with ElevenLabsStandIn(API_KEY) as stand_in:
        yield stand_in


def world(api: ElevenLabsStandIn, **sales: Any) -> FakeWorld:
    """Every port in memory except ElevenLabs: the real client against the stand-in."""
    document = settings_document(api_key=True)
    document["agents"] = [
        {"name": "sales", "phone_number": SALES, **sales},
        {
            "name": "support",
            "phone_number": SUPPORT,
            "outbound_username": "support-out",
            "outbound_password": "ssm:/sip-test/sip/support-out",
        },
    ]
    result = FakeWorld(settings=FakeSettings(document))
    result.secrets.values["ssm:/sip-test/sip/support-out"] = SUPPORT_PASSWORD
    result.elevenlabs = lambda key: ElevenLabsClient(key, base_url=api.url, sleep=lambda _: None)  # type: ignore[assignment]
    return result


def render() -> provision.RenderResult:
    return provision.RenderResult(
        version="v0123456789abcdef", previous_version=None, public_address=PUBLIC_IP, published=True, files=10
    )


def sync(w: FakeWorld) -> provision.SyncOutcome:
    return provision.sync_elevenlabs(w.deps, provision.SyncInput(render=render()))


def ids_by_number(outcome: provision.SyncOutcome) -> dict[str, str]:
    return {n.phone_number: n.phone_number_id for n in outcome.numbers}


def test_two_more_numbers_are_imported_each_with_its_credentials_and_verified(api: ElevenLabsStandIn) -> None:
    # When the sync runs for the default agent, sales and support
    w = world(api)
    first = sync(w)
    # Then three numbers exist, each pointing at the gateway, support's calls authenticated with its own user
    ids = ids_by_number(first)
    assert [n.action for n in first.numbers] == ["created"] * 3
    for number in (DEFAULT, SALES, SUPPORT):
        assert api.number(ids[number])["outbound_trunk"]["address"] == PUBLIC_IP
    assert api.number(ids[SALES])["inbound_trunk"]["username"] == "gateway-out"
    assert api.number(ids[SUPPORT])["inbound_trunk"]["username"] == "support-out"
    assert api.stored_password(ids[SUPPORT], "inbound") == SUPPORT_PASSWORD
    assert api.stored_password(ids[SALES], "inbound") == OUTBOUND_PASSWORD
    # And verification finds every number as it must be
    check = provision.verify._elevenlabs_check(w.deps, load_settings(w.settings, w.secrets), PUBLIC_IP)
    assert (check.checked, check.matches, check.mismatches) == (True, True, [])
    assert [(n.agent, n.matches) for n in check.numbers] == [("default", True), ("sales", True), ("support", True)]
    # And a second run writes nothing
    writes = [r for r in api.requests if r.method in {"POST", "PATCH"}]
    assert [n.action for n in sync(w).numbers] == ["unchanged"] * 3
    assert [r for r in api.requests if r.method in {"POST", "PATCH"}] == writes


def test_a_drifted_number_is_merged_on_its_own_and_the_report_names_it(api: ElevenLabsStandIn) -> None:
    # Given the three numbers synced, then sales' address changed and operator fields added in the dashboard
    w = world(api)
    ids = ids_by_number(sync(w))
    api.edit(ids[SALES], outbound={**OPERATOR_OUTBOUND, "address": "198.51.100.9"})
    # Then verification names the agent whose number drifted
    check = provision.verify._elevenlabs_check(w.deps, load_settings(w.settings, w.secrets), PUBLIC_IP)
    assert (check.matches, check.mismatches) == (False, ["sales: outbound_trunk.address"])
    # When synced
    outcome = sync(w)
    # Then only sales' number was written (read, merged, written), the operator's fields survived it
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert [r.path for r in patches] == [f"/v1/convai/phone-numbers/{ids[SALES]}"]
    assert conformance_errors(UPDATE_REQUEST, patches[0].body) == []
    number = api.number(ids[SALES])
    assert number["outbound_trunk"]["address"] == PUBLIC_IP
    for key, value in OPERATOR_OUTBOUND.items():
        assert number["outbound_trunk"][key] == value
    assert f"sales ({SALES}) updated (outbound_trunk.address)" in outcome.describe()
    assert f"support ({SUPPORT}) unchanged" in outcome.describe()


def test_a_number_id_that_does_not_exist_names_its_agent_and_the_others_still_converge(
    api: ElevenLabsStandIn,
) -> None:
    # Given sales configured with a phone_number_id ElevenLabs does not have
    w = world(api, phone_number_id="phnum_0000000000000000deadbeef")
    # When synced, Then the failure is ElevenLabsNotFound (fatal in the state machine) and names sales
    with pytest.raises(ElevenLabsNotFound) as raised:
        sync(w)
    message = str(raised.value)
    assert message.startswith(f"agent sales ({SALES}): GET /v1/convai/phone-numbers/phnum_0000000000000000deadbeef")
    assert not any(secret in message for secret in SECRETS)
    # And the default agent's and support's numbers were imported all the same
    created = sorted(r.body["phone_number"] for r in api.requests if r.method == "POST")
    assert created == [DEFAULT, SUPPORT]
