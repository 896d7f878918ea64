"""Rendering: golden files, structural checks on the parsed configs, dialplan isolation,
determinism, all-or-nothing writes, and secrets kept out of logs and messages."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sip_trunk.cli import app
from sip_trunk.manifest import MANIFEST_NAME, Manifest
from sip_trunk.render import UnsafeValueError, render_configs, write_rendered
from sip_trunk.settings import Secrets, Settings, SettingsError, load_secrets, load_settings, parse_settings
from support.asterisk_config import (
    AsteriskConfig,
    is_digit_only,
    parse,
    parse_dialplan,
    pjsip_object,
    pjsip_objects,
    walk_dialplan,
)
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
GOLDEN = Path(__file__).resolve().parent / "golden"
EXAMPLE_NAMES = ["minimal", "full"]


def load_example(name: str) -> tuple[Settings, Secrets]:
    return load_settings(EXAMPLES / f"{name}.yaml"), load_secrets(EXAMPLES / f"{name}.secrets.yaml")


def example_secret_values(name: str) -> list[str]:
    return list(yaml.safe_load((EXAMPLES / f"{name}.secrets.yaml").read_text()).values())


@pytest.fixture(scope="module", params=EXAMPLE_NAMES)
def example(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def rendered_files(name: str) -> dict[str, bytes]:
    return render_configs(*load_example(name)).files


def parsed(name: str, file: str) -> AsteriskConfig:
    return parse(rendered_files(name)[f"asterisk/{file}"].decode())


# --- golden files --------------------------------------------------------------------------


def test_golden_files(example: str) -> None:
    files = rendered_files(example)
    golden = GOLDEN / example
    if os.environ.get("UPDATE_GOLDEN") == "1":
        write_rendered(files, golden)
    on_disk = {str(p.relative_to(golden)): p.read_bytes() for p in sorted(golden.rglob("*")) if p.is_file()}
    assert sorted(on_disk) == sorted(files), "file set changed: rerun with UPDATE_GOLDEN=1 and review the diff"
    for rel, data in files.items():
        assert on_disk[rel] == data, f"{rel} differs from the golden copy: rerun with UPDATE_GOLDEN=1 and review"


def test_golden_pjsip_holds_only_the_fake_example_secrets(example: str) -> None:
    pjsip = parse((GOLDEN / example / "asterisk/pjsip.conf").read_text())
    passwords = [s["password"] for s in pjsip_objects(pjsip, "auth") if s.name != "probe-auth"]
    assert passwords
    assert all(p.endswith("-NOT-A-SECRET") for p in passwords)


def test_the_probe_endpoint_challenges_with_a_password_nobody_is_given(example: str) -> None:
    pjsip = parse((GOLDEN / example / "asterisk/pjsip.conf").read_text())
    probe = pjsip_object(pjsip, "probe", "endpoint")
    assert (probe["identify_by"], probe["context"], probe["auth"]) == ("username", "refuse-inbound", "probe-auth")
    password = pjsip_object(pjsip, "probe-auth", "auth")["password"]
    others = [s["password"] for s in pjsip_objects(pjsip, "auth") if s.name != "probe-auth"]
    assert re.fullmatch(r"[0-9a-f]{64}", password)
    assert password not in others
    assert all(other not in password for other in others)


def test_rendered_files_parse_cleanly(example: str) -> None:
    for rel, data in rendered_files(example).items():
        if rel.startswith("asterisk/"):
            config = parse(data.decode())
            assert config.problems == [], rel
            assert config.directives == [], rel


# --- pjsip.conf ----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "port", "transport"), [("minimal", 5060, "tcp"), ("full", 5061, "tls")])
def test_elevenlabs_aor_contact_keeps_transport_parameter(name: str, port: int, transport: str) -> None:
    aor = pjsip_object(parsed(name, "pjsip.conf"), "elevenlabs", "aor")
    contact = aor.entry("contact")
    assert contact.raw == f"sip:sip.rtc.elevenlabs.io:{port}\\;transport={transport}"
    assert contact.value == f"sip:sip.rtc.elevenlabs.io:{port};transport={transport}"
    assert aor["qualify_frequency"] == "0"


def test_minimal_contact_is_the_documented_one() -> None:
    aor = pjsip_object(parsed("minimal", "pjsip.conf"), "elevenlabs", "aor")
    assert aor.entry("contact").raw == "sip:sip.rtc.elevenlabs.io:5060\\;transport=tcp"


def test_elevenlabs_outbound_endpoint(example: str) -> None:
    settings, _ = load_example(example)
    pjsip = parsed(example, "pjsip.conf")
    endpoint = pjsip_object(pjsip, "elevenlabs", "endpoint")
    assert endpoint["identify_by"] == "ip"
    assert endpoint["context"] == "refuse-inbound"
    assert endpoint["aors"] == "elevenlabs"
    assert endpoint["rewrite_contact"] == "no"
    assert endpoint["transport"] == f"transport-{settings.elevenlabs.transport.value}"
    auth = pjsip_object(pjsip, endpoint["outbound_auth"], "auth")
    assert auth["username"] == settings.elevenlabs.outbound_username
    assert auth["auth_type"] == "userpass"
    assert "auth" not in endpoint.key_names()


def test_elevenlabs_inbound_endpoint_named_after_digest_user(example: str) -> None:
    settings, secrets = load_example(example)
    el = settings.elevenlabs
    pjsip = parsed(example, "pjsip.conf")
    endpoint = pjsip_object(pjsip, el.inbound_username, "endpoint")
    assert endpoint["identify_by"] == "auth_username"
    assert endpoint["context"] == "from-elevenlabs"
    assert endpoint["rewrite_contact"] == "no"
    auth = pjsip_object(pjsip, endpoint["auth"], "auth")
    assert auth["username"] == el.inbound_username
    assert auth["password"] == secrets.reveal(el.inbound_password)


def test_media_settings_on_elevenlabs_endpoints(example: str) -> None:
    settings, _ = load_example(example)
    pjsip = parsed(example, "pjsip.conf")
    for name in ("elevenlabs", settings.elevenlabs.inbound_username):
        endpoint = pjsip_object(pjsip, name, "endpoint")
        assert endpoint["direct_media"] == "no"
        assert endpoint["rtp_symmetric"] == "yes"
        assert endpoint["force_rport"] == "yes"
        assert endpoint["dtmf_mode"] == "rfc4733"
        assert endpoint.get_all("disallow") == ["all"]
        allowed = endpoint["allow"].split(",")
        assert allowed == [c.value for c in settings.elevenlabs.codecs]
        assert set(allowed) <= {"ulaw", "alaw", "g722"}
        expected_encryption = "no" if example == "minimal" else "sdes"
        assert endpoint["media_encryption"] == expected_encryption


@pytest.mark.parametrize(
    ("inbound", "outbound"), [("required", "allowed"), ("allowed", "disabled"), ("disabled", "required")]
)
def test_media_encryption_per_direction(inbound: str, outbound: str) -> None:
    """The endpoint ElevenLabs calls in on gets the inbound setting, the one the gateway dials out on the outbound
    one; "allowed" is optimistic SDES. Negative control: rendering both endpoints from ``media_encryption`` (or
    swapping them) gives one endpoint the other direction's value."""
    document = yaml.safe_load((EXAMPLES / "full.yaml").read_text())
    document["elevenlabs"] |= {"media_encryption_inbound": inbound, "media_encryption_outbound": outbound}
    settings = parse_settings(document, "test")
    secrets = load_secrets(EXAMPLES / "full.secrets.yaml")
    pjsip = parse(render_configs(settings, secrets).files["asterisk/pjsip.conf"].decode())
    expected = {"disabled": ("no", None), "allowed": ("sdes", "yes"), "required": ("sdes", "no")}
    for name, mode in ((settings.elevenlabs.inbound_username, inbound), ("elevenlabs", outbound)):
        endpoint = pjsip_object(pjsip, name, "endpoint")
        got = (endpoint["media_encryption"], endpoint.get("media_encryption_optimistic"))
        assert got == expected[mode], (name, got)


def test_softphones_and_carriers_rewrite_contact() -> None:
    settings, _ = load_example("full")
    pjsip = parsed("full", "pjsip.conf")
    names = [c.name for c in settings.carriers] + [e.number for e in settings.extensions]
    assert names
    for name in names:
        endpoint = pjsip_object(pjsip, name, "endpoint")
        assert endpoint["rewrite_contact"] == "yes", name
        assert endpoint["direct_media"] == "no"
        assert endpoint["rtp_symmetric"] == "yes"
        assert endpoint["force_rport"] == "yes"
        assert endpoint["dtmf_mode"] == "rfc4733"


def test_carriers_identified_by_ip_and_contact_keeps_transport() -> None:
    pjsip = parsed("full", "pjsip.conf")
    telco = pjsip_object(pjsip, "telco", "endpoint")
    assert telco["identify_by"] == "ip"
    assert telco["context"] == "from-carrier"
    assert pjsip_object(pjsip, "telco", "aor")["contact"] == "sip:sip.telco.example:5060;transport=udp"
    registration = pjsip_object(pjsip, "telco-registration", "registration")
    assert registration["server_uri"] == "sip:sip.telco.example:5060;transport=udp"
    assert registration["line"] == "yes"
    identify = pjsip_object(pjsip, "backup-carrier-identify", "identify")
    assert identify.get_all("match") == ["198.51.100.0/28"]


def test_softphones(example: str) -> None:
    settings, _ = load_example(example)
    pjsip = parsed(example, "pjsip.conf")
    for ext in settings.extensions:
        endpoint = pjsip_object(pjsip, ext.number, "endpoint")
        assert endpoint["context"] == "from-extensions"
        aor = pjsip_object(pjsip, ext.number, "aor")
        assert aor["max_contacts"] == "3"
        assert aor["remove_existing"] == "yes"
        assert pjsip_object(pjsip, f"{ext.number}-auth", "auth")["username"] == ext.number
        if ext.video:
            assert {"h264", "vp8"} <= set(endpoint["allow"].split(","))
            assert endpoint["max_video_streams"] == "1"


def test_nat_addresses_on_every_transport(example: str) -> None:
    settings, _ = load_example(example)
    transports = list(pjsip_objects(parsed(example, "pjsip.conf"), "transport"))
    assert transports
    expected = {"minimal": {"tcp"}, "full": {"tcp", "udp", "tls"}}[example]
    assert {t["protocol"] for t in transports} == expected
    for transport in transports:
        assert transport["external_signaling_address"] == "203.0.113.10"
        assert transport["external_media_address"] == "203.0.113.10"
        assert transport.get_all("local_net") == list(settings.network.local_nets)


def test_public_address_override_reaches_every_transport() -> None:
    rendered = render_configs(*load_example("full"), public_address="198.51.100.7")
    for transport in pjsip_objects(parse(rendered.files["asterisk/pjsip.conf"].decode()), "transport"):
        assert transport["external_media_address"] == "198.51.100.7"


def test_pjsip_has_no_duplicate_objects(example: str) -> None:
    pjsip = parsed(example, "pjsip.conf")
    keys = [(s.name, s.get("type")) for s in pjsip.sections]
    assert len(keys) == len(set(keys))


# --- other files ---------------------------------------------------------------------------


def test_resolver_module_loaded_with_autoload_off(example: str) -> None:
    modules = parsed(example, "modules.conf").section("modules")
    assert modules["autoload"] == "no"
    loads = modules.get_all("load")
    for needed in ("res_resolver_unbound.so", "chan_pjsip.so", "res_pjsip_pubsub.so", "pbx_config.so", "app_dial.so"):
        assert needed in loads
    assert len(loads) == len(set(loads))


def test_rtp_range(example: str) -> None:
    rtp = parsed(example, "rtp.conf").section("general")
    assert (rtp["rtpstart"], rtp["rtpend"], rtp["strictrtp"]) == ("10000", "20000", "yes")


def test_security_log_channel(example: str) -> None:
    assert parsed(example, "logger.conf").section("logfiles")["security.log"] == "security"


def test_dial_to_elevenlabs(example: str) -> None:
    dialplan = parse_dialplan(parsed(example, "extensions.conf"))
    dials = [s for s in dialplan.contexts["route-agent"] if s.app == "Dial"]
    assert [d.args.split(",")[0] for d in dials] == ["PJSIP/+14155550100@elevenlabs"]


# --- dialplan isolation --------------------------------------------------------------------


ALLOWLIST_GATES = frozenset({"outbound-allowlisted", "transfer-from-agent", "transfer-agent-call"})
"""Contexts whose digit-only allowlist patterns vet ${EXTEN} before a Dial (the transfer contexts also
accept the number without '+')."""


def _isolation_violations(pjsip: AsteriskConfig, extensions: AsteriskConfig, allowlist: list[str]) -> list[str]:
    dialplan = parse_dialplan(extensions)
    violations: list[str] = []
    for endpoint in pjsip_objects(pjsip, "endpoint"):
        context = endpoint["context"]
        walk = walk_dialplan(dialplan, context)
        if context == "from-carrier":
            for forbidden in ("outbound-allowlisted", "dial-carrier"):
                if forbidden in walk.contexts:
                    violations.append(f"{endpoint.name}: from-carrier reaches [{forbidden}]")
        for reached in walk.dials("${EXTEN}"):
            where = f"{endpoint.name}: {' -> '.join(reached.path)} Dial({reached.step.args})"
            if not reached.exten.untrusted:
                continue
            chain = reached.exten.chain
            if not any(is_digit_only(pattern) for _, pattern in chain):
                violations.append(f"{where}: ${{EXTEN}} only matched by wildcard patterns {chain}")
            gate = [pattern for ctx, pattern in chain if ctx in ALLOWLIST_GATES]
            allowed = {f"_{prefix}{'X' * n}" for prefix in allowlist for n in range(1, 16)}
            allowed |= {
                p.replace("_+", "_", 1) for p in allowed if any(ctx.startswith("transfer-") for ctx, _ in chain)
            }
            if not gate or not all(pattern in allowed for pattern in gate):
                violations.append(f"{where}: not gated by [outbound-allowlisted] prefix+X patterns ({chain})")
    return violations


def test_dialplan_isolation(example: str) -> None:
    settings, _ = load_example(example)
    pjsip = parsed(example, "pjsip.conf")
    extensions = parsed(example, "extensions.conf")
    assert _isolation_violations(pjsip, extensions, settings.dialplan.outbound_allowlist) == []


def test_allowlisted_outbound_dial_is_reachable_from_agent_and_softphones() -> None:
    settings, _ = load_example("full")
    dialplan = parse_dialplan(parsed("full", "extensions.conf"))
    for context in ("from-elevenlabs", "from-extensions"):
        dials = walk_dialplan(dialplan, context).dials("PJSIP/${EXTEN}@telco")
        assert dials, context
        prefixes = {pattern for r in dials for ctx, pattern in r.exten.chain if ctx == "outbound-allowlisted"}
        assert {p.rstrip("X") for p in prefixes} == {f"_{p}" for p in settings.dialplan.outbound_allowlist}
    assert "dial-carrier" not in walk_dialplan(dialplan, "from-carrier").contexts
    assert walk_dialplan(dialplan, "refuse-inbound").contexts == {"refuse-inbound"}


def test_agent_transfers_reach_the_carrier_only_through_the_allowlist() -> None:
    """A REFER's Refer-To user enters the transfer context the agent leg set: the walk follows the pre-dial
    handler and TRANSFER_CONTEXT (path-insensitively: a fallback to the agent is followed into
    transfer-from-agent, which the dialplan avoids at run time with GW_AGENT_CALL, proven on a real Asterisk)."""
    dialplan = parse_dialplan(parsed("full", "extensions.conf"))
    from_carrier = walk_dialplan(dialplan, "from-carrier")
    assert {"agent-leg", "transfer-from-agent", "transfer-number", "transfer-sip"} <= from_carrier.contexts
    agent_call = walk_dialplan(dialplan, "from-elevenlabs")
    assert "transfer-agent-call" in agent_call.contexts
    # the Refer-To users a REFER on an agent-placed call may name: extensions and SIP destinations only
    assert set(dialplan.extensions("transfer-agent-call")) == {"1001", "1002", "support"}


def test_allowlist_patterns_are_digit_only_and_cover_e164_lengths() -> None:
    extensions = parse_dialplan(parsed("full", "extensions.conf")).extensions("outbound-allowlisted")
    for prefix in ("+1415", "+44"):
        patterns = sorted((p for p in extensions if p.startswith(f"_{prefix}X")), key=len)
        assert all(re.fullmatch(rf"_{re.escape(prefix)}X+", p) for p in patterns)
        lengths = [len(p) - 2 for p in patterns]  # digits after '+'
        assert (min(lengths), max(lengths)) == (7, 15)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("exten => _+1415XXXXXXX,1,Goto(dial-carrier", "exten => _+1415.,1,Goto(dial-carrier"),
        ("[from-carrier]\n", "[from-carrier]\nexten => _X.,1,Goto(outbound-allowlisted,${EXTEN},1)\n"),
        ("[from-elevenlabs]\n", "[from-elevenlabs]\nexten => _+X.,1,Goto(dial-carrier,${EXTEN},1)\n"),
        ("[from-extensions]\n", "[from-extensions]\nexten => _+44!,1,Goto(dial-carrier,${EXTEN},1)\n"),
        ("exten => _+1415XXXXXXX,1,Goto(transfer-number", "exten => _+1415.,1,Goto(transfer-number"),
        ("[transfer-agent-call]\n", "[transfer-agent-call]\nexten => _X.,1,Goto(transfer-number,+${EXTEN},1)\n"),
    ],
    ids=[
        "wildcard-in-allowlist",
        "carrier-reaches-allowlist",
        "agent-bypasses-allowlist",
        "bang-bypass",
        "wildcard-transfer",
        "wildcard-transfer-on-agent-call",
    ],
)
def test_isolation_check_catches_leaks(old: str, new: str) -> None:
    """The check itself: each of these edits must be reported."""
    settings, _ = load_example("full")
    text = rendered_files("full")["asterisk/extensions.conf"].decode()
    assert old in text
    leaky = parse(text.replace(old, new, 1))
    assert _isolation_violations(parsed("full", "pjsip.conf"), leaky, settings.dialplan.outbound_allowlist)


def test_from_carrier_routes_dids_and_bare_forms() -> None:
    steps = parse_dialplan(parsed("full", "extensions.conf")).extensions("from-carrier")

    def goto(exten: str) -> str:
        return next(s.args for s in steps[exten] if s.app == "Goto")

    assert goto("+14155550101") == "ivr,s,1"
    assert goto("14155550101") == "from-carrier,+14155550101,1"
    assert goto("+442071838750") == "route-extension,1001,1"
    # every way in starts the call record before it routes (the bare form through its E.164 entry)
    for did in ("+14155550101", "+442071838750", "_+X.", "_X."):
        gosubs = [s.args.split("(")[0] for s in steps[did] if s.app == "Gosub"]
        assert gosubs[:1] == ["call-record-start,s,1"], did


# --- determinism and versions --------------------------------------------------------------


def test_rendering_is_deterministic(example: str) -> None:
    first = render_configs(*load_example(example))
    second = render_configs(*load_example(example))
    assert first.files == second.files
    assert first.version == second.version


def test_version_equals_manifest(example: str) -> None:
    rendered = render_configs(*load_example(example))
    manifest = Manifest.from_json(rendered.files[MANIFEST_NAME])
    assert rendered.version == manifest.version == rendered.manifest.version
    assert set(manifest.files) == set(rendered.files) - {MANIFEST_NAME}
    manifest.verify(rendered.files)
    assert re.fullmatch(r"v[0-9a-f]{16}", rendered.version)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("elevenlabs.phone_number", "+14155550199"),
        ("elevenlabs.transport", "tcp"),
        ("network.rtp_port_end", 30000),
        ("network.local_nets", ["10.30.0.0/16"]),
        ("dialplan.recording", False),
        ("dialplan.dial_timeout_s", 30),
        ("extensions.0.max_contacts", 5),
        ("dialplan.outbound_allowlist", ["+1415"]),
        ("name", "acme-voice-2"),
    ],
)
def test_version_changes_with_any_setting(path: str, value: Any) -> None:
    document = yaml.safe_load((EXAMPLES / "full.yaml").read_text())
    if path == "elevenlabs.transport":
        document["elevenlabs"]["media_encryption"] = "disabled"
    node: Any = document
    *parents, last = path.split(".")
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    _, secrets = load_example("full")
    changed = render_configs(parse_settings(document), secrets)
    assert changed.version != render_configs(*load_example("full")).version


def test_version_changes_with_a_secret_value() -> None:
    settings, secrets = load_example("minimal")
    ref = settings.elevenlabs.inbound_password
    other = Secrets(values={**secrets.values, ref: "another-password-123"})  # type: ignore[dict-item]
    assert render_configs(settings, other).version != render_configs(settings, secrets).version


def test_version_changes_with_public_address() -> None:
    settings, secrets = load_example("minimal")
    assert (
        render_configs(settings, secrets, public_address="198.51.100.7").version
        != render_configs(settings, secrets).version
    )


# --- writing -------------------------------------------------------------------------------


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_write_rendered_replaces_the_directory_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.conf").write_text("old")
    rendered = render_configs(*load_example("full"))
    write_rendered(rendered, out)
    assert _tree(out) == rendered.files
    minimal = render_configs(*load_example("minimal"))
    write_rendered(minimal, out)
    assert _tree(out) == minimal.files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "staging or previous directories left behind"


def test_write_rendered_permissions(tmp_path: Path) -> None:
    write_rendered(render_configs(*load_example("minimal")), tmp_path / "out")
    assert (tmp_path / "out/asterisk/pjsip.conf").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "out/asterisk/extensions.conf").stat().st_mode & 0o777 == 0o644


def test_failed_render_writes_nothing(tmp_path: Path) -> None:
    settings, secrets = load_example("full")
    broken = settings.model_copy(update={"name": "acme;evil"})
    out = tmp_path / "out"
    with pytest.raises(UnsafeValueError):
        write_rendered(render_configs(broken, secrets), out)
    assert list(tmp_path.iterdir()) == []


def test_missing_secret_refused_without_writing(tmp_path: Path) -> None:
    settings, _ = load_example("full")
    with pytest.raises(UnsafeValueError, match="secrets not provided"):
        render_configs(settings, Secrets(values={}))


def test_failed_write_keeps_previous_version(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = render_configs(*load_example("minimal"))
    write_rendered(first, out)
    with pytest.raises(FileExistsError):
        write_rendered({"asterisk": b"x", "asterisk/pjsip.conf": b"y"}, out)
    assert _tree(out) == first.files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- secrets -------------------------------------------------------------------------------


def test_secrets_never_logged_or_printed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    values = example_secret_values("full")
    render_configs(*load_example("full"))
    result = CliRunner().invoke(
        app,
        [
            "render",
            "-s",
            str(EXAMPLES / "full.yaml"),
            "--secrets",
            str(EXAMPLES / "full.secrets.yaml"),
            "-o",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 0, result.output
    captured = capsys.readouterr()
    text = caplog.text + result.output + result.stderr + captured.out + captured.err
    for value in values:
        assert value not in text
    assert "example-telco-NOT-A-SECRET" in (tmp_path / "out/asterisk/pjsip.conf").read_text()


def test_settings_error_messages_hide_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    document = yaml.safe_load((EXAMPLES / "full.yaml").read_text())
    document["elevenlabs"]["inbound_password"] = "example-inbound-NOT-A-SECRET"
    with pytest.raises(SettingsError) as info:
        parse_settings(document)
    assert "example-inbound-NOT-A-SECRET" not in str(info.value) + caplog.text


def test_rendered_config_repr_hides_nothing_it_should_not_print() -> None:
    settings, secrets = load_example("minimal")
    for value in example_secret_values("minimal"):
        assert value not in repr(secrets)
        assert value not in str(secrets)
        assert value not in repr(settings)


def test_written_directory_is_readable_by_the_group(tmp_path: Path) -> None:
    """pjsip.conf is 0640 so that Asterisk's group can read it: the directory must let the group in."""
    out = tmp_path / "out"
    write_rendered(render_configs(*load_example("minimal")), out)
    assert out.stat().st_mode & 0o050 == 0o050, oct(out.stat().st_mode)
