"""Config versions in SSM Parameter Store, against moto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws
from sip_trunk.configstore import (
    ConfigNotFound,
    fetch_config,
    get_desired_version,
    publish_config,
    set_desired_version,
    split_value,
    stored_names,
)
from sip_trunk.limits import SSM_VALUE_ADVANCED
from sip_trunk.manifest import MANIFEST_NAME, Manifest, ManifestMismatch
from sip_trunk.render import RenderedConfig, render_configs
from sip_trunk.settings import load_secrets, load_settings, parse_secrets, parse_settings

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PREFIX = "/acme-voice/asterisk"


@pytest.fixture
def ssm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield boto3.client("ssm", region_name="eu-west-1")


@pytest.fixture(scope="module")
def rendered() -> RenderedConfig:
    return render_configs(load_settings(EXAMPLES / "full.yaml"), load_secrets(EXAMPLES / "full.secrets.yaml"))


@pytest.fixture(scope="module")
def large() -> RenderedConfig:
    """The full example with 40 more extensions: dialplan and endpoints outgrow one Advanced parameter."""
    settings = yaml.safe_load((EXAMPLES / "full.yaml").read_text())
    secrets = yaml.safe_load((EXAMPLES / "full.secrets.yaml").read_text())
    for number in range(1100, 1140):
        ref = f"secretsmanager:acme-voice/ext-{number}"
        settings["extensions"].append({"number": str(number), "display_name": f"Desk {number}", "password": ref})
        secrets[ref] = f"example-{number}-NOT-A-SECRET"
    return render_configs(parse_settings(settings, "large"), parse_secrets(secrets, "large"))


def publish(ssm: Any, rendered: RenderedConfig) -> list[str]:
    return publish_config(ssm, PREFIX, rendered.files, rendered.secret_files, rendered.version)


def test_publish_fetch_round_trip(ssm: Any, rendered: RenderedConfig) -> None:
    names = publish(ssm, rendered)
    assert names[-1] == f"{PREFIX}/{rendered.version}/{MANIFEST_NAME}", "manifest must be written last"
    assert len(names) == sum(len(stored_names(rel, data)) for rel, data in rendered.files.items())
    assert fetch_config(ssm, PREFIX, rendered.version) == rendered.files


def test_a_config_larger_than_an_advanced_parameter_round_trips(ssm: Any, large: RenderedConfig) -> None:
    # Given rendered files larger than SSM's 8 KB Advanced-tier value (moto would store them whole)
    oversized = {rel for rel, data in large.files.items() if len(data) > SSM_VALUE_ADVANCED.value}
    assert {"asterisk/extensions.conf", "asterisk/pjsip.conf"} <= oversized
    # When the version is published
    publish(ssm, large)
    # Then no stored value is over the limit, the secret-bearing file stays SecureString, and the agent's
    # fetch returns exactly the rendered files
    stored = ssm.get_parameters_by_path(
        Path=f"{PREFIX}/{large.version}/", Recursive=True, WithDecryption=True, MaxResults=10
    )
    params = list(stored["Parameters"])
    while stored.get("NextToken"):
        stored = ssm.get_parameters_by_path(
            Path=f"{PREFIX}/{large.version}/",
            Recursive=True,
            WithDecryption=True,
            MaxResults=10,
            NextToken=stored["NextToken"],
        )
        params += stored["Parameters"]
    assert all(len(p["Value"].encode()) <= SSM_VALUE_ADVANCED.value for p in params)
    pjsip = [p for p in params if "/asterisk/pjsip.conf" in p["Name"]]
    assert len(pjsip) > 1
    assert {p["Type"] for p in pjsip} == {"SecureString"}
    assert fetch_config(ssm, PREFIX, large.version) == large.files


def test_a_missing_or_stray_part_is_refused(ssm: Any, large: RenderedConfig) -> None:
    publish(ssm, large)
    base = f"{PREFIX}/{large.version}/asterisk/pjsip.conf"
    ssm.put_parameter(Name=f"{base}.part-099", Value="[evil]\n", Type="SecureString")
    with pytest.raises(ManifestMismatch, match="altered"):
        fetch_config(ssm, PREFIX, large.version)
    ssm.delete_parameter(Name=f"{base}.part-099")
    ssm.delete_parameter(Name=f"{base}.part-002")
    with pytest.raises(ManifestMismatch, match="altered"):
        fetch_config(ssm, PREFIX, large.version)


def test_parameter_types_and_tiers(ssm: Any, rendered: RenderedConfig) -> None:
    publish(ssm, rendered)
    for rel, data in rendered.files.items():
        names = stored_names(rel, data)
        pieces = split_value(data) if len(names) > 1 else [data]
        for name, piece in zip(names, pieces, strict=True):
            param = ssm.get_parameter(Name=f"{PREFIX}/{rendered.version}/{name}")["Parameter"]
            expected = "SecureString" if rel == "asterisk/pjsip.conf" else "String"
            assert param["Type"] == expected, name
            described = ssm.describe_parameters(
                ParameterFilters=[{"Key": "Name", "Values": [f"{PREFIX}/{rendered.version}/{name}"]}]
            )["Parameters"][0]
            assert described["Tier"] == ("Advanced" if len(piece) > 4096 else "Standard"), name


def test_large_file_goes_to_advanced_tier(ssm: Any) -> None:
    files = {"asterisk/big.conf": b"; " + b"x" * 5000 + b"\n", "asterisk/small.conf": b"[s]\n"}
    files[MANIFEST_NAME] = Manifest.for_files(files).to_json()
    version = Manifest.for_files(files).version
    publish_config(ssm, PREFIX, files, [], version)
    described = {
        p["Name"]: p["Tier"] for p in ssm.describe_parameters(MaxResults=50)["Parameters"] if version in p["Name"]
    }
    assert described[f"{PREFIX}/{version}/asterisk/big.conf"] == "Advanced"
    assert described[f"{PREFIX}/{version}/asterisk/small.conf"] == "Standard"
    assert fetch_config(ssm, PREFIX, version) == files


def test_publish_refuses_files_that_do_not_match_their_manifest(ssm: Any, rendered: RenderedConfig) -> None:
    files = {**rendered.files, "asterisk/rtp.conf": b"tampered\n"}
    with pytest.raises(ManifestMismatch):
        publish_config(ssm, PREFIX, files, rendered.secret_files, rendered.version)
    assert ssm.describe_parameters()["Parameters"] == []


def test_desired_version_pointer(ssm: Any, rendered: RenderedConfig) -> None:
    assert get_desired_version(ssm, PREFIX) is None
    set_desired_version(ssm, PREFIX, rendered.version)
    assert get_desired_version(ssm, PREFIX) == rendered.version
    set_desired_version(ssm, PREFIX + "/", "v0123456789abcdef")
    assert get_desired_version(ssm, PREFIX) == "v0123456789abcdef"


def test_tampered_parameter_refused(ssm: Any, rendered: RenderedConfig) -> None:
    publish(ssm, rendered)
    ssm.put_parameter(
        Name=f"{PREFIX}/{rendered.version}/asterisk/extensions.conf",
        Value="[from-carrier]\nexten => _X.,1,Dial(PJSIP/${EXTEN}@telco)\n",
        Type="String",
        Overwrite=True,
    )
    with pytest.raises(ManifestMismatch, match="altered"):
        fetch_config(ssm, PREFIX, rendered.version)


def test_extra_parameter_refused(ssm: Any, rendered: RenderedConfig) -> None:
    publish(ssm, rendered)
    ssm.put_parameter(Name=f"{PREFIX}/{rendered.version}/asterisk/evil.conf", Value="x", Type="String")
    with pytest.raises(ManifestMismatch, match="extra"):
        fetch_config(ssm, PREFIX, rendered.version)


def test_deleted_parameter_refused(ssm: Any, rendered: RenderedConfig) -> None:
    publish(ssm, rendered)
    ssm.delete_parameter(Name=f"{PREFIX}/{rendered.version}/asterisk/rtp.conf")
    with pytest.raises(ManifestMismatch, match="missing"):
        fetch_config(ssm, PREFIX, rendered.version)


def test_missing_version(ssm: Any, rendered: RenderedConfig) -> None:
    publish(ssm, rendered)
    with pytest.raises(ConfigNotFound):
        fetch_config(ssm, PREFIX, "v0000000000000000")


def test_manifest_of_another_version_refused(ssm: Any, rendered: RenderedConfig) -> None:
    publish(ssm, rendered)
    ssm.put_parameter(
        Name=f"{PREFIX}/v1111111111111111/{MANIFEST_NAME}",
        Value=rendered.files[MANIFEST_NAME].decode(),
        Type="String",
    )
    with pytest.raises(ConfigNotFound):
        fetch_config(ssm, PREFIX, "v1111111111111111")


def test_versions_do_not_mix(ssm: Any, rendered: RenderedConfig) -> None:
    other = render_configs(load_settings(EXAMPLES / "minimal.yaml"), load_secrets(EXAMPLES / "minimal.secrets.yaml"))
    publish(ssm, rendered)
    publish(ssm, other)
    assert fetch_config(ssm, PREFIX, other.version) == other.files
    assert fetch_config(ssm, PREFIX, rendered.version) == rendered.files
