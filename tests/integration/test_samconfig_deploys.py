"""Every samconfig.toml profile deploys: its stack name and parameter overrides create the root stack.

The root template is created in moto's CloudFormation through local mode's control plane (offline SAM
transform and moto fix-ups, `sip_trunk_local.controlplane`), once per profile of `samconfig.toml`. A
profile that leaves a required parameter open gets what `sam deploy --guided` would ask for.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import boto3
import pytest
from sip_trunk_local.controlplane import create_control_plane, load_template
from sip_trunk_local.profiles import ParametersRefused, parameter_problems

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
GUIDED_ANSWERS = {"ElevenLabsPhoneNumber": "+14155550100", "AlarmEmail": "ops@example.com"}


def _profiles() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((ROOT / "samconfig.toml").read_text())
    return {name: section for name, section in config.items() if isinstance(section, dict)}


def _stack_and_parameters(profile: str) -> tuple[str, dict[str, str]]:
    section = _profiles()[profile]
    stack_name = str(section.get("global", {}).get("parameters", {})["stack_name"])
    overrides = section.get("deploy", {}).get("parameters", {}).get("parameter_overrides", [])
    if isinstance(overrides, str):
        overrides = overrides.split()
    parameters = dict(str(item).split("=", 1) for item in overrides)
    declared = load_template(ROOT / "template.yaml")["Parameters"]
    for name, spec in declared.items():
        if "Default" not in spec and name not in parameters:
            parameters[name] = GUIDED_ANSWERS[name]
    return stack_name, parameters


def test_samconfig_has_the_documented_profiles() -> None:
    assert {"default", "dev", "prod"} <= set(_profiles())


@pytest.mark.parametrize("profile", sorted(_profiles()))
def test_every_samconfig_profile_deploys(aws: None, profile: str) -> None:
    # Given a profile's stack name and parameter overrides
    stack_name, parameters = _stack_and_parameters(profile)
    # When the root stack is created with them
    plane = create_control_plane(
        ROOT, stack_name, parameters, high_availability=parameters.get("HighAvailability") == "true"
    )
    # Then it is complete and owns its settings, host parameters and secrets where the functions look
    stack = boto3.client("cloudformation").describe_stacks(StackName=plane.stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    env = plane.environment()
    ssm = boto3.client("ssm")
    for variable in ("SETTINGS_PARAMETER", "HOST_PARAMETERS_PARAMETER"):
        assert ssm.get_parameter(Name=env[variable])["Parameter"]["Value"]
    assert env["CONFIG_PREFIX"].startswith("/")
    sm = boto3.client("secretsmanager")
    names = {s["Name"] for s in sm.list_secrets()["SecretList"]}
    assert len(names) >= 2


def test_a_profile_the_template_refuses_creates_nothing(aws: None) -> None:
    # Given prod with TLS on but no hosted zone or DNS name for the certificate, which the template's
    # TlsNeedsHostnameAndCertificate rule refuses (CloudFormation's view)
    stack_name, parameters = _stack_and_parameters("prod")
    parameters |= {"EnableTls": "true", "SipTransport": "tls", "HostedZoneId": "", "RecordName": ""}
    refused = parameter_problems(load_template(ROOT / "template.yaml"), parameters)
    assert [p.split(":")[0] for p in refused] == ["rule TlsNeedsHostnameAndCertificate"]
    # When the root stack is created with it, Then it is refused with the same problems, before anything exists
    with pytest.raises(ParametersRefused) as caught:
        create_control_plane(ROOT, stack_name, parameters, high_availability=True)
    assert caught.value.problems == refused
    assert boto3.client("cloudformation").list_stacks()["StackSummaries"] == []


SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:sip-gateway/tls-AbCdEf"
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_the_refusal_check_sees_every_rule_of_the_template() -> None:
    # Control: each rule of the template refuses something, so a rule the check cannot read would fail here
    template = load_template(ROOT / "template.yaml")
    _, accepted = _stack_and_parameters("prod")
    assert parameter_problems(template, accepted) == []
    planted = {
        "TlsTransportNeedsTls": {"SipTransport": "tls"},
        "TlsNeedsHostnameAndCertificate": {"EnableTls": "true", "HostedZoneId": "", "RecordName": ""},
        "SrtpNeedsTls": {"MediaEncryption": "required"},
        "ImageReferenceGiven": {"AmiSource": "ami-id"},
        "DnsNeedsBoth": {"HostedZoneId": "Z0123456789ABCDEFGHIJ"},
        "CertificateSecretNeedsTls": {"TlsCertificateSecretArn": SECRET_ARN},
        "CertificateKeyNeedsSecret": {"TlsCertificateKmsKeyArn": KEY_ARN},
    }
    assert set(planted) == set(template["Rules"])
    for rule, values in planted.items():
        assert f"rule {rule}" in [p.split(":")[0] for p in parameter_problems(template, accepted | values)], rule
