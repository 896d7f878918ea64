"""Config versions in SSM Parameter Store, against moto."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk.configstore import (
    ConfigNotFound,
    fetch_config,
    get_desired_version,
    publish_config,
    set_desired_version,
)
from sip_trunk.manifest import MANIFEST_NAME, Manifest, ManifestMismatch
from sip_trunk.render import RenderedConfig, render_configs
from sip_trunk.settings import load_secrets, load_settings

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


def publish(ssm: Any, rendered: RenderedConfig) -> list[str]:
    return publish_config(ssm, PREFIX, rendered.files, rendered.secret_files, rendered.version)


def test_publish_fetch_round_trip(ssm: Any, rendered: RenderedConfig) -> None:
    names = publish(ssm, rendered)
    assert names[-1] == f"{PREFIX}/{rendered.version}/{MANIFEST_NAME}", "manifest must be written last"
    assert len(names) == len(rendered.files)
    assert fetch_config(ssm, PREFIX, rendered.version) == rendered.files


def test_parameter_types_and_tiers(ssm: Any, rendered: RenderedConfig) -> None:
    publish(ssm, rendered)
    for rel, data in rendered.files.items():
        param = ssm.get_parameter(Name=f"{PREFIX}/{rendered.version}/{rel}")["Parameter"]
        expected = "SecureString" if rel == "asterisk/pjsip.conf" else "String"
        assert param["Type"] == expected, rel
        described = ssm.describe_parameters(
            ParameterFilters=[{"Key": "Name", "Values": [f"{PREFIX}/{rendered.version}/{rel}"]}]
        )["Parameters"][0]
        assert described["Tier"] == ("Advanced" if len(data) > 4096 else "Standard"), rel


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
