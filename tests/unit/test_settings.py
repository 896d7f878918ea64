"""Settings validation: defaults, cross-field rules, loading, and field-pointing messages."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from sip_trunk.settings import (
    ELEVENLABS_SIP_HOST,
    AudioCodec,
    Secrets,
    SettingsError,
    Transport,
    load_secrets,
    load_settings,
    parse_secrets,
    parse_settings,
)

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "Sup3r-Secret-Value-xyz"


def minimal() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())


def full() -> dict[str, Any]:
    return yaml.safe_load((EXAMPLES / "full.yaml").read_text())


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


def error_of(doc: Any) -> str:
    with pytest.raises(SettingsError) as info:
        parse_settings(doc)
    return str(info.value)


# --- defaults ------------------------------------------------------------------------------


def test_examples_are_valid() -> None:
    assert load_settings(EXAMPLES / "minimal.yaml").name == "demo"
    assert load_settings(EXAMPLES / "full.yaml").name == "acme-voice"


def test_defaults() -> None:
    doc = minimal()
    del doc["elevenlabs"]["transport"]
    settings = parse_settings(doc)
    el = settings.elevenlabs
    assert el.host == ELEVENLABS_SIP_HOST == "sip.rtc.elevenlabs.io"
    assert el.transport is Transport.TCP
    assert el.effective_port == 5060
    assert set(el.codecs) <= {AudioCodec.ULAW, AudioCodec.ALAW, AudioCodec.G722}
    assert settings.tls.enabled is False
    assert settings.network.udp_enabled is False
    assert (settings.network.rtp_port_start, settings.network.rtp_port_end) == (10000, 20000)
    assert settings.dialplan.outbound_allowlist == []


def test_extension_defaults_max_contacts_3() -> None:
    ext = parse_settings(full()).extensions[0]
    assert ext.max_contacts == 3
    assert set(ext.codecs) <= {AudioCodec.ULAW, AudioCodec.ALAW, AudioCodec.G722}


def test_tls_port_default_5061() -> None:
    assert parse_settings(full()).elevenlabs.effective_port == 5061


@pytest.mark.parametrize("codec", ["opus", "g729", "ULAW", "gsm"])
def test_codecs_outside_elevenlabs_set_refused(codec: str) -> None:
    assert "elevenlabs.codecs.0" in error_of(with_(minimal(), "elevenlabs.codecs", [codec]))


def test_repeated_codec_refused() -> None:
    assert "elevenlabs" in error_of(with_(minimal(), "elevenlabs.codecs", ["ulaw", "ulaw"]))


def test_empty_codecs_refused() -> None:
    assert "elevenlabs.codecs" in error_of(with_(minimal(), "elevenlabs.codecs", []))


# --- transport / TLS / SRTP ----------------------------------------------------------------


def test_udp_refused_without_experimental_flag() -> None:
    doc = with_(with_(minimal(), "elevenlabs.transport", "udp"), "network.udp_enabled", True)
    assert "experimental" in error_of(doc)


def test_udp_accepted_with_flag_and_udp_enabled() -> None:
    doc = with_(with_(minimal(), "elevenlabs.transport", "udp"), "network.udp_enabled", True)
    doc = with_(doc, "elevenlabs.allow_experimental_udp", True)
    assert parse_settings(doc).elevenlabs.transport is Transport.UDP


def test_udp_with_flag_needs_udp_listener() -> None:
    doc = with_(with_(minimal(), "elevenlabs.transport", "udp"), "elevenlabs.allow_experimental_udp", True)
    assert "network.udp_enabled" in error_of(doc)


@pytest.mark.parametrize("mode", ["allowed", "required"])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_srtp_without_tls_refused(mode: str, transport: str) -> None:
    doc = with_(minimal(), "elevenlabs.media_encryption", mode)
    doc = with_(doc, "elevenlabs.transport", transport)
    doc = with_(doc, "elevenlabs.allow_experimental_udp", True)
    doc = with_(doc, "network.udp_enabled", True)
    assert "tls" in error_of(doc)


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
@pytest.mark.parametrize("mode", ["allowed", "required"])
def test_srtp_on_one_direction_without_tls_names_the_direction(direction: str, mode: str) -> None:
    doc = with_(minimal(), f"elevenlabs.media_encryption_{direction}", mode)
    message = error_of(doc)
    assert f"{direction} media encryption '{mode}'" in message
    assert "TLS" in message


def test_media_encryption_per_direction_defaults_to_both() -> None:
    doc = with_(full(), "elevenlabs.media_encryption", "allowed")
    el = parse_settings(with_(doc, "elevenlabs.media_encryption_outbound", "required")).elevenlabs
    assert (el.inbound_media_encryption, el.outbound_media_encryption) == ("allowed", "required")
    el = parse_settings(doc).elevenlabs
    assert (el.inbound_media_encryption, el.outbound_media_encryption) == ("allowed", "allowed")


def test_tls_transport_without_tls_enabled_refused() -> None:
    doc = with_(full(), "tls.enabled", False)
    assert "tls.enabled" in error_of(doc)


def test_tls_transport_needs_the_public_hostname() -> None:
    # ElevenLabs checks the gateway's certificate against the host name it dials: an Elastic IP cannot carry it
    doc = with_(full(), "network.public_hostname", None)
    message = error_of(doc)
    assert "network.public_hostname is required" in message
    assert "elevenlabs.transport 'tls'" in message
    assert "certificate" in message


def test_tcp_transport_needs_no_public_hostname() -> None:
    doc = with_(minimal(), "network.public_hostname", None)
    assert parse_settings(doc).network.public_hostname is None


def test_carrier_tls_without_tls_enabled_refused() -> None:
    doc = with_(full(), "tls.enabled", False)
    doc = with_(doc, "elevenlabs.transport", "tcp")
    doc = with_(doc, "elevenlabs.media_encryption", "disabled")
    doc = with_(doc, "carriers.1.transport", "tls")
    assert "carrier backup-carrier" in error_of(doc)


def test_carrier_udp_without_udp_enabled_refused() -> None:
    assert "carrier telco" in error_of(with_(full(), "network.udp_enabled", False))


# --- names, routes, allowlist --------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("elevenlabs.inbound_username", "elevenlabs"),
        ("elevenlabs.inbound_username", "telco"),
        ("elevenlabs.inbound_username", "1001"),
        ("carriers.0.name", "backup-carrier"),
        ("carriers.0.name", "elevenlabs"),
        ("extensions.1.number", "1001"),
    ],
)
def test_endpoint_name_collisions_refused(path: str, value: str) -> None:
    doc = with_(full(), path, value)
    if path == "carriers.0.name":
        doc["dialplan"]["outbound_carrier"] = value
    message = error_of(doc)
    assert "collide" in message or "must not repeat" in message


def test_agent_extension_equal_to_softphone_refused() -> None:
    assert "agent_extension" in error_of(with_(full(), "dialplan.agent_extension", "1001"))


@pytest.mark.parametrize(
    "path",
    ["dialplan.default_route", "dialplan.did_routes.+14155550100", "dialplan.ivr.choices.1"],
)
def test_route_to_unknown_extension_refused(path: str) -> None:
    doc = copy.deepcopy(full())
    node: Any = doc
    *parents, last = path.replace("did_routes.", "did_routes|").replace("choices.", "choices|").split(".")
    for part in [*parents, *last.split("|")[:-1]]:
        node = node[part]
    node[last.split("|")[-1]] = {"kind": "extension", "extension": "4242"}
    assert "extension 4242, which is not defined" in error_of(doc)


def test_route_to_disabled_ivr_refused() -> None:
    doc = with_(full(), "dialplan.ivr.enabled", False)
    assert "ivr.enabled" in error_of(doc)


def test_ivr_choice_back_to_ivr_refused() -> None:
    doc = with_(full(), "dialplan.ivr.choices", {"1": {"kind": "ivr"}})
    assert "IVR" in error_of(doc)


def test_destination_extension_only_for_kind_extension() -> None:
    assert "extension" in error_of(with_(full(), "dialplan.default_route", {"kind": "agent", "extension": "1001"}))
    assert "extension" in error_of(with_(full(), "dialplan.default_route", {"kind": "extension"}))


def test_allowlist_without_carrier_refused() -> None:
    doc = with_(minimal(), "dialplan", {"outbound_allowlist": ["+44"]})
    assert "dialplan: dialplan.outbound_allowlist needs dialplan.outbound_carrier" in error_of(doc)


def test_outbound_carrier_must_exist() -> None:
    assert "is not a carrier" in error_of(with_(full(), "dialplan.outbound_carrier", "nope"))


def test_carrier_registration_needs_credentials() -> None:
    doc = copy.deepcopy(full())
    del doc["carriers"][0]["password"]
    assert "registration needs username and password" in error_of(doc)


def test_carrier_ip_auth_needs_match() -> None:
    assert "match" in error_of(with_(full(), "carriers.1.match", []))


# --- network / RTP -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"rtp_port_start": 10001}, "even"),
        ({"rtp_port_start": 20000, "rtp_port_end": 20001}, "rtp_port_start + 2"),
        ({"rtp_port_start": 20000, "rtp_port_end": 10000}, "rtp_port_start + 2"),
        ({"rtp_port_start": 5000, "rtp_port_end": 6000}, "inside the RTP range"),
        ({"tls_port": 5060}, "must differ"),
        ({"rtp_port_end": 70000}, "network.rtp_port_end"),
        ({"rtp_port_start": 0}, "network.rtp_port_start"),
    ],
)
def test_rtp_and_port_rules(changes: dict[str, int], expected: str) -> None:
    doc = copy.deepcopy(minimal())
    doc["network"].update(changes)
    assert expected in error_of(doc)


def test_local_nets_must_be_strict_cidrs() -> None:
    assert "network.local_nets.0" in error_of(with_(minimal(), "network.local_nets", ["10.0.0.1/16"]))


# --- structure and loading -----------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["surprise", "elevenlabs.surprise", "network.surprise", "tls.surprise", "dialplan.ivr.surprise"]
)
def test_extra_fields_forbidden(path: str) -> None:
    message = error_of(with_(full(), path, 1))
    assert path in message
    assert "Extra inputs are not permitted" in message


@pytest.mark.parametrize("doc", [None, [], "name: x", 42])
def test_document_must_be_a_mapping(doc: Any) -> None:
    assert "mapping" in error_of(doc)


def test_yaml_and_json_load_the_same(tmp_path: Path) -> None:
    doc = full()
    (tmp_path / "s.json").write_text(json.dumps(doc))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(doc))
    assert load_settings(tmp_path / "s.json") == load_settings(tmp_path / "s.yaml") == parse_settings(doc)


def test_secrets_load_from_yaml_and_json(tmp_path: Path) -> None:
    data = {"ssm:/x/a": SECRET}
    (tmp_path / "s.json").write_text(json.dumps(data))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    assert load_secrets(tmp_path / "s.json").reveal("ssm:/x/a") == SECRET
    assert load_secrets(tmp_path / "s.yaml").reveal("ssm:/x/a") == SECRET


@pytest.mark.parametrize(("name", "text"), [("bad.yaml", "name: [unclosed"), ("bad.json", "{nope")])
def test_syntax_errors_are_settings_errors(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(SettingsError, match="not valid"):
        load_settings(tmp_path / name)


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(SettingsError, match="not UTF-8"):
        load_settings(tmp_path / "latin1.yaml")


# --- messages ------------------------------------------------------------------------------


def test_message_points_at_the_field() -> None:
    message = error_of(with_(minimal(), "elevenlabs.phone_number", "0987654321"))
    assert "elevenlabs.phone_number" in message
    assert "E.164" in message
    assert "0987654321" not in message


def test_message_lists_every_problem() -> None:
    doc = with_(minimal(), "elevenlabs.phone_number", "nope")
    doc = with_(doc, "network.bind_address", "nope")
    message = error_of(doc)
    assert "2 problem(s)" in message
    assert "elevenlabs.phone_number" in message
    assert "network.bind_address" in message


def test_missing_required_field_named() -> None:
    doc = copy.deepcopy(minimal())
    del doc["elevenlabs"]["inbound_password"]
    assert "elevenlabs.inbound_password: Field required" in error_of(doc)


@pytest.mark.parametrize(
    "bad_value",
    [SECRET + ";", SECRET + "\n", "short", SECRET + " ", SECRET + "$x", "é" * 20, 12345678901234],
)
def test_secret_value_never_in_message(bad_value: Any) -> None:
    with pytest.raises(SettingsError) as info:
        parse_secrets({"ssm:/demo/x": bad_value})
    message = str(info.value)
    assert "ssm:/demo/x" in message
    assert "value not shown" in message
    assert str(bad_value) not in message
    assert SECRET not in message


def test_secret_value_never_in_message_of_a_broken_yaml_file(tmp_path: Path) -> None:
    """A syntax error in a secrets file must not quote the line that holds a password."""
    path = tmp_path / "s.secrets.yaml"
    path.write_text(f'ssm:/demo/a: "{SECRET}\nssm:/demo/b: {SECRET}-2\n')
    with pytest.raises(SettingsError) as info:
        load_secrets(path)
    assert SECRET not in str(info.value)


def test_secret_value_never_in_message_of_a_broken_json_file(tmp_path: Path) -> None:
    path = tmp_path / "s.secrets.json"
    path.write_text('{"ssm:/demo/a": "' + SECRET + '" "ssm:/demo/b": 1}')
    with pytest.raises(SettingsError) as info:
        load_secrets(path)
    assert SECRET not in str(info.value)


def test_password_given_inline_instead_of_ref_not_echoed() -> None:
    """Someone pastes the password itself where a reference belongs: the message must not repeat it."""
    message = error_of(with_(minimal(), "elevenlabs.outbound_password", SECRET))
    assert "elevenlabs.outbound_password" in message
    assert SECRET not in message


def test_unknown_secret_reference_in_secrets_file() -> None:
    with pytest.raises(SettingsError, match="not a secret reference"):
        parse_secrets({"plain-name": SECRET})


def test_secrets_repr_hides_values() -> None:
    secrets = parse_secrets({"ssm:/demo/x": SECRET})
    assert SECRET not in repr(secrets)
    assert SECRET not in str(secrets)
    assert SECRET not in str(secrets.model_dump())
    assert secrets.reveal("ssm:/demo/x") == SECRET


def test_reveal_unknown_ref() -> None:
    with pytest.raises(SettingsError, match="not provided"):
        Secrets(values={}).reveal("ssm:/missing")


def test_secret_refs_ordered_unique() -> None:
    refs = parse_settings(full()).secret_refs()
    assert refs == list(dict.fromkeys(refs))
    assert refs[0] == "secretsmanager:acme-voice/elevenlabs-outbound"
    assert "secretsmanager:acme-voice/elevenlabs-api-key" not in refs


def test_settings_are_frozen() -> None:
    settings = parse_settings(minimal())
    with pytest.raises(ValueError, match="frozen"):
        settings.name = "other"  # type: ignore[misc]


# --- transfers, call context headers, caller ID ---------------------------------------------


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("carriers.0.caller_id", "+14155559999", "caller_id must be one of the carrier's dids"),
        ("elevenlabs.headers", {"X-Call-Id": "route"}, "always sent by the gateway"),
        ("elevenlabs.headers", {"X-Route": "route", "X-ROUTE": "carrier"}, "must differ"),
        ("elevenlabs.headers", {"X-Route": "caller_name"}, "elevenlabs.headers"),
        ("dialplan.transfers.fallback", {"kind": "extension", "extension": "4242"}, "not defined"),
        ("dialplan.transfers.sip_destinations", {"Support": {"host": "pbx.example.com"}}, "sip_destinations"),
        (
            "carriers",
            [{"name": "transfer-out", "host": "198.51.100.9", "auth": "ip", "match": ["198.51.100.9/32"]}],
            "collide",
        ),
    ],
    ids=["caller-id-not-a-did", "reserved-header", "header-case", "unknown-fact", "fallback", "name", "endpoint"],
)
def test_transfer_and_header_rules(path: str, value: Any, message: str) -> None:
    assert message in error_of(with_(full(), path, value))


def test_transfer_defaults_keep_two_carrier_legs_off() -> None:
    transfers = parse_settings(minimal()).dialplan.transfers
    assert transfers.enabled
    assert not transfers.numbers_on_agent_calls
    assert transfers.fallback.kind == "agent"


def test_tls_transfer_destination_needs_tls() -> None:
    doc = with_(
        minimal(), "dialplan.transfers", {"sip_destinations": {"pbx": {"host": "pbx.example.com", "transport": "tls"}}}
    )
    assert "needs tls.enabled" in error_of(doc)


# --- when the agent cannot answer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"kind": "extension", "extension": "4242"}, "extension 4242 is not defined"),
        ({"kind": "extension"}, "'extension' is required"),
        ({"kind": "announcement", "extension": "1001"}, "only there"),
        ({"kind": "ivr"}, "dialplan.ivr.enabled is false"),
        ({"kind": "announcement", "prompt": "x;Hangup()"}, "elevenlabs.fallback.prompt"),
        ({"kind": "announcement", "hangup_cause": 0}, "hangup_cause"),
        ({"kind": "agent"}, "'agent' is required for fallback kind 'agent'"),
    ],
    ids=[
        "undefined-extension",
        "extension-missing",
        "extension-not-needed",
        "ivr-off",
        "prompt-injection",
        "cause",
        "agent-missing",
    ],
)
def test_agent_fallback_rules(value: dict[str, Any], message: str) -> None:
    doc = with_(minimal(), "dialplan.ivr", {"enabled": False})
    assert message in error_of(with_(doc, "elevenlabs.fallback", value))


@pytest.mark.parametrize("value", [0, 10001, "many"])
def test_agent_call_cap_is_a_sane_count(value: Any) -> None:
    assert "elevenlabs.max_calls" in error_of(with_(minimal(), "elevenlabs.max_calls", value))


def test_without_settings_the_agent_has_no_cap_and_an_announcement_ends_refused_calls() -> None:
    el = parse_settings(minimal()).elevenlabs
    assert el.max_calls is None
    assert (el.fallback.kind, el.fallback.prompt, el.fallback.hangup_cause) == (
        "announcement",
        "all-circuits-busy-now",
        34,
    )
