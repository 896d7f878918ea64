"""The real ElevenLabsClient over HTTP against the in-process stand-in on 127.0.0.1 (never the real API)."""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sip_trunk.elevenlabs import (
    DesiredTrunk,
    ElevenLabsAuthError,
    ElevenLabsClient,
    ElevenLabsError,
    ElevenLabsNotFound,
    ElevenLabsRateLimited,
    ElevenLabsRetryableError,
    ElevenLabsUnavailable,
    ElevenLabsValidationError,
    diff_trunk,
    ensure_trunk,
)
from sip_trunk_local.elevenlabs_api import ElevenLabsStandIn
from support.sdk_conformance import (
    CREATE_REQUEST,
    CREATE_RESPONSE,
    GET_RESPONSE,
    LIST_ITEM,
    UPDATE_REQUEST,
    UPDATE_RESPONSE,
    conformance_errors,
)

pytestmark = pytest.mark.integration

API_KEY = "sk_test_9f8e7d6c5b4a39281706"
PASSWORD = "outbound-pw-Zq81x"
NEW_PASSWORD = "outbound-pw-rotated-Kp20"
INBOUND_PASSWORD = "inbound-pw-Lm55c"
SECRETS = (API_KEY, PASSWORD, NEW_PASSWORD, INBOUND_PASSWORD)


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def api() -> Iterator[ElevenLabsStandIn]:
    with ElevenLabsStandIn(API_KEY) as stand_in:
        yield stand_in


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def client(api: ElevenLabsStandIn, sleep: RecordingSleep) -> ElevenLabsClient:
    return ElevenLabsClient(API_KEY, api.url, timeout_s=2.0, max_attempts=4, sleep=sleep)


@pytest.fixture(autouse=True)
def _capture_everything(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    # caplog.text is reset per phase; by teardown only the call phase's records hold the test's logs.
    logged = "\n".join(r.getMessage() for r in caplog.get_records("call"))
    for secret in SECRETS:
        assert secret not in logged


def desired(**changes: Any) -> DesiredTrunk:
    base: dict[str, Any] = {
        "phone_number": "+14155550100",
        "label": "aws-sip-trunk gateway",
        "address": "203.0.113.10:5060",
        "transport": "tcp",
        "media_encryption": "disabled",
        "username": "elevenlabs",
        "password": PASSWORD,
        "inbound_username": "gateway",
        "inbound_password": INBOUND_PASSWORD,
        "agent_id": "agent_demo",
    }
    base.update(changes)
    return DesiredTrunk.model_validate(base)


def assert_no_secrets(exc: BaseException) -> None:
    shown = f"{exc} {exc!r} {getattr(exc, 'detail', '')} {exc.args!r}"
    for secret in SECRETS:
        assert secret not in shown


def mutations(api: ElevenLabsStandIn) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in api.requests if r.method in {"POST", "PATCH"}]


# ------------------------------------------------------------------------------------- lifecycle
def test_create_get_diff_update_and_idempotent_rerun(api: ElevenLabsStandIn, client: ElevenLabsClient) -> None:
    want = desired()

    # Given no number: ensure creates it
    created = ensure_trunk(client, want)
    assert created.action == "created"
    number_id = created.phone_number_id

    # Then GET returns the documented shape and diff against it is empty
    got = client.get_phone_number(number_id)
    assert got.phone_number == "+14155550100"
    assert got.outbound is not None
    assert (got.outbound.address, got.outbound.transport, got.outbound.media_encryption) == (
        "203.0.113.10:5060",
        "tcp",
        "disabled",
    )
    assert got.outbound.has_auth_credentials
    assert got.assigned_agent is not None
    assert got.assigned_agent.agent_id == "agent_demo"
    assert diff_trunk(want, got) == []
    assert api.stored_password(number_id) == PASSWORD
    assert api.stored_password(number_id, "inbound") == INBOUND_PASSWORD

    # When the Elastic IP moves and TLS is turned on: one PATCH
    moved = desired(address="198.51.100.20:5061", transport="tls")
    updated = ensure_trunk(client, moved)
    assert updated.action == "updated"
    assert {m.field for m in updated.mismatches} == {"outbound_trunk.address", "outbound_trunk.transport"}
    assert diff_trunk(moved, client.get_phone_number(number_id)) == []

    # And a re-run changes nothing
    before = mutations(api)
    again = ensure_trunk(client, moved)
    assert (again.action, again.phone_number_id) == ("unchanged", number_id)
    assert mutations(api) == before
    assert before == [
        ("POST", "/v1/convai/phone-numbers"),
        ("PATCH", f"/v1/convai/phone-numbers/{number_id}"),
    ]


def test_password_rotation_reaches_the_api(api: ElevenLabsStandIn, client: ElevenLabsClient) -> None:
    number_id = ensure_trunk(client, desired()).phone_number_id
    # A rotated password is invisible to GET, so without the flag nothing happens...
    assert ensure_trunk(client, desired(password=NEW_PASSWORD)).action == "unchanged"
    assert api.stored_password(number_id) == PASSWORD
    # ...and with it one PATCH carries the new secret.
    result = ensure_trunk(client, desired(password=NEW_PASSWORD), assume_password_changed=True)
    assert result.action == "updated"
    assert api.stored_password(number_id) == NEW_PASSWORD


def test_list_and_find_by_number(client: ElevenLabsClient) -> None:
    assert client.find_by_number("+14155550100") is None
    number_id = client.create_sip_trunk_phone_number(desired())
    client.create_sip_trunk_phone_number(desired(phone_number="+442071838750", label="London"))
    assert sorted(n.phone_number for n in client.list_phone_numbers()) == ["+14155550100", "+442071838750"]
    found = client.find_by_number("+14155550100")
    assert found is not None
    assert found.phone_number_id == number_id


def test_outbound_call_is_recorded(api: ElevenLabsStandIn, client: ElevenLabsClient) -> None:
    number_id = client.create_sip_trunk_phone_number(desired())
    result = client.outbound_call("agent_demo", number_id, "+14155550199")
    assert result.success
    assert result.conversation_id
    assert result.sip_call_id
    [call] = api.outbound_calls
    assert (call.agent_id, call.agent_phone_number_id, call.to_number) == ("agent_demo", number_id, "+14155550199")
    assert call.conversation_id == result.conversation_id


# ---------------------------------------------------------------------------------------- errors
def test_wrong_key_is_an_auth_error_without_retry(api: ElevenLabsStandIn, sleep: RecordingSleep) -> None:
    wrong = ElevenLabsClient("sk_wrong_" + API_KEY, api.url, sleep=sleep)
    with pytest.raises(ElevenLabsAuthError) as caught:
        wrong.list_phone_numbers()
    assert caught.value.status == 401
    assert "Invalid API key" in str(caught.value)
    assert "sk_wrong_" not in str(caught.value) + repr(caught.value)
    assert_no_secrets(caught.value)
    assert sleep.calls == []
    assert len(api.requests) == 1


def test_unknown_id_is_not_found(client: ElevenLabsClient) -> None:
    with pytest.raises(ElevenLabsNotFound) as caught:
        client.get_phone_number("phnum_missing")
    assert caught.value.status == 404
    assert_no_secrets(caught.value)
    with pytest.raises(ElevenLabsNotFound):
        client.update_phone_number("phnum_missing", desired())
    with pytest.raises(ElevenLabsNotFound):
        client.outbound_call("agent_demo", "phnum_missing", "+14155550199")


class _NoAddress(DesiredTrunk):
    """A body the API must reject: the outbound trunk lacks its required `address`."""

    def request_body(self) -> dict[str, Any]:
        body = super().request_body()
        del body["outbound_trunk_config"]["address"]
        return body


def test_bad_body_is_a_validation_error_with_the_api_detail_and_no_echoed_password(
    api: ElevenLabsStandIn, client: ElevenLabsClient, sleep: RecordingSleep
) -> None:
    bad = _NoAddress.model_validate(
        desired().model_dump() | {"password": PASSWORD, "inbound_password": INBOUND_PASSWORD}
    )
    with pytest.raises(ElevenLabsValidationError) as caught:
        client.create_sip_trunk_phone_number(bad)
    # The stand-in, like FastAPI, echoed the whole outbound config (password included) as `input`.
    assert caught.value.status == 422
    assert "body.outbound_trunk_config.address: Field required" in caught.value.detail
    assert caught.value.detail in str(caught.value)
    assert_no_secrets(caught.value)
    assert sleep.calls == []
    assert api.requests[-1].status == 422


def test_rate_limit_honours_retry_after_then_succeeds(
    api: ElevenLabsStandIn, client: ElevenLabsClient, sleep: RecordingSleep
) -> None:
    api.rate_limit_next(2, retry_after=3)
    assert client.list_phone_numbers() == []
    assert sleep.calls == [3.0, 3.0]
    assert [r.status for r in api.requests] == [429, 429, 200]


def test_rate_limit_is_retried_for_posts_too(
    api: ElevenLabsStandIn, client: ElevenLabsClient, sleep: RecordingSleep
) -> None:
    api.rate_limit_next(1, retry_after=1)
    number_id = client.create_sip_trunk_phone_number(desired())
    assert number_id
    assert sleep.calls == [1.0]
    assert len(client.list_phone_numbers()) == 1


def test_retry_after_is_capped(api: ElevenLabsStandIn, sleep: RecordingSleep) -> None:
    capped = ElevenLabsClient(API_KEY, api.url, max_retry_after_s=5, sleep=sleep)
    api.rate_limit_next(1, retry_after=3600)
    capped.list_phone_numbers()
    assert sleep.calls == [5.0]


def test_rate_limit_exhausted(api: ElevenLabsStandIn, client: ElevenLabsClient, sleep: RecordingSleep) -> None:
    api.rate_limit_next(10, retry_after=2)
    with pytest.raises(ElevenLabsRateLimited) as caught:
        client.list_phone_numbers()
    assert isinstance(caught.value, ElevenLabsRetryableError)
    assert caught.value.status == 429
    assert sleep.calls == [2.0, 2.0, 2.0]
    assert len(api.requests) == 4
    assert_no_secrets(caught.value)


def test_503_exhausts_retries_with_bounded_jittered_backoff(
    api: ElevenLabsStandIn, client: ElevenLabsClient, sleep: RecordingSleep
) -> None:
    api.fail_next(10, 503)
    with pytest.raises(ElevenLabsUnavailable) as caught:
        client.get_phone_number("phnum_x")
    assert isinstance(caught.value, ElevenLabsRetryableError)
    assert caught.value.status == 503
    assert "after 4 attempts" in str(caught.value)
    assert len(api.requests) == 4
    # Full jitter: each wait is within [0, base * 2**n], capped.
    assert len(sleep.calls) == 3
    for n, waited in enumerate(sleep.calls):
        assert 0 <= waited <= min(8.0, 0.5 * 2**n)
    assert_no_secrets(caught.value)


def test_transient_503_then_success(api: ElevenLabsStandIn, client: ElevenLabsClient, sleep: RecordingSleep) -> None:
    api.fail_next(2, 503)
    assert client.list_phone_numbers() == []
    assert len(sleep.calls) == 2


def test_500_on_a_post_is_not_retried(api: ElevenLabsStandIn, client: ElevenLabsClient, sleep: RecordingSleep) -> None:
    # A 500 may mean the create or the call happened: repeating could duplicate it.
    api.fail_next(1, 500)
    with pytest.raises(ElevenLabsUnavailable):
        client.outbound_call("agent_demo", "phnum_x", "+14155550199")
    assert sleep.calls == []
    assert len(api.requests) == 1


def test_500_on_a_patch_is_retried(api: ElevenLabsStandIn, client: ElevenLabsClient, sleep: RecordingSleep) -> None:
    number_id = client.create_sip_trunk_phone_number(desired())
    api.fail_next(1, 500)
    client.update_phone_number(number_id, desired(label="renamed"))
    assert len(sleep.calls) == 1
    assert client.get_phone_number(number_id).label == "renamed"


def test_timeouts_become_unavailable(api: ElevenLabsStandIn, sleep: RecordingSleep) -> None:
    impatient = ElevenLabsClient(API_KEY, api.url, timeout_s=0.1, max_attempts=2, sleep=sleep)
    api.set_latency(0.5)
    with pytest.raises(ElevenLabsUnavailable, match="after 2 attempts") as caught:
        impatient.list_phone_numbers()
    assert len(sleep.calls) == 1
    assert_no_secrets(caught.value)


def test_connection_refused_is_retried_then_unavailable(sleep: RecordingSleep) -> None:
    with ElevenLabsStandIn(API_KEY) as gone:
        url = gone.url
    client = ElevenLabsClient(API_KEY, url, max_attempts=3, sleep=sleep)
    with pytest.raises(ElevenLabsUnavailable, match="after 3 attempts") as caught:
        client.create_sip_trunk_phone_number(desired())
    assert len(sleep.calls) == 2
    assert_no_secrets(caught.value)


def test_every_error_is_an_elevenlabs_error(api: ElevenLabsStandIn, client: ElevenLabsClient) -> None:
    api.fail_next(1, 400)
    with pytest.raises(ElevenLabsError) as caught:
        client.list_phone_numbers()
    assert type(caught.value) is ElevenLabsError
    assert caught.value.status == 400


def test_stand_in_rejects_duplicate_numbers(client: ElevenLabsClient) -> None:
    client.create_sip_trunk_phone_number(desired())
    with pytest.raises(ElevenLabsError) as caught:
        client.create_sip_trunk_phone_number(desired())
    assert caught.value.status == 400


# --------------------------------------------------------------------- remote domains (TLS contract)
def test_remote_domains_round_trip_and_converge(api: ElevenLabsStandIn, client: ElevenLabsClient) -> None:
    # Given a TLS number imported by host name with the host in its remote domains
    want = desired(address="sip.gateway.example", transport="tls", remote_domains=("sip.gateway.example",))
    number_id = ensure_trunk(client, want).phone_number_id
    # Then GET returns the domain on the inbound trunk and nothing differs
    got = client.get_phone_number(number_id)
    assert got.inbound_trunk is not None
    assert got.inbound_trunk.remote_domains == ["sip.gateway.example"]
    assert diff_trunk(want, got) == []
    # When the domain is dropped on the number (another client PATCHed it away), one sync restores it
    client.update_phone_number(number_id, desired(address="sip.gateway.example", transport="tls"))
    assert client.get_phone_number(number_id).inbound_trunk.remote_domains is None  # type: ignore[union-attr]
    fixed = ensure_trunk(client, want)
    assert [m.field for m in fixed.mismatches] == ["inbound_trunk.remote_domains"]
    assert ensure_trunk(client, want).action == "unchanged"


class _DomainAsText(DesiredTrunk):
    """A body the API must reject: `remote_domains` is a list of strings, not one string."""

    def request_body(self) -> dict[str, Any]:
        body = super().request_body()
        body["inbound_trunk_config"]["remote_domains"] = "sip.gateway.example"
        return body


def test_stand_in_refuses_remote_domains_that_are_not_a_list_of_strings(client: ElevenLabsClient) -> None:
    bad = _DomainAsText.model_validate(
        desired().model_dump() | {"password": PASSWORD, "inbound_password": INBOUND_PASSWORD}
    )
    with pytest.raises(ElevenLabsValidationError) as caught:
        client.create_sip_trunk_phone_number(bad)
    assert caught.value.status == 422
    assert "body.inbound_trunk_config.remote_domains: Input should be a valid list" in caught.value.detail


# --- the stand-in and the client held to the official SDK models -------------------------------------
SDK_VARIANTS: dict[str, dict[str, Any]] = {
    "tcp-no-inbound-credentials-no-agent": {"inbound_username": None, "inbound_password": None, "agent_id": None},
    "tcp-with-credentials-and-agent": {},
    "tls": {"address": "sip.gateway.example", "transport": "tls", "remote_domains": ("sip.gateway.example",)},
    "tls-srtp-allowlist": {
        "address": "sip.gateway.example:5061",
        "transport": "tls",
        "media_encryption": "required",
        "remote_domains": ("sip.gateway.example",),
        "allowed_addresses": ("203.0.113.10/32",),
    },
}


@pytest.mark.parametrize("variant", SDK_VARIANTS)
def test_every_request_and_response_conforms_to_the_sdk_models(
    api: ElevenLabsStandIn, client: ElevenLabsClient, variant: str
) -> None:
    # Given a number created, read, listed, then updated (drifted label) through the real client
    want = desired(**SDK_VARIANTS[variant])
    number_id = client.create_sip_trunk_phone_number(want)
    current = client.get_phone_number(number_id)
    client.update_phone_number(number_id, want.model_copy(update={"label": "renamed"}), current)
    client.update_phone_number(number_id, want)  # the whole-trunk form, without a read
    client.list_phone_numbers()
    # Then every body the client sent and every answer the stand-in gave is what the SDK declares
    sent = {(r.method, r.path.count("/")): r.body for r in api.requests if r.body is not None}
    assert conformance_errors(CREATE_REQUEST, sent[("POST", 3)]) == []
    for request in api.requests:
        if request.method == "PATCH":
            assert conformance_errors(UPDATE_REQUEST, request.body) == []
    with api_session(api) as raw:
        assert conformance_errors(CREATE_RESPONSE, {"phone_number_id": number_id}) == []
        assert conformance_errors(GET_RESPONSE, raw("GET", f"/v1/convai/phone-numbers/{number_id}")) == []
        for item in raw("GET", "/v1/convai/phone-numbers"):
            assert conformance_errors(LIST_ITEM, item) == []
        patched = raw("PATCH", f"/v1/convai/phone-numbers/{number_id}", {"label": "again"})
        assert conformance_errors(UPDATE_RESPONSE, patched) == []


def test_the_create_answer_conforms_to_the_sdk_model(api: ElevenLabsStandIn) -> None:
    with api_session(api) as raw:
        body = {"provider": "sip_trunk", **desired().request_body(), "phone_number": "+14155550111"}
        assert conformance_errors(CREATE_RESPONSE, raw("POST", "/v1/convai/phone-numbers", body)) == []


@contextlib.contextmanager
def api_session(api: ElevenLabsStandIn) -> Iterator[Callable[..., Any]]:
    """Raw JSON calls to the stand-in, to see its answers as sent (the client parses them away)."""

    def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"xi-api-key": API_KEY, "Content-Type": "application/json"}
        request = urllib.request.Request(api.url + path, data=data, headers=headers, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 -- loopback stand-in
            return json.loads(response.read())

    yield call


# --- read, merge, write ---------------------------------------------------------------------------------
OPERATOR_INBOUND = {
    "allowed_addresses": ["198.51.100.0/24"],
    "allowed_numbers": ["+14155550199"],
    "attributes_to_headers": {"caller_id": "X-Caller"},
    "remote_domains": ["other.example"],
}
OPERATOR_OUTBOUND = {
    "headers": {"X-Team": "support"},
    "attributes_to_headers": {"ticket": "X-Ticket"},
    "enabled_codecs": ["PCMU/8000", "G722/8000"],
}


def test_a_patch_replaces_a_nested_trunk_config_as_a_whole(api: ElevenLabsStandIn, client: ElevenLabsClient) -> None:
    # Given operator fields set in the dashboard, When a PATCH sends the trunk without them (no read first)
    number_id = client.create_sip_trunk_phone_number(desired())
    api.edit(number_id, inbound=OPERATOR_INBOUND, outbound=OPERATOR_OUTBOUND)
    client.update_phone_number(number_id, desired(address="203.0.113.20:5060"))
    # Then the stand-in, emulating the destructive reading of the API, dropped them
    number = api.number(number_id)
    assert number["inbound_trunk"]["allowed_numbers"] is None
    assert number["outbound_trunk"]["enabled_codecs"] is None


def test_sync_keeps_every_operator_field_and_converges_the_products(
    api: ElevenLabsStandIn, client: ElevenLabsClient
) -> None:
    # Given a number synced once, then edited by an operator, and whose address drifted
    want = desired(inbound_username=None, inbound_password=None)
    number_id = ensure_trunk(client, want).phone_number_id
    api.edit(
        number_id,
        inbound={**OPERATOR_INBOUND, "credentials": {"username": "op-in", "password": "op-in-pw"}},
        outbound={**OPERATOR_OUTBOUND, "address": "198.51.100.9:5060"},
    )
    # When the sync runs
    result = ensure_trunk(client, want)
    # Then only the drifted field was named, it converged, and every operator field is as it was
    assert result.action == "updated"
    assert [m.field for m in result.mismatches] == ["outbound_trunk.address"]
    number = api.number(number_id)
    assert number["outbound_trunk"]["address"] == want.address
    for key, value in OPERATOR_INBOUND.items():
        assert number["inbound_trunk"][key] == value
    for key, value in OPERATOR_OUTBOUND.items():
        assert number["outbound_trunk"][key] == value
    assert number["inbound_trunk"]["username"] == "op-in"
    assert api.stored_password(number_id, "inbound") == "op-in-pw"
    assert api.stored_password(number_id) == PASSWORD
    assert diff_trunk(want, client.get_phone_number(number_id)) == []


def test_sync_sets_the_allowlist_when_owned_and_leaves_it_otherwise(
    api: ElevenLabsStandIn, client: ElevenLabsClient
) -> None:
    # Given a number whose operator allowlisted another network
    number_id = ensure_trunk(client, desired()).phone_number_id
    api.edit(number_id, inbound={"allowed_addresses": ["198.51.100.0/24"]})
    # When synced without owning the allowlist, Then it is left exactly as the operator set it
    assert ensure_trunk(client, desired()).action == "unchanged"
    assert ensure_trunk(client, desired(label="renamed")).action == "updated"
    assert api.number(number_id)["inbound_trunk"]["allowed_addresses"] == ["198.51.100.0/24"]
    # When synced owning it, Then the diff names it and the number accepts only the gateway
    owned = desired(label="renamed", allowed_addresses=("203.0.113.10/32",))
    result = ensure_trunk(client, owned)
    assert [m.field for m in result.mismatches] == ["inbound_trunk.allowed_addresses"]
    assert api.number(number_id)["inbound_trunk"]["allowed_addresses"] == ["203.0.113.10/32"]
    assert ensure_trunk(client, owned).action == "unchanged"
