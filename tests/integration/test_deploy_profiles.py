"""Day one: `sam deploy --guided` completes with a phone number and an e-mail address, every samconfig
environment deploys as it stands, and docs/DEPLOYMENT.md shows the prompts the template produces."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
from support.deploy import (
    DAY_ONE_ANSWERS,
    ROOT,
    PromptRepeats,
    guided_transcript,
    load_template,
    parameter_problems,
    profiles,
    provision_worst_case_s,
)

pytestmark = pytest.mark.integration

DEPLOYMENT_DOC = ROOT / "docs" / "DEPLOYMENT.md"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


# --- secrets are never optional parameters -----------------------------------------------------------


def test_every_no_echo_parameter_is_required(template) -> None:
    # A hidden prompt has no default and asks again on an empty answer: an optional secret cannot be skipped.
    optional_hidden = [k for k, spec in template["Parameters"].items() if spec.get("NoEcho") and "Default" in spec]
    assert optional_hidden == []


def test_the_api_key_secret_always_exists_and_starts_unset(template) -> None:
    # The operator adds the key later (docs/DEPLOYMENT.md); the workflows read this value as "no key yet"
    from sip_trunk.workflows.common import API_KEY_UNSET

    secret = template["Resources"]["ElevenLabsApiKeySecret"]
    assert "Condition" not in secret
    assert secret["Properties"]["SecretString"] == API_KEY_UNSET
    assert secret["Properties"]["Name"] == {"Fn::Sub": "${AWS::StackName}/elevenlabs/api-key"}


def test_guided_deploy_completes_with_day_one_answers(template) -> None:
    # Given only what a first-time user has: a phone number and an e-mail address (Enter for the rest)
    _, sent = guided_transcript(template, DAY_ONE_ANSWERS)
    # Then CloudFormation accepts every value the guided flow sends
    assert parameter_problems(template, sent) == []


def test_guided_replay_refuses_an_optional_hidden_parameter(template) -> None:
    # Control: a template with an optional NoEcho parameter is what made the guided flow loop
    planted = copy.deepcopy(template)
    planted["Parameters"]["SomeApiKey"] = {"Type": "String", "NoEcho": True, "Default": ""}
    with pytest.raises(PromptRepeats, match="Parameter SomeApiKey"):
        guided_transcript(planted, DAY_ONE_ANSWERS)


def test_guided_replay_refuses_a_required_parameter_left_empty(template) -> None:
    # Control: Enter on the phone number sends "" and CloudFormation refuses it
    _, sent = guided_transcript(template, {"AlarmEmail": "ops@example.com"})
    assert any(p.startswith("ElevenLabsPhoneNumber=''") for p in parameter_problems(template, sent))


# --- every samconfig environment deploys ------------------------------------------------------------


def deployable_profiles() -> list[str]:
    # `default` is the guided start: its required values come from the prompts (test above).
    return sorted(env for env in profiles() if env != "default")


@pytest.mark.parametrize("env", deployable_profiles())
def test_profile_deploys_as_it_stands(template, env: str) -> None:
    profile = profiles()[env]
    assert parameter_problems(template, profile["parameters"]) == []
    assert profile["stack_name"], f"{env}: no stack_name"
    capabilities = set(profile["deploy"]["capabilities"].split())
    assert {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"} <= capabilities


def test_profiles_exist() -> None:
    assert {"default", "dev", "prod"} <= set(profiles())


def test_problems_name_missing_values_patterns_and_rules(template) -> None:
    # Controls for the checker itself: each class of refusal is reported
    assert "AlarmEmail: no value and no default" in parameter_problems(
        template, {"ElevenLabsPhoneNumber": "+14155550100"}
    )
    bad = {**DAY_ONE_ANSWERS, "InstanceType": "t3.micro", "ElevenLabsPhoneNumber": "14155550100"}
    problems = parameter_problems(template, bad)
    assert any(p.startswith("InstanceType='t3.micro'") for p in problems)
    assert any(p.startswith("ElevenLabsPhoneNumber='14155550100'") for p in problems)
    rule = parameter_problems(template, {**DAY_ONE_ANSWERS, "SipTransport": "tls", "EnableTls": "false"})
    assert [p.split(":")[0] for p in rule] == ["rule TlsTransportNeedsTls"]
    assert parameter_problems(template, {**DAY_ONE_ANSWERS, "NoSuchParameter": "x"}) == [
        "unknown parameter NoSuchParameter"
    ]


# --- a cached build never ships a stale host template -----------------------------------------------


def files_copied_from_outside(template: dict[str, Any], logical_id: str) -> list[Path]:
    """What the makefile build of `logical_id` copies in from outside its ContentUri (`make -n`, nothing runs).

    `sam build --cached` hashes the ContentUri only: a change to such a file is not rebuilt."""
    content = (ROOT / template["Resources"][logical_id]["Properties"]["ContentUri"]).resolve()
    recipe = subprocess.run(
        ["make", "-s", "-n", "-C", str(content), f"build-{logical_id}", "ARTIFACTS_DIR=/nonexistent/artifacts"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    out: list[Path] = []
    for line in recipe.replace("\\\n", " ").splitlines():
        words = shlex.split(line)
        if words and words[0] == "cp":
            sources = [Path(w) for w in words[1:-1] if not w.startswith("-")]
            out += [p.resolve() for p in sources if not p.resolve().is_relative_to(content)]
    return out


def cached_builds(config: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(env for env, profile in config.items() if profile["build"].get("cached", False))


def test_the_layer_build_ships_the_host_template_and_no_profile_caches_it(template) -> None:
    outside = files_copied_from_outside(template, "SipTrunkLayer")
    assert ROOT / "stacks" / "host.yaml" in outside  # ADR-9: the host template travels in the layer
    assert cached_builds(profiles()) == []


def test_cached_build_check_catches_a_cached_profile() -> None:
    # Control: the setting that shipped stale host templates is reported
    planted = {"dev": {"build": {"cached": True}}, "prod": {"build": {"cached": False}}}
    assert cached_builds(planted) == ["dev"]


# --- TLS needs the name and a source of the certificate (the zone or the secret) ----------------------------------


@pytest.mark.parametrize(
    "missing",
    [{}, {"RecordName": "sip.example.com"}, {"HostedZoneId": "Z0123456789ABCDEFGHIJ"}],
    ids=["neither", "no-zone", "no-name"],
)
def test_tls_without_the_certificates_name_and_zone_is_refused_before_anything_is_created(template, missing) -> None:
    # Each host obtains its certificate for RecordName by ACME DNS-01 in HostedZoneId: without both, no certificate
    problems = parameter_problems(template, {**DAY_ONE_ANSWERS, "EnableTls": "true", "SipTransport": "tls", **missing})
    assert "rule TlsNeedsHostnameAndCertificate" in [p.split(":")[0] for p in problems]
    assert "hosted zone" in next(p for p in problems if p.startswith("rule TlsNeedsHostnameAndCertificate"))


def test_tls_with_the_certificates_name_and_zone_is_accepted(template) -> None:
    # Control for the refusal above: the complete TLS answers pass every rule
    tls = {"EnableTls": "true", "SipTransport": "tls", "HostedZoneId": "Z0123456789ABCDEFGHIJ",
           "RecordName": "sip.example.com"}  # fmt: skip
    assert parameter_problems(template, {**DAY_ONE_ANSWERS, **tls}) == []


SECRET_ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:sip-gateway/tls-AbCdEf"
KEY_ARN = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TLS = {"EnableTls": "true", "SipTransport": "tls"}


@pytest.mark.parametrize(
    "source",
    [
        {"TlsCertificateSecretArn": SECRET_ARN},
        {"TlsCertificateSecretArn": SECRET_ARN, "TlsCertificateKmsKeyArn": KEY_ARN},
        {"TlsCertificateSecretArn": SECRET_ARN, "HostedZoneId": "Z0123456789ABCDEFGHIJ"},
    ],
    ids=["secret-only", "secret-and-its-key", "secret-and-zone"],
)
def test_tls_with_the_operators_certificate_secret_is_accepted_without_or_with_a_zone(template, source) -> None:
    # The operator's certificate replaces ACME: the name is still needed (the certificate must cover it), the
    # zone is not; with both the secret wins (ADR-48)
    assert parameter_problems(template, {**DAY_ONE_ANSWERS, **TLS, "RecordName": "sip.example.com", **source}) == []


@pytest.mark.parametrize(
    ("values", "rule", "says"),
    [
        ({**TLS}, "TlsNeedsHostnameAndCertificate", "TlsCertificateSecretArn"),
        ({**TLS, "TlsCertificateSecretArn": SECRET_ARN}, "TlsNeedsHostnameAndCertificate", "RecordName"),
        ({"TlsCertificateSecretArn": SECRET_ARN, "RecordName": "sip.example.com"}, "CertificateSecretNeedsTls",
         "SIP over TLS"),
        ({**TLS, "RecordName": "sip.example.com", "HostedZoneId": "Z0123456789ABCDEFGHIJ",
          "TlsCertificateKmsKeyArn": KEY_ARN}, "CertificateKeyNeedsSecret", "TlsCertificateSecretArn is empty"),
    ],
    ids=["no-source", "secret-without-name", "secret-without-tls", "key-without-secret"],
)  # fmt: skip
def test_an_incomplete_certificate_source_is_refused_with_a_clear_rule(template, values, rule, says) -> None:
    problems = parameter_problems(template, {**DAY_ONE_ANSWERS, **values})
    assert [p.split(":")[0] for p in problems] == [f"rule {rule}"], problems
    assert says in problems[0]


@pytest.mark.parametrize(
    "arn",
    [
        "arn:aws:secretsmanager:eu-west-1:123456789012:secret:sip-gateway/tls",  # partial: IAM needs the full ARN
        "sip-gateway/tls",
        "arn:aws:s3:::bucket/tls-AbCdEf",
    ],
)
def test_the_secret_must_be_named_by_its_full_arn(template, arn) -> None:
    problems = parameter_problems(
        template, {**DAY_ONE_ANSWERS, **TLS, "RecordName": "sip.example.com", "TlsCertificateSecretArn": arn}
    )
    assert [p.split("=")[0] for p in problems] == ["TlsCertificateSecretArn"]


# --- the acceptance run waits as long as Provision may take -------------------------------------------


def test_acceptance_waits_as_long_as_provision_may_take(template) -> None:
    from aws.test_acceptance import deploy_parameters, provision_wait_s

    # Its own parameters keep the default stock Ubuntu image: LaunchHost waits up to 130 min for the host stack
    params = deploy_parameters()
    assert parameter_problems(template, params) == []
    assert provision_wait_s() >= 130 * 60
    # and an image that boots in minutes waits the short deadline
    quick = provision_worst_case_s(template, {**params, "AmiSource": "ami-id", "AmiReference": "ami-0123456789abcdef0"})
    assert 30 * 60 <= quick < provision_wait_s()


# --- docs/DEPLOYMENT.md shows the prompts as they appear --------------------------------------------


def documented_transcript(doc: Path) -> list[str]:
    text = doc.read_text()
    match = re.search(r"<!-- guided-transcript -->\n```text\n(.*?)```", text, re.S)
    assert match, f"{doc.name}: no ```text block after <!-- guided-transcript -->"
    return match[1].splitlines()


def test_documented_guided_prompts_match_the_template(template) -> None:
    transcript, _ = guided_transcript(template, DAY_ONE_ANSWERS)
    expected = [line.replace("\t", "    ").rstrip() for line in transcript]
    assert documented_transcript(DEPLOYMENT_DOC) == expected, (
        "docs/DEPLOYMENT.md is out of date: regenerate the block with `cd tests && python -m support.deploy`"
    )
