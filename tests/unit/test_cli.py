"""The sip-trunk command: validate and render, exit codes, help."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sip_trunk.cli import app
from sip_trunk.settings import parse_settings
from typer.testing import CliRunner

pytestmark = pytest.mark.unit

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


@pytest.mark.parametrize("name", ["minimal", "full"])
def test_validate_ok(name: str) -> None:
    result = runner.invoke(app, ["validate", "-s", str(EXAMPLES / f"{name}.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid" in result.stdout
    assert "+14155550100" in result.stdout


def test_validate_names_every_agent_and_its_number(tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())
    doc["agents"] = [
        {"name": "sales", "phone_number": "+14155550111", "max_calls": 2},
        {"name": "bot", "sip_identifier": "sales.bot-1"},
    ]
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump(doc))
    result = runner.invoke(app, ["validate", "-s", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "3 ElevenLabs agent(s)" in lines[0]
    default = parse_settings(doc).elevenlabs.name
    assert lines[1:] == [
        f"  {default} (default): +14155550100",
        "  sales: +14155550111, at most 2 calls",
        "  bot: sales.bot-1",
    ]


def test_validate_json(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps(yaml.safe_load((EXAMPLES / "full.yaml").read_text())))
    assert runner.invoke(app, ["validate", "--settings", str(path)]).exit_code == 0


@pytest.mark.parametrize(
    "text",
    ["name: demo\n", "not: [valid", "- a list\n", "name: demo\nelevenlabs: {phone_number: '4155550100'}\n"],
    ids=["missing-fields", "bad-yaml", "not-a-mapping", "bad-number"],
)
def test_validate_invalid_exits_2_without_traceback(tmp_path: Path, text: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    result = runner.invoke(app, ["validate", "-s", str(path)])
    assert result.exit_code == 2, result.output
    assert "error" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_missing_file_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", "-s", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "cannot read" in result.stderr


def test_validate_message_points_at_field(tmp_path: Path) -> None:
    document = yaml.safe_load((EXAMPLES / "minimal.yaml").read_text())
    document["elevenlabs"]["phone_number"] = "0044"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(document))
    result = runner.invoke(app, ["validate", "-s", str(path)])
    assert result.exit_code == 2
    assert "elevenlabs.phone_number" in result.stderr


@pytest.mark.parametrize("name", ["minimal", "full"])
def test_render_writes_files_and_prints_version(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "render",
            "-s",
            str(EXAMPLES / f"{name}.yaml"),
            "--secrets",
            str(EXAMPLES / f"{name}.secrets.yaml"),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = yaml.safe_load((out / "manifest.json").read_text())
    assert f"config version {manifest['version']}" in result.stdout
    for rel in manifest["files"]:
        assert (out / rel).is_file()
        assert rel in result.stdout


def test_render_missing_secret_exits_2(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text("ssm:/demo/sip/elevenlabs-outbound-password: example-outbound-NOT-A-SECRET\n")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["render", "-s", str(EXAMPLES / "minimal.yaml"), "--secrets", str(secrets), "-o", str(out)]
    )
    assert result.exit_code == 2
    assert "secrets not provided" in result.stderr
    assert "example-outbound-NOT-A-SECRET" not in result.output
    assert not out.exists()


def test_render_public_address_override(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "render",
            "-s",
            str(EXAMPLES / "minimal.yaml"),
            "--secrets",
            str(EXAMPLES / "minimal.secrets.yaml"),
            "-o",
            str(out),
            "--public-address",
            "198.51.100.7",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "external_media_address = 198.51.100.7" in (out / "asterisk/pjsip.conf").read_text()


@pytest.mark.parametrize("args", [["--help"], ["validate", "--help"], ["render", "--help"]])
def test_help(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_no_arguments_shows_help() -> None:
    result = runner.invoke(app, [])
    assert "Usage" in result.output
    assert "validate" in result.output
    assert "render" in result.output
