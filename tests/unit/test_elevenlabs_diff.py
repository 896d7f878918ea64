"""diff_trunk / ensure_trunk / DesiredTrunk: the reconciliation logic, with an in-memory fake API."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from sip_trunk.elevenlabs import (
    DesiredTrunk,
    ElevenLabsClient,
    ElevenLabsError,
    ElevenLabsNotFound,
    ElevenLabsRateLimited,
    ElevenLabsRetryableError,
    ElevenLabsUnavailable,
    InboundTrunk,
    OutboundTrunk,
    TrunkConflictError,
    diff_trunk,
    ensure_trunk,
)
from support.fakes import FakeElevenLabs, live_number

pytestmark = pytest.mark.unit

PASSWORD = "s3cret-outbound-pw"
INBOUND_PASSWORD = "s3cret-inbound-pw"


def desired(**changes: object) -> DesiredTrunk:
    base: dict[str, object] = {
        "phone_number": "+14155550100",
        "label": "aws-sip-trunk gateway",
        "address": "203.0.113.10:5060",
        "transport": "tcp",
        "media_encryption": "disabled",
        "username": "elevenlabs",
        "password": PASSWORD,
    }
    base.update(changes)
    return DesiredTrunk.model_validate(base)


# ------------------------------------------------------------------------------------------- diff
def test_diff_holds_each_trunk_to_its_own_directions_media_encryption() -> None:
    """Negative control: a number whose inbound trunk has the outbound trunk's value (what a sync that ignored
    the inbound direction would leave) is reported as drifted on that field only."""
    want = desired(transport="tls", media_encryption="required", inbound_media_encryption="allowed")
    assert diff_trunk(want, live_number(want)) == []
    stale = live_number(desired(transport="tls", media_encryption="required"))
    mismatches = diff_trunk(want, stale)
    assert [(m.field, m.desired, m.actual) for m in mismatches] == [
        ("inbound_trunk.media_encryption", "allowed", "required")
    ]


def test_diff_is_empty_when_live_number_matches() -> None:
    want = desired(agent_id="agent_1")
    assert diff_trunk(want, live_number(want)) == []


@pytest.mark.parametrize(
    ("field", "change", "expected_actual"),
    [
        ("label", {"label": "old label"}, "old label"),
        ("outbound_trunk.address", {"address": "198.51.100.7:5060"}, "198.51.100.7:5060"),
        ("outbound_trunk.transport", {"transport": "tls"}, "tls"),
        ("outbound_trunk.media_encryption", {"media_encryption": "required"}, "required"),
        ("outbound_trunk.username", {"username": "someone-else"}, "someone-else"),
    ],
)
def test_diff_reports_each_drifted_field(field: str, change: dict[str, object], expected_actual: str) -> None:
    # Given a live number configured from an older desired state
    want = desired()
    actual = live_number(desired(**change))
    # When compared
    mismatches = diff_trunk(want, actual)
    # Then the drifted field is reported with both values
    by_field = {m.field: m for m in mismatches}
    assert field in by_field
    assert by_field[field].actual == expected_actual
    assert by_field[field].desired == getattr(want, field.split(".")[-1])


def test_diff_reports_wrong_host_even_if_only_the_port_differs() -> None:
    want = desired(address="203.0.113.10:5061", transport="tls")
    mismatches = diff_trunk(want, live_number(desired(address="203.0.113.10:5060", transport="tls")))
    assert [m.field for m in mismatches] == ["outbound_trunk.address"]


def test_diff_agent_only_when_desired_names_one() -> None:
    assert diff_trunk(desired(), live_number(desired(agent_id="agent_other"))) == []
    mismatches = diff_trunk(desired(agent_id="agent_1"), live_number(desired(agent_id="agent_other")))
    assert [(m.field, m.desired, m.actual) for m in mismatches] == [("agent_id", "agent_1", "agent_other")]
    unassigned = diff_trunk(desired(agent_id="agent_1"), live_number(desired()))
    assert [(m.field, m.actual) for m in unassigned] == [("agent_id", None)]


def test_diff_missing_outbound_trunk() -> None:
    mismatches = diff_trunk(desired(), live_number(desired(), outbound_trunk=None))
    assert [m.field for m in mismatches] == ["outbound_trunk"]


def test_diff_reads_deprecated_provider_config_when_outbound_trunk_is_absent() -> None:
    want = desired()
    old_shape = live_number(want, outbound_trunk=None, provider_config=live_number(want).outbound_trunk)
    assert diff_trunk(want, old_shape) == []


def test_diff_password_never_shown_and_missing_credentials_reported() -> None:
    want = desired()
    actual = live_number(
        want,
        outbound_trunk=OutboundTrunk(
            address=want.address, transport="tcp", media_encryption="disabled", username="elevenlabs"
        ),
    )
    mismatches = diff_trunk(want, actual)
    assert [(m.field, m.desired, m.actual) for m in mismatches] == [("outbound_trunk.password", "***", "missing")]
    rendered = repr(mismatches) + str(mismatches) + "".join(m.model_dump_json() for m in mismatches)
    assert PASSWORD not in rendered


def test_diff_configured_password_is_equal_unless_rotation_is_declared() -> None:
    want = desired()
    assert diff_trunk(want, live_number(want)) == []
    rotated = diff_trunk(want, live_number(want), assume_password_changed=True)
    assert [(m.field, m.desired, m.actual) for m in rotated] == [("outbound_trunk.password", "***", "unknown")]


def test_diff_inbound_credentials() -> None:
    want = desired(inbound_username="gateway", inbound_password=INBOUND_PASSWORD)
    assert diff_trunk(want, live_number(want)) == []
    without = live_number(want, inbound_trunk=InboundTrunk(media_encryption="disabled"))
    fields = {m.field: m for m in diff_trunk(want, without)}
    assert set(fields) == {"inbound_trunk.username", "inbound_trunk.password"}
    assert INBOUND_PASSWORD not in repr(fields)


def test_diff_flags_non_sip_trunk_provider() -> None:
    mismatches = diff_trunk(desired(), live_number(desired(), provider="twilio"))
    assert ("provider", "sip_trunk", "twilio") in [(m.field, m.desired, m.actual) for m in mismatches]


# ----------------------------------------------------------------------------------------- ensure
def test_ensure_creates_when_missing() -> None:
    api = FakeElevenLabs()
    result = ensure_trunk(api, desired())
    assert result.action == "created"
    assert [d.phone_number for d in api.created] == ["+14155550100"]
    assert api.updated == []


def test_ensure_is_a_no_op_when_equal() -> None:
    want = desired()
    api = FakeElevenLabs(live_number(want))
    result = ensure_trunk(api, want)
    assert (result.action, result.phone_number_id, result.mismatches) == ("unchanged", "phnum_1", [])
    assert api.created == []
    assert api.updated == []


def test_ensure_patches_drift_then_settles() -> None:
    # Given a number pointing at the previous Elastic IP
    api = FakeElevenLabs(live_number(desired(address="198.51.100.7")))
    want = desired()
    # When ensured twice
    first = ensure_trunk(api, want)
    second = ensure_trunk(api, want)
    # Then exactly one PATCH happened and the second run did nothing
    assert first.action == "updated"
    assert [m.field for m in first.mismatches] == ["outbound_trunk.address"]
    assert api.updated == [("phnum_1", want)]
    assert second.action == "unchanged"


def test_ensure_create_then_rerun_is_idempotent() -> None:
    api = FakeElevenLabs()
    assert ensure_trunk(api, desired()).action == "created"
    assert ensure_trunk(api, desired()).action == "unchanged"
    assert len(api.created) == 1
    assert api.updated == []


def test_ensure_refuses_to_convert_a_twilio_number() -> None:
    api = FakeElevenLabs(live_number(desired(), provider="twilio"))
    with pytest.raises(TrunkConflictError, match="twilio"):
        ensure_trunk(api, desired())
    assert api.updated == []


def test_ensure_rotation_forces_one_patch() -> None:
    want = desired()
    api = FakeElevenLabs(live_number(want))
    result = ensure_trunk(api, want, assume_password_changed=True)
    assert result.action == "updated"
    assert PASSWORD not in result.model_dump_json()


# ---------------------------------------------------------------------------------- desired model
@pytest.mark.parametrize("number", ["14155550100", "+0123", "+1 415 555 0100", "+1415555010012345", ""])
def test_desired_rejects_non_e164(number: str) -> None:
    with pytest.raises(ValidationError, match=r"E\.164"):
        desired(phone_number=number)


@pytest.mark.parametrize(
    "address",
    [
        "sip:203.0.113.10",
        "203.0.113.10;transport=tcp",
        "gw.example.com:70000",
        "user@gw.example.com",
        "gw.example.com/path",
        "-bad.example.com",
        "",
    ],
)
def test_desired_rejects_addresses_that_are_not_host_port(address: str) -> None:
    with pytest.raises(ValidationError):
        desired(address=address)


@pytest.mark.parametrize(
    "address", ["203.0.113.10", "203.0.113.10:5061", "sip.gw.example.com", "gw-1.example.com:5060"]
)
def test_desired_accepts_host_port(address: str) -> None:
    assert desired(address=address).address == address


def test_desired_rejects_udp_and_unknown_encryption() -> None:
    with pytest.raises(ValidationError):
        desired(transport="udp")
    with pytest.raises(ValidationError):
        desired(media_encryption="sometimes")


def test_desired_requires_inbound_username_and_password_together() -> None:
    with pytest.raises(ValidationError, match="together"):
        desired(inbound_username="gw")
    with pytest.raises(ValidationError, match="together"):
        desired(inbound_password=INBOUND_PASSWORD)


def test_desired_rejects_empty_password() -> None:
    with pytest.raises(ValidationError):
        desired(password="")


def test_desired_hides_passwords_in_repr_and_dump() -> None:
    want = desired(inbound_username="gw", inbound_password=INBOUND_PASSWORD)
    shown = repr(want) + str(want) + want.model_dump_json()
    assert PASSWORD not in shown
    assert INBOUND_PASSWORD not in shown


def test_request_body_matches_the_documented_shape() -> None:
    body = desired(agent_id="agent_1", inbound_username="gw", inbound_password=INBOUND_PASSWORD).request_body()
    assert body == {
        "label": "aws-sip-trunk gateway",
        "agent_id": "agent_1",
        "inbound_trunk_config": {
            "media_encryption": "disabled",
            "credentials": {"username": "gw", "password": INBOUND_PASSWORD},
        },
        "outbound_trunk_config": {
            "address": "203.0.113.10:5060",
            "transport": "tcp",
            "media_encryption": "disabled",
            "credentials": {"username": "elevenlabs", "password": PASSWORD},
        },
    }


# ------------------------------------------------------------------------------- client (no I/O)
def test_exception_hierarchy_marks_retryable_errors() -> None:
    assert issubclass(ElevenLabsRateLimited, ElevenLabsRetryableError)
    assert issubclass(ElevenLabsUnavailable, ElevenLabsRetryableError)
    assert issubclass(ElevenLabsRetryableError, ElevenLabsError)
    assert not issubclass(TrunkConflictError, ElevenLabsRetryableError)


def test_client_repr_hides_the_key() -> None:
    client = ElevenLabsClient("xi-secret-key", "http://127.0.0.1:9")
    assert "xi-secret-key" not in repr(client) + str(client) + repr(vars(client))


@pytest.mark.parametrize("base_url", ["file:///etc/passwd", "ftp://api.elevenlabs.io", "api.elevenlabs.io"])
def test_client_refuses_non_http_base_urls(base_url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        ElevenLabsClient("k", base_url)


def test_ensure_with_a_configured_id_updates_that_number() -> None:
    want = desired()
    api = FakeElevenLabs(live_number(want, "phnum_configured", label="old label"))
    result = ensure_trunk(api, want, phone_number_id="phnum_configured")
    assert (result.action, result.phone_number_id) == ("updated", "phnum_configured")


def test_ensure_with_a_configured_id_that_is_gone_creates_nothing() -> None:
    api = FakeElevenLabs()
    with pytest.raises(ElevenLabsNotFound):
        ensure_trunk(api, desired(), phone_number_id="phnum_missing")
    assert api.created == []


def test_ensure_with_a_configured_id_of_another_number_is_a_conflict() -> None:
    want = desired()
    other = live_number(desired(phone_number="+14155550199"), "phnum_other")
    api = FakeElevenLabs(other)
    with pytest.raises(TrunkConflictError, match="phnum_other"):
        ensure_trunk(api, want, phone_number_id="phnum_other")


# ---------------------------------------------------------------------- remote domains (TLS contract)
GATEWAY_HOST = "sip.gateway.example"


def tls_desired(**changes: object) -> DesiredTrunk:
    return desired(address=GATEWAY_HOST, transport="tls", remote_domains=(GATEWAY_HOST,), **changes)


def test_diff_reports_a_missing_remote_domain() -> None:
    # Given a number whose inbound trunk lists no remote domain (BYE/REFER from the Via host would be refused)
    want = tls_desired()
    actual = live_number(want, inbound_trunk=InboundTrunk(has_auth_credentials=False, media_encryption="disabled"))
    # When compared, Then the missing domain is reported by name
    mismatches = diff_trunk(want, actual)
    assert [(m.field, m.desired, m.actual) for m in mismatches] == [
        ("inbound_trunk.remote_domains", GATEWAY_HOST, None)
    ]


def test_diff_accepts_remote_domains_the_operator_added() -> None:
    want = tls_desired()
    inbound = InboundTrunk(media_encryption="disabled", remote_domains=["other.example", GATEWAY_HOST])
    assert diff_trunk(want, live_number(want, inbound_trunk=inbound)) == []


def test_ensure_converges_remote_domains_and_keeps_the_operators() -> None:
    # Given a number that lists another domain but not the gateway's host name
    want = tls_desired()
    inbound = InboundTrunk(media_encryption="disabled", remote_domains=["other.example"])
    api = FakeElevenLabs(live_number(want, inbound_trunk=inbound))
    # When ensured twice
    first = ensure_trunk(api, want)
    second = ensure_trunk(api, want)
    # Then one PATCH sent both domains, and the second run changed nothing
    assert first.action == "updated"
    assert [m.field for m in first.mismatches] == ["inbound_trunk.remote_domains"]
    sent = api.updated[0][1].request_body()["inbound_trunk_config"]["remote_domains"]
    assert sent == ["other.example", GATEWAY_HOST]
    assert second.action == "unchanged"
    assert len(api.updated) == 1


def test_an_update_keeps_a_listed_domain_in_its_own_case_and_adds_no_twin() -> None:
    # Given a number listing the gateway's name in capitals, whose label drifted
    want = tls_desired()
    inbound = InboundTrunk(media_encryption="disabled", remote_domains=[GATEWAY_HOST.upper()])
    api = FakeElevenLabs(live_number(want, label="old", inbound_trunk=inbound))
    # When ensured, Then the domain counts as listed and the update sends it once
    result = ensure_trunk(api, want)
    assert [m.field for m in result.mismatches] == ["label"]
    assert api.updated[0][1].request_body()["inbound_trunk_config"]["remote_domains"] == [GATEWAY_HOST.upper()]


def test_request_body_sends_remote_domains_only_when_desired() -> None:
    assert tls_desired().request_body()["inbound_trunk_config"]["remote_domains"] == [GATEWAY_HOST]
    assert "remote_domains" not in desired().request_body()["inbound_trunk_config"]


@pytest.mark.parametrize("domain", ["sip:gw.example", "gw.example;transport=tls", "gw example", "", "gw.example:5061"])
def test_desired_rejects_remote_domains_that_are_not_host_names(domain: str) -> None:
    with pytest.raises(ValidationError):
        desired(remote_domains=(domain,))


def test_diff_reports_allowed_addresses_only_when_owned_and_compares_them_as_networks() -> None:
    owned = desired(allowed_addresses=("203.0.113.10/32",))
    operator = InboundTrunk(media_encryption="disabled", allowed_addresses=["198.51.100.0/24"])
    assert [(m.field, m.desired, m.actual) for m in diff_trunk(owned, live_number(owned, inbound_trunk=operator))] == [
        ("inbound_trunk.allowed_addresses", "203.0.113.10/32", "198.51.100.0/24")
    ]
    # The same address written without its prefix length is the same allowlist
    plain = InboundTrunk(media_encryption="disabled", allowed_addresses=["203.0.113.10"])
    assert diff_trunk(owned, live_number(owned, inbound_trunk=plain)) == []
    # Not owned: whatever the operator allowlisted is not a drift
    assert diff_trunk(desired(), live_number(desired(), inbound_trunk=operator)) == []


def test_ensure_sends_the_number_as_read_with_the_products_fields_over_it() -> None:
    want = desired()
    inbound = InboundTrunk(media_encryption="disabled", allowed_numbers=["+14155550199"], allowed_addresses=[])
    api = FakeElevenLabs(live_number(want, label="old", inbound_trunk=inbound))
    result = ensure_trunk(api, want)
    assert [m.field for m in result.mismatches] == ["label"]
    sent = api.update_bodies[0]["inbound_trunk_config"]
    assert (sent["allowed_numbers"], sent["allowed_addresses"]) == (["+14155550199"], [])
