"""Several agents behind one gateway: the settings that describe them, what the renderer makes of them, and
the sync and verification of each agent's number on its own (in-memory ElevenLabs)."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sip_trunk import workflows
from sip_trunk.elevenlabs import DesiredTrunk, ElevenLabsNotFound, ElevenLabsUnavailable, PhoneNumber
from sip_trunk.render import UnsafeValueError, render_configs
from sip_trunk.settings import SettingsError, parse_secrets, parse_settings
from sip_trunk.workflows import provision
from support.fakes import API_KEY, PUBLIC_IP, FakeElevenLabs, FakeSettings, FakeWorld, settings_document

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SALES = "+14155550111"
SUPPORT = "+14155550122"


def minimal() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())


def secrets() -> Any:
    values = yaml.safe_load((EXAMPLES / "minimal.secrets.yaml").read_text())
    values["ssm:/demo/sip/support-out"] = "support-out-NOT-A-SECRET"
    return parse_secrets(values)


def with_agents(*agents: dict[str, Any], **sections: Any) -> dict[str, Any]:
    doc = minimal()
    doc["agents"] = list(agents)
    for key, value in sections.items():
        doc[key] = value
    return doc


SALES_AGENT = {"name": "sales", "phone_number": SALES}
SUPPORT_AGENT = {
    "name": "support",
    "phone_number": SUPPORT,
    "outbound_username": "support-out",
    "outbound_password": "ssm:/demo/sip/support-out",
}


def error_of(doc: dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as info:
        parse_settings(doc)
    return str(info.value)


# --- settings ---------------------------------------------------------------------------------------


def test_the_elevenlabs_section_alone_is_the_one_default_agent() -> None:
    settings = parse_settings(minimal())
    [default] = settings.agent_routes()
    el = settings.elevenlabs
    assert (default.name, default.is_default, default.endpoint) == ("default", True, "elevenlabs")
    assert (default.phone_number, default.outbound_username, default.outbound_password) == (
        el.phone_number,
        el.outbound_username,
        el.outbound_password,
    )
    assert settings.agent_route(None) == default


def test_further_agents_share_the_trunk_and_own_their_number_cap_fallback_and_credentials() -> None:
    settings = parse_settings(with_agents({**SALES_AGENT, "max_calls": 2, "agent_id": "agent_sales"}, SUPPORT_AGENT))
    default, sales, support = settings.agent_routes()
    assert [r.name for r in (default, sales, support)] == ["default", "sales", "support"]
    # sales calls with the default credentials, through the default endpoint
    assert (sales.phone_number, sales.max_calls, sales.agent_id) == (SALES, 2, "agent_sales")
    assert (sales.outbound_username, sales.endpoint) == ("gateway-out", "elevenlabs")
    # support has its own credentials, hence its own endpoint, and its password is a secret to resolve
    assert (support.outbound_username, support.endpoint) == ("support-out", "elevenlabs-support")
    assert "ssm:/demo/sip/support-out" in settings.secret_refs()


def test_an_agent_may_be_a_sip_identifier() -> None:
    [_, bot] = parse_settings(with_agents({"name": "bot", "sip_identifier": "sales.bot-1"})).agent_routes()[:2]
    assert bot.phone_number == "sales.bot-1"


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        ({"name": "x", "phone_number": SALES}, "agents.0.name"),
        ({"name": "Sales", "phone_number": SALES}, "agents.0.name"),
        ({"name": "sales]\n[evil", "phone_number": SALES}, "agents.0.name"),
        ({"name": "sales;x", "phone_number": SALES}, "agents.0.name"),
        ({"name": "sales", "phone_number": "+1415;x"}, "agents.0.phone_number"),
        ({"name": "sales", "sip_identifier": "bot\n[evil]"}, "agents.0.sip_identifier"),
        ({"name": "sales", "sip_identifier": "+bot"}, "agents.0.sip_identifier"),
        ({"name": "sales", "sip_identifier": "bot,x"}, "agents.0.sip_identifier"),
        ({"name": "sales"}, "exactly one of phone_number and sip_identifier"),
        ({"name": "sales", "phone_number": SALES, "sip_identifier": "bot"}, "exactly one of"),
        ({**SALES_AGENT, "outbound_username": "x-out"}, "outbound_username and outbound_password go together"),
        ({**SALES_AGENT, "outbound_username": "x out", "outbound_password": "ssm:/a"}, "outbound_username"),
        ({**SALES_AGENT, "max_calls": 0}, "agents.0.max_calls"),
        ({**SALES_AGENT, "colour": "blue"}, "agents.0.colour"),
    ],
    ids=[
        "short-name",
        "upper-case",
        "section-injection",
        "comment",
        "number",
        "identifier-new-line",
        "identifier-plus",
        "identifier-comma",
        "no-number",
        "two-numbers",
        "half-credentials",
        "bad-username",
        "cap",
        "unknown-field",
    ],
)
def test_an_agent_is_refused_with_a_message_that_names_the_field(agent: dict[str, Any], message: str) -> None:
    assert message in error_of(with_agents(agent))


def test_agent_names_numbers_and_ids_must_not_repeat() -> None:
    assert "agent name 'sales' is used twice" in error_of(
        with_agents(SALES_AGENT, {**SALES_AGENT, "phone_number": SUPPORT})
    )
    assert "agent name 'default' is used twice" in error_of(with_agents({"name": "default", "phone_number": SALES}))
    same_number = error_of(with_agents(SALES_AGENT, {"name": "other", "phone_number": SALES}))
    assert f"agents 'sales' and 'other' have the same number {SALES}" in same_number
    assert "the same number +14155550100" in error_of(with_agents({"name": "sales", "phone_number": "+14155550100"}))
    ids = error_of(
        with_agents({**SALES_AGENT, "phone_number_id": "phnum_1"}, {**SUPPORT_AGENT, "phone_number_id": "phnum_1"})
    )
    assert "phone_number_id must not repeat" in ids


@pytest.mark.parametrize(
    ("dialplan", "where"),
    [
        ({"did_routes": {"+14155550201": {"kind": "agent", "agent": "sails"}}}, "dialplan.did_routes[+14155550201]"),
        ({"default_route": {"kind": "agent", "agent": "sails"}}, "dialplan.default_route"),
        (
            {"ivr": {"enabled": True, "choices": {"2": {"kind": "agent", "agent": "sails"}}}},
            "dialplan.ivr.choices[2]",
        ),
        ({"transfers": {"fallback": {"kind": "agent", "agent": "sails"}}}, "dialplan.transfers.fallback"),
    ],
    ids=["did", "default-route", "ivr-choice", "transfer-fallback"],
)
def test_a_route_to_an_unknown_agent_is_refused_where_it_is(dialplan: dict[str, Any], where: str) -> None:
    message = error_of(with_agents(SALES_AGENT, dialplan=dialplan))
    assert f"{where}: agent 'sails' is not defined (agents: default, sales)" in message


def test_only_an_agent_destination_names_an_agent() -> None:
    doc = with_agents(SALES_AGENT, dialplan={"default_route": {"kind": "ivr", "agent": "sales"}})
    assert "'agent' is allowed only for kind 'agent'" in error_of(doc)


def test_an_agent_fallback_must_name_another_agent_that_exists() -> None:
    unknown = with_agents({**SALES_AGENT, "fallback": {"kind": "agent", "agent": "sails"}})
    assert "agent sales: fallback: agent 'sails' is not defined" in error_of(unknown)
    itself = with_agents({**SALES_AGENT, "fallback": {"kind": "agent", "agent": "sales"}})
    assert "agent sales: fallback: an agent cannot be its own fallback" in error_of(itself)
    default = minimal()
    default["elevenlabs"]["fallback"] = {"kind": "agent", "agent": "sales"}
    assert "elevenlabs.fallback: agent 'sales' is not defined" in error_of(default)
    extension = with_agents({**SALES_AGENT, "fallback": {"kind": "extension", "extension": "4242"}})
    assert "agent sales: fallback: extension 4242 is not defined" in error_of(extension)


def test_two_agents_may_name_each_other_as_fallback() -> None:
    """The dialplan takes a fallback once per call (tests/asterisk/test_agents.py), so a cycle cannot loop."""
    doc = with_agents({**SALES_AGENT, "fallback": {"kind": "agent", "agent": "default"}})
    doc["elevenlabs"]["fallback"] = {"kind": "agent", "agent": "sales"}
    parse_settings(doc)


def test_an_agent_endpoint_may_not_collide_with_a_carrier() -> None:
    carrier = {
        "name": "elevenlabs-support",
        "host": "192.0.2.1",
        "transport": "tcp",
        "auth": "ip",
        "match": ["192.0.2.1/32"],
    }
    assert "endpoint names collide" in error_of(with_agents(SUPPORT_AGENT, carriers=[carrier]))
    # an agent with the default credentials has no endpoint of its own, so the same carrier name is fine
    parse_settings(with_agents({"name": "support", "phone_number": SUPPORT}, carriers=[carrier]))


def test_an_agent_extension_must_be_free() -> None:
    phone = [{"number": "1001", "password": "ssm:/demo/sip/ext-1001"}]
    taken = error_of(with_agents({**SALES_AGENT, "extension": "1001"}, extensions=phone))
    assert "agent sales: extension 1001 is a softphone's number" in taken
    default = error_of(with_agents({**SALES_AGENT, "extension": "800"}))
    assert "agents 'default' and 'sales' have the same extension 800" in default
    [_, sales] = parse_settings(with_agents({**SALES_AGENT, "extension": "801"})).agent_routes()
    assert sales.extension == "801"


# --- rendering --------------------------------------------------------------------------------------


def test_no_agents_renders_exactly_what_the_elevenlabs_section_alone_does() -> None:
    alone = render_configs(parse_settings(minimal()), secrets())
    empty = render_configs(parse_settings(with_agents()), secrets())
    assert alone.files == empty.files


def test_each_agent_is_dialled_with_its_number_through_its_endpoint() -> None:
    doc = with_agents(
        SALES_AGENT, SUPPORT_AGENT, dialplan={"did_routes": {"+14155550201": {"kind": "agent", "agent": "sales"}}}
    )
    files = render_configs(parse_settings(doc), secrets()).files
    dialplan = files["asterisk/extensions.conf"].decode()
    assert "Dial(PJSIP/+14155550100@elevenlabs," in dialplan
    assert f"Dial(PJSIP/{SALES}@elevenlabs," in dialplan
    assert f"Dial(PJSIP/{SUPPORT}@elevenlabs-support," in dialplan
    pjsip = files["asterisk/pjsip.conf"].decode()
    assert "[elevenlabs-support-auth]\ntype = auth\nauth_type = userpass\nusername = support-out\n" in pjsip
    assert "[elevenlabs-sales" not in pjsip  # sales shares the default endpoint


def test_the_renderer_refuses_an_agent_name_that_escaped_validation() -> None:
    """The second lock: a name that never passed the settings model cannot reach a config."""
    settings = parse_settings(with_agents(SALES_AGENT))
    hostile = type(settings.agents[0]).model_construct(**{**dict(settings.agents[0]), "name": "x]\n[evil"})
    with pytest.raises(UnsafeValueError):
        render_configs(settings.model_copy(update={"agents": [hostile]}), secrets())


# --- sync and verify, per number --------------------------------------------------------------------


def render() -> provision.RenderResult:
    return provision.RenderResult(
        version="v0123456789abcdef", public_address=PUBLIC_IP, previous_version=None, published=True, files=10
    )


def agents_world(*agents: dict[str, Any], elevenlabs: FakeElevenLabs | None = None) -> FakeWorld:
    document = settings_document(api_key=True)
    document["agents"] = list(agents)
    world = FakeWorld(settings=FakeSettings(document), elevenlabs=elevenlabs or FakeElevenLabs())
    world.secrets.values["ssm:/sip-test/sip/support-out"] = "support-out-password"
    return world


STACK_SUPPORT = {
    "name": "support",
    "phone_number": SUPPORT,
    "outbound_username": "support-out",
    "outbound_password": "ssm:/sip-test/sip/support-out",
}


def sync(world: FakeWorld) -> provision.SyncOutcome:
    return provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))


def test_sync_imports_each_agent_number_with_its_own_credentials_then_finds_them_unchanged() -> None:
    world = agents_world(SALES_AGENT, STACK_SUPPORT)
    first = sync(world)
    assert [(n.agent, n.phone_number, n.action) for n in first.numbers] == [
        ("default", "+14155550100", "created"),
        ("sales", SALES, "created"),
        ("support", SUPPORT, "created"),
    ]
    created = {d.phone_number: d for d in world.elevenlabs.created}
    # every number points at the gateway and is called by it with that agent's credentials
    assert {d.address for d in created.values()} == {PUBLIC_IP}
    assert created[SALES].inbound_username == "gateway-out"
    assert created[SUPPORT].inbound_username == "support-out"
    assert created[SUPPORT].inbound_password is not None
    assert created[SUPPORT].inbound_password.get_secret_value() == "support-out-password"
    assert created[SALES].label == "sip-test/sales (aws-sip-trunk)"
    assert created["+14155550100"].label == "sip-test (aws-sip-trunk)"
    # the default agent's number is the outcome's own (what a single-agent deployment records)
    assert (first.action, first.phone_number_id) == ("created", first.numbers[0].phone_number_id)
    again = sync(world)
    assert [n.action for n in again.numbers] == ["unchanged"] * 3
    assert again.describe() == (
        f"default (+14155550100) unchanged; sales ({SALES}) unchanged; support ({SUPPORT}) unchanged"
    )


def test_sync_writes_only_the_number_that_drifted_and_names_it() -> None:
    world = agents_world(SALES_AGENT, STACK_SUPPORT)
    sync(world)
    world.elevenlabs.updated.clear()
    # Given the sales agent is re-pointed at another ElevenLabs agent in the settings
    world.settings.document["agents"][0]["agent_id"] = "agent_sales_2"
    # When synced
    outcome = sync(world)
    # Then only sales' number is written, and the report says so
    assert [want.phone_number for _, want in world.elevenlabs.updated] == [SALES]
    assert [(n.agent, n.action, n.changed_fields) for n in outcome.numbers] == [
        ("default", "unchanged", []),
        ("sales", "updated", ["agent_id"]),
        ("support", "unchanged", []),
    ]
    assert f"sales ({SALES}) updated (agent_id)" in outcome.describe()
    assert outcome.action == "unchanged"  # the default agent's number


class FailingFor(FakeElevenLabs):
    """An API that fails (503 after retries) for one number and serves the others."""

    def __init__(self, number: str) -> None:
        super().__init__()
        self.number = number

    def find_by_number(self, e164: str) -> PhoneNumber | None:
        if e164 == self.number:
            raise ElevenLabsUnavailable("GET /v1/convai/phone-numbers: HTTP 503 after 4 attempts", status=503)
        return super().find_by_number(e164)


def test_a_failure_of_one_number_names_it_keeps_its_class_and_the_others_converge() -> None:
    world = agents_world(SALES_AGENT, STACK_SUPPORT, elevenlabs=FailingFor(SALES))
    with pytest.raises(ElevenLabsUnavailable) as raised:  # the class the state machine retries
        sync(world)
    assert str(raised.value) == (f"agent sales ({SALES}): GET /v1/convai/phone-numbers: HTTP 503 after 4 attempts")
    assert raised.value.status == 503
    assert sorted(d.phone_number for d in world.elevenlabs.created) == ["+14155550100", SUPPORT]


def test_a_configured_id_that_does_not_exist_names_its_agent() -> None:
    world = agents_world({**SALES_AGENT, "phone_number_id": "phnum_missing"})
    with pytest.raises(
        ElevenLabsNotFound, match=rf"^agent sales \({re.escape(SALES)}\): GET .*phnum_missing: HTTP 404$"
    ):
        sync(world)


def test_with_one_agent_the_outcome_and_its_errors_read_as_they_always_did() -> None:
    world = agents_world()
    outcome = sync(world)
    assert "numbers" not in outcome.model_dump()
    assert outcome.describe() == "created"
    failing = agents_world(elevenlabs=FailingFor("+14155550100"))
    with pytest.raises(ElevenLabsUnavailable, match=r"^GET /v1/convai/phone-numbers: HTTP 503 after 4 attempts$"):
        sync(failing)


def test_the_credentials_hash_covers_every_agent_and_is_unchanged_for_one() -> None:
    single = agents_world()
    one = workflows.common.load_settings(single.settings, single.secrets)
    material = "\0".join(
        one.secrets.reveal(r)
        for r in (one.settings.elevenlabs.inbound_password, one.settings.elevenlabs.outbound_password)
    )
    assert one.credentials_hash() == hashlib.sha256(material.encode()).hexdigest()
    world = agents_world(STACK_SUPPORT)
    before = workflows.common.load_settings(world.settings, world.secrets).credentials_hash()
    world.secrets.values["ssm:/sip-test/sip/support-out"] = "support-out-rotated"
    assert workflows.common.load_settings(world.settings, world.secrets).credentials_hash() != before


def test_verify_reports_each_number_and_names_the_agent_whose_number_drifted() -> None:
    world = agents_world(SALES_AGENT)
    sync(world)
    sales_id = next(i for i, n in world.elevenlabs.numbers.items() if n.phone_number == SALES)
    number = world.elevenlabs.numbers[sales_id]
    world.elevenlabs.numbers[sales_id] = number.model_copy(update={"label": "renamed in the dashboard"})
    loaded = workflows.common.load_settings(world.settings, world.secrets)
    check = provision.verify._elevenlabs_check(world.deps, loaded, PUBLIC_IP)
    assert (check.checked, check.matches, check.mismatches) == (True, False, ["sales: label"])
    assert [(n.agent, n.matches) for n in check.numbers] == [("default", True), ("sales", False)]


def test_desired_trunks_follow_the_agents_in_order() -> None:
    world = agents_world(SALES_AGENT, STACK_SUPPORT)
    loaded = workflows.common.load_settings(world.settings, world.secrets)
    pairs = provision.desired_trunks(loaded, PUBLIC_IP)
    assert [(a.name, d.phone_number) for a, d in pairs] == [
        ("default", "+14155550100"),
        ("sales", SALES),
        ("support", SUPPORT),
    ]
    assert all(isinstance(d, DesiredTrunk) for _, d in pairs)
    assert copy.deepcopy(pairs[0][1]) == provision.desired_trunk(loaded, PUBLIC_IP)
    assert API_KEY  # the fake world's key is what the sync uses
