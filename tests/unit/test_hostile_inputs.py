"""Hostile and malformed values in every string that can reach a config: two locks.

Lock 1: the settings model (and the secrets parser) refuse them with SettingsError, and the
CLI exits 2 without a traceback and without writing anything. Lock 2: a value smuggled past
validation (``model_copy``/``model_construct``) is refused by the renderer's ``finalize``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, SecretStr
from sip_trunk.cli import app
from sip_trunk.render import UnsafeValueError, render_configs
from sip_trunk.settings import Secrets, Settings, SettingsError, parse_secrets, parse_settings
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FULL: dict[str, Any] = yaml.safe_load((EXAMPLES / "full.yaml").read_text())
FULL_SECRETS: dict[str, str] = yaml.safe_load((EXAMPLES / "full.secrets.yaml").read_text())

_CYRILLIC = str.maketrans(
    "aeocpxyAEOCPXHKMTB",
    "\u0430\u0435\u043e\u0441\u0440\u0445\u0443\u0410\u0415\u041e\u0421\u0420\u0425\u041d\u041a\u041c\u0422\u0412",
)


def _fullwidth(value: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in value)


def _cyrillic(value: str) -> str:
    out = value.translate(_CYRILLIC)
    return out if out != value else "\u0430" + value


# --- the corpus ----------------------------------------------------------------------------

MUTATIONS: dict[str, Callable[[str], str]] = {
    "newline-section": lambda v: v + "\n[evil]\ntype=endpoint",
    "trailing-newline": lambda v: v + "\n",
    "carriage-return": lambda v: v + "\rx",
    "semicolon": lambda v: v + ";comment",
    "open-bracket": lambda v: "[" + v,
    "close-bracket": lambda v: v + "]",
    "include": lambda v: v + "\n#include /etc/shadow",
    "exec": lambda v: "#exec /bin/sh -c id",
    "shell-function": lambda v: v + "${SHELL(rm -rf /)}",
    "dialplan-expression": lambda v: v + "$[1+1]",
    "comma": lambda v: v + ",evil",
    "pipe": lambda v: v + "|x",
    "ampersand": lambda v: v + "&PJSIP/evil",
    "nul": lambda v: v + "\x00",
    "tab": lambda v: v + "\tx",
    "quote": lambda v: v + '"',
    "escaped-semicolon": lambda v: v + "\\;x",
    "fullwidth": _fullwidth,
    "cyrillic-lookalike": _cyrillic,
    "zero-width-space": lambda v: v[:1] + "\u200b" + v[1:],
    "rtl-override": lambda v: "\u202e" + v,
    "leading-space": lambda v: " " + v,
    "trailing-space": lambda v: v + " ",
    "empty": lambda v: "",
}


@dataclass(frozen=True)
class Target:
    path: str
    """Dotted path in the settings document; a final ``{key}`` mutates a mapping key."""
    overlong: str


TARGETS = [
    Target("name", "a" * 33),
    Target("elevenlabs.phone_number", "+1" + "4" * 40),
    Target("elevenlabs.host", "a" * 64 + ".example.com"),
    Target("elevenlabs.outbound_username", "u" * 65),
    Target("elevenlabs.inbound_username", "u" * 65),
    Target("elevenlabs.outbound_password", "ssm:/" + "a" * 1001),
    Target("elevenlabs.inbound_password", "secretsmanager:" + "a" * 513),
    Target("elevenlabs.api_key", "ssm:/" + "a" * 1001),
    Target("elevenlabs.phone_number_id", "p" * 65),
    Target("elevenlabs.agent_id", "a" * 65),
    Target("elevenlabs.transport", "tcp" * 30),
    Target("elevenlabs.media_encryption", "required" * 10),
    Target("elevenlabs.codecs.0", "ulaw" * 20),
    Target("network.public_address", "203.0.113." + "1" * 40),
    Target("network.public_hostname", "h" * 64 + ".example"),
    Target("network.local_nets.0", "10.20.0.0/" + "1" * 40),
    Target("network.bind_address", "0.0.0." + "0" * 40),
    Target("tls.cert_file", "/" + "c" * 65),
    Target("tls.key_file", "/" + "k" * 65),
    Target("tls.ca_list_file", "/" + "a" * 65),
    Target("carriers.0.name", "c" * 33),
    Target("carriers.0.host", "h" * 64 + ".example"),
    Target("carriers.1.host", "198.51.100." + "2" * 30),
    Target("carriers.0.username", "u" * 65),
    Target("carriers.0.password", "secretsmanager:" + "p" * 513),
    Target("carriers.0.dids.1", "+1" + "5" * 40),
    Target("carriers.1.match.0", "198.51.100.0/" + "2" * 30),
    Target("carriers.0.from_domain", "d" * 64 + ".example"),
    Target("carriers.0.transport", "udp" * 10),
    Target("carriers.0.caller_id", "+1" + "5" * 40),
    Target("elevenlabs.headers.{X-Called-DID}", "X-" + "a" * 50),
    Target("elevenlabs.headers.X-Route", "route" * 10),
    Target("dialplan.transfers.sip_destinations.{support}", "s" * 33),
    Target("dialplan.transfers.sip_destinations.support.host", "h" * 64 + ".example"),
    Target("dialplan.transfers.sip_destinations.support.user", "u" * 65),
    Target("extensions.0.number", "1" * 7),
    Target("extensions.0.display_name", "D" * 41),
    Target("extensions.0.password", "ssm:/" + "p" * 1001),
    Target("extensions.1.video_codecs.0", "h264" * 10),
    Target("dialplan.did_routes.{+14155550101}", "+1" + "6" * 40),
    Target("dialplan.did_routes.+442071838750.extension", "1" * 7),
    Target("dialplan.default_route.kind", "agent" * 10),
    Target("dialplan.outbound_allowlist.0", "+1" + "4" * 20),
    Target("dialplan.outbound_carrier", "t" * 33),
    Target("dialplan.agent_extension", "8" * 7),
    Target("dialplan.recordings_dir", "/" + "r" * 65),
    Target("dialplan.recording_spool_dir", "/a" * 200 + "/" + "b" * 65),
    Target("dialplan.call_records_dir", "/a" * 200 + "/" + "b" * 65),
    Target("dialplan.ivr.prompt", "p" * 65),
    Target("dialplan.ivr.choices.{2}", "22"),
    Target("dialplan.ivr.choices.2.extension", "1" * 7),
]


ABSENT_FROM_EXAMPLE = {
    "carriers.0.from_domain": "sip.telco.example",
    "dialplan.transfers.sip_destinations.support.user": "support",
    "network.bind_address": "0.0.0.0",
    "dialplan.recordings_dir": "/var/spool/asterisk/recording",
    "dialplan.recording_spool_dir": "/var/spool/sip-trunk/recordings",
    "dialplan.call_records_dir": "/var/spool/sip-trunk/calls",
}


def _valid_value(doc: dict[str, Any], path: str) -> str:
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if last.startswith("{"):
        return last[1:-1]
    if isinstance(node, list):
        return str(node[int(last)])
    if last not in node:
        return ABSENT_FROM_EXAMPLE[path]
    return str(node[last])


def _mutated(path: str, value: str) -> dict[str, Any]:
    doc = copy.deepcopy(FULL)
    node: Any = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = parts[-1]
    if last.startswith("{"):
        node[value] = node.pop(last[1:-1])
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


CASES = [
    pytest.param(t.path, mutation(_valid_value(FULL, t.path)), id=f"{t.path}-{name}")
    for t in TARGETS
    for name, mutation in MUTATIONS.items()
] + [pytest.param(t.path, t.overlong, id=f"{t.path}-overlong") for t in TARGETS]

SECRET_VALUE_CASES = [
    pytest.param(mutation("example-outbound-NOT-A-SECRET"), id=f"value-{name}") for name, mutation in MUTATIONS.items()
] + [pytest.param("p" * 129, id="value-overlong"), pytest.param("short", id="value-too-short")]

SECRET_REF_CASES = [
    pytest.param(mutation("ssm:/demo/sip/password"), id=f"ref-{name}")
    for name, mutation in MUTATIONS.items()
    if name not in ("fullwidth",)  # fullwidth of 'ssm:/…' is covered by the cyrillic look-alike
] + [pytest.param("ssm:/" + "a" * 1001, id="ref-overlong"), pytest.param("vault:/x", id="ref-unknown-scheme")]


def test_corpus_size() -> None:
    assert len(CASES) + len(SECRET_VALUE_CASES) + len(SECRET_REF_CASES) >= 60
    assert len({p.values[1] for p in CASES}) >= 60


def test_corpus_baseline_is_valid() -> None:
    """Each target's valid value is accepted where the corpus writes it (the example's own value changes
    nothing; a field the example leaves out is set): the refusals below are caused by the hostile value."""
    baseline = parse_settings(FULL)
    for target in TARGETS:
        value = _valid_value(FULL, target.path)
        parsed = parse_settings(_mutated(target.path, value))
        if target.path in ABSENT_FROM_EXAMPLE:
            assert _valid_value(parsed.model_dump(mode="json"), target.path) == value, target.path
        else:
            assert parsed == baseline, target.path


@pytest.mark.parametrize(("path", "value"), CASES)
def test_settings_refuse_hostile_value(path: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_settings(_mutated(path, value))
    field = path.split(".{")[0]
    assert field in str(info.value)


@pytest.mark.parametrize("value", SECRET_VALUE_CASES)
def test_secrets_refuse_hostile_value(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        parse_secrets({"ssm:/demo/sip/password": value})
    assert "value not shown" in str(info.value)
    if value:
        assert value not in str(info.value)


@pytest.mark.parametrize("ref", SECRET_REF_CASES)
def test_secrets_refuse_hostile_reference(ref: str) -> None:
    with pytest.raises(SettingsError):
        parse_secrets({ref: "a-valid-password-123"})


# --- through the CLI -----------------------------------------------------------------------

CLI_CASES = [
    pytest.param({"settings": _mutated("elevenlabs.phone_number", "+14155550100\n[evil]")}, id="phone-newline"),
    pytest.param({"settings": _mutated("carriers.0.host", "sip.telco.example;x")}, id="host-semicolon"),
    pytest.param({"settings": _mutated("elevenlabs.inbound_username", "[elevenlabs]")}, id="username-brackets"),
    pytest.param({"settings": _mutated("dialplan.recording_spool_dir", "/var/spool/x\n#exec id")}, id="spool-exec"),
    pytest.param({"settings": _mutated("extensions.0.display_name", "${SHELL(id)}")}, id="display-shell"),
    pytest.param({"settings": _mutated("dialplan.ivr.prompt", "demo$[1+1]")}, id="prompt-expression"),
    pytest.param({"settings": _mutated("network.local_nets.0", "\uff110.20.0.0/16")}, id="cidr-fullwidth"),
    pytest.param({"settings": _mutated("dialplan.outbound_allowlist.0", "+1415&")}, id="allowlist-ampersand"),
    pytest.param({"settings": _mutated("name", "acme\x00voice")}, id="name-nul"),
    pytest.param({"settings": {**FULL, "[/bold]": 1}}, id="unknown-key-markup"),
    pytest.param({"secrets": {**FULL_SECRETS, "secretsmanager:acme-voice/telco": "pw;evil-1234567"}}, id="secret-semi"),
    pytest.param({"secrets": {**FULL_SECRETS, "[/bold]": "a-valid-password-123"}}, id="secret-ref-markup"),
    pytest.param({"public_address": "203.0.113.10\n[evil]"}, id="public-address-newline"),
    pytest.param({"public_address": "sip.example.com"}, id="public-address-not-an-ip"),
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_render_refuses_without_traceback(tmp_path: Path, case: dict[str, Any]) -> None:
    settings = tmp_path / "settings.yaml"
    secrets = tmp_path / "secrets.yaml"
    settings.write_text(yaml.safe_dump(case.get("settings", FULL), allow_unicode=True))
    secrets.write_text(yaml.safe_dump(case.get("secrets", FULL_SECRETS), allow_unicode=True))
    out = tmp_path / "out"
    args = ["render", "-s", str(settings), "--secrets", str(secrets), "-o", str(out)]
    if "public_address" in case:
        args += ["--public-address", case["public_address"]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secrets.yaml", "settings.yaml"]
    for value in FULL_SECRETS.values():
        assert value not in result.output


# --- lock 2: the renderer's finalize -------------------------------------------------------

UNSAFE_CHARACTERS = {
    "newline": "\n",
    "carriage-return": "\r",
    "tab": "\t",
    "nul": "\x00",
    "del": "\x7f",
    "semicolon": ";",
    "open-bracket": "[",
    "close-bracket": "]",
    "hash": "#",
    "dollar": "$",
    "open-brace": "{",
    "close-brace": "}",
    "double-quote": '"',
    "single-quote": "'",
    "backtick": "`",
    "backslash": "\\",
    "pipe": "|",
    "ampersand": "&",
    "open-paren": "(",
    "close-paren": ")",
    "less-than": "<",
    "greater-than": ">",
    "comma": ",",
    "fullwidth-digit": "\uff11",
    "cyrillic-a": "\u0430",
    "zero-width-space": "\u200b",
    "rtl-override": "\u202e",
}

SMUGGLE_PATHS = [
    "name",
    "elevenlabs.phone_number",
    "elevenlabs.host",
    "elevenlabs.outbound_username",
    "elevenlabs.inbound_username",
    "network.local_nets.0",
    "network.bind_address",
    "network.public_address",
    "tls.cert_file",
    "tls.ca_list_file",
    "carriers.0.name",
    "carriers.0.host",
    "carriers.0.username",
    "carriers.1.match.0",
    "extensions.0.number",
    "extensions.0.display_name",
    "dialplan.outbound_allowlist.0",
    "dialplan.did_routes.{+14155550101}",
    "dialplan.did_routes.+442071838750.extension",
    "dialplan.recordings_dir",
    "dialplan.recording_spool_dir",
    "dialplan.ivr.prompt",
    "dialplan.ivr.choices.{2}",
    "elevenlabs.codecs.0",
]


def _smuggle(model: BaseModel, parts: list[str], value: Any) -> Any:
    """Replace one nested value without running any validator."""
    head, rest = parts[0], parts[1:]
    if isinstance(model, list):
        items = list(model)
        items[int(head)] = value if not rest else _smuggle(items[int(head)], rest, value)
        return items
    if isinstance(model, dict):
        items_d = dict(model)
        if head.startswith("{"):
            old = head[1:-1]
            return {(value if k == old else k): v for k, v in items_d.items()}
        items_d[head] = value if not rest else _smuggle(items_d[head], rest, value)
        return items_d
    current = getattr(model, head)
    return model.model_copy(update={head: value if not rest else _smuggle(current, rest, value)})


def smuggle(settings: Settings, path: str, value: Any) -> Settings:
    result: Settings = _smuggle(settings, path.split("."), value)
    return result


@pytest.fixture(scope="module")
def valid() -> tuple[Settings, Secrets]:
    return parse_settings(FULL), parse_secrets(FULL_SECRETS)


def test_smuggling_baseline_renders(valid: tuple[Settings, Secrets]) -> None:
    """Smuggling each path's own value renders what the valid settings render: a refusal below is caused by
    the smuggled value."""
    settings, secrets = valid
    baseline = render_configs(settings, secrets)
    for path in SMUGGLE_PATHS:
        original = _valid_value(FULL, path)
        assert render_configs(smuggle(settings, path, original), secrets) == baseline, path


def test_smuggled_value_really_bypasses_validation(valid: tuple[Settings, Secrets]) -> None:
    settings, _ = valid
    assert smuggle(settings, "elevenlabs.phone_number", "+1;x").elevenlabs.phone_number == "+1;x"


@pytest.mark.parametrize("path", SMUGGLE_PATHS)
@pytest.mark.parametrize("character", list(UNSAFE_CHARACTERS.values()), ids=list(UNSAFE_CHARACTERS))
def test_renderer_refuses_smuggled_value(valid: tuple[Settings, Secrets], path: str, character: str) -> None:
    settings, secrets = valid
    original = _valid_value(FULL, path)
    hostile = original[:1] + character + original[1:]
    with pytest.raises(UnsafeValueError, match="refusing to render"):
        render_configs(smuggle(settings, path, hostile), secrets)


def test_renderer_refuses_model_construct(valid: tuple[Settings, Secrets]) -> None:
    settings, secrets = valid
    el = type(settings.elevenlabs).model_construct(
        **{**dict(settings.elevenlabs), "inbound_username": "x]\n[evil]\ntype=endpoint"}
    )
    with pytest.raises(UnsafeValueError):
        render_configs(settings.model_copy(update={"elevenlabs": el}), secrets)


@pytest.mark.parametrize("character", list(UNSAFE_CHARACTERS.values()), ids=list(UNSAFE_CHARACTERS))
def test_renderer_refuses_smuggled_secret_value(valid: tuple[Settings, Secrets], character: str) -> None:
    settings, secrets = valid
    hostile_value = "example-telco" + character + "NOT-A-SECRET"
    values = {**secrets.values, "secretsmanager:acme-voice/telco": SecretStr(hostile_value)}
    with pytest.raises(UnsafeValueError) as info:
        render_configs(settings, Secrets.model_construct(values=values))
    assert hostile_value not in str(info.value)


@pytest.mark.parametrize("character", list(UNSAFE_CHARACTERS.values()), ids=list(UNSAFE_CHARACTERS))
def test_renderer_refuses_hostile_public_address(valid: tuple[Settings, Secrets], character: str) -> None:
    settings, secrets = valid
    with pytest.raises(UnsafeValueError):
        render_configs(settings, secrets, public_address="203.0.113." + character + "10")


def test_renderer_refuses_empty_and_missing_values(valid: tuple[Settings, Secrets]) -> None:
    settings, secrets = valid
    with pytest.raises(UnsafeValueError, match="empty"):
        render_configs(smuggle(settings, "dialplan.ivr.prompt", ""), secrets)
    with pytest.raises(UnsafeValueError, match="None"):
        render_configs(smuggle(settings, "carriers.0.username", None), secrets)
