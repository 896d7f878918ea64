"""What an update of the host stack does to the running hosts, decided from CloudFormation's own rules.

`sip_trunk_local.stack_updates` renders stacks/host.yaml with the parameters LaunchHost passes before and after
a change and classifies every changed property with the registry schemas cfn-lint ships (create-only:
replacement; conditionally create-only, such as an instance's `UserData`: stop/start). A code deploy (a new
layer version) and a replaced primary must interrupt neither host; a new image must replace exactly the slot
it was given to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode
from sip_trunk_local.stack_updates import (
    classify,
    dynamic_references,
    interruptions,
    plan_update,
    render_resources,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
LAYER = "arn:aws:lambda:us-east-1:123456789012:layer:sip-prod-sip-trunk:{}"

# The host stack's parameters as LaunchHost passes them (template.yaml's host-parameters document, the image
# resolved to an AMI id, plus ConfigVersion).
PARAMETERS = {
    "RootStackName": "sip-prod",
    "InstanceType": "t4g.small",
    "ImageSource": "ami-id",
    "Image": "ami-0123456789abcdef0",
    "InstallAtBoot": "true",
    "HighAvailability": "true",
    "PrimarySubnetId": "subnet-0123456789abcdef0",
    "StandbySubnetId": "subnet-0fedcba9876543210",
    "SecurityGroupId": "sg-0123456789abcdef0",
    "PrimaryAllocationId": "eipalloc-0123456789abcdef0",
    "LayerVersionArn": LAYER.format(7),
    "HostParametersName": "/sip-trunk/sip-prod/host-parameters",
    "ConfigPrefix": "/sip-trunk/sip-prod/asterisk",
    "StateTable": "sip-prod-state",
    "BackupBucket": "sip-prod-backups",
    "RecordingsBucket": "sip-prod-recordings",
    "NotificationTopicArn": "arn:aws:sns:us-east-1:123456789012:sip-prod-notify",
    "FailoverStateMachineArn": "arn:aws:states:us-east-1:123456789012:stateMachine:sip-prod-failover",
    "AsteriskLogGroup": "/aws-sip-trunk/sip-prod/asterisk",
    "ConfigVersion": "v1-abc",
}


def host_template() -> dict[str, Any]:
    template, problems = decode(str(ROOT / "stacks" / "host.yaml"))
    assert template is not None, problems
    return template


def image_parameters(template: dict[str, Any], ami: str) -> dict[str, str]:
    """The image parameters for one AMI on both slots, whatever the template calls them."""
    declared = template["Parameters"]
    if "PrimaryImageId" in declared:
        return {"PrimaryImageId": ami, "StandbyImageId": ami}
    return {"Image": ami}


def test_a_code_deploy_interrupts_neither_host() -> None:
    # Given the host stack as deployed with layer version 7
    template = host_template()
    old = {**PARAMETERS, **image_parameters(template, "ami-0123456789abcdef0")}
    # When a code deploy publishes layer version 8 and Provision updates the host stack with it
    new = {**old, "LayerVersionArn": LAYER.format(8)}
    changes = plan_update(template, old, new)
    # Then it stops or replaces nothing (a stock image reads the layer's ARN at its first boot)
    assert interruptions(changes) == []


def test_a_config_version_change_would_stop_and_start_both_hosts() -> None:
    """Why LaunchHost keeps the previous ConfigVersion on updates (tests/unit/test_workflow_provision.py): it is
    in the user data, which the first boot needs before the control plane can reach the host."""
    template = host_template()
    old = {**PARAMETERS, **image_parameters(template, "ami-0123456789abcdef0")}
    hit = interruptions(plan_update(template, old, {**old, "ConfigVersion": "v2-def"}))
    assert {(i.resource, i.impact, i.properties) for i in hit} == {
        ("PrimaryInstance", "interruption", ("UserData",)),
        ("StandbyInstance", "interruption", ("UserData",)),
    }


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:sip-gateway/tls-AbCdEf"


def test_the_certificate_secret_line_renders_nothing_without_a_secret(tmp_path: Path) -> None:
    """ADR-48: hosts that do not use the operator's certificate get the user data the template rendered before
    the secret's line existed, so the release that adds it stops and starts none of them."""
    text = (ROOT / "stacks" / "host.yaml").read_text()
    assert text.count("${CertificateSecretLine}") == 2
    before = tmp_path / "host.yaml"
    before.write_text(text.replace("${CertificateSecretLine}", ""))  # the template without the line
    previous, problems = decode(str(before))
    assert previous is not None, problems
    template = host_template()
    params = {**PARAMETERS, **image_parameters(template, "ami-0123456789abcdef0")}
    for logical in ("PrimaryInstance", "StandbyInstance"):
        now = render_resources(template, params)[logical][1]["UserData"]
        assert now == render_resources(previous, params)[logical][1]["UserData"], logical
        with_secret = render_resources(template, {**params, "CertificateSecretArn": SECRET_ARN})[logical][1]
        assert with_secret["UserData"] != now  # (control) the line is rendered with a secret


def test_turning_the_operators_certificate_on_stops_and_starts_both_hosts_and_replaces_neither() -> None:
    template = host_template()
    old = {**PARAMETERS, **image_parameters(template, "ami-0123456789abcdef0")}
    hit = interruptions(plan_update(template, old, {**old, "CertificateSecretArn": SECRET_ARN}))
    assert {(i.resource, i.impact, i.properties) for i in hit} == {
        ("PrimaryInstance", "interruption", ("UserData",)),
        ("StandbyInstance", "interruption", ("UserData",)),
    }


def test_replacing_the_primary_slot_leaves_the_standby_running() -> None:
    # Given both slots on one image
    template = host_template()
    if "PrimaryImageId" not in template["Parameters"]:
        pytest.fail("the host stack has no per-slot image: a new image replaces both hosts at once")
    old = {**PARAMETERS, **image_parameters(template, "ami-0123456789abcdef0")}
    # When only the primary slot gets a new image
    changes = plan_update(template, old, {**old, "PrimaryImageId": "ami-0aaaaaaaaaaaaaaaa"})
    # Then the primary is replaced (its dependents, the alarms, follow it) and the standby is untouched
    hit = {i.resource: i.impact for i in interruptions(changes)}
    assert hit.get("PrimaryInstance") == "replacement"
    assert "StandbyInstance" not in hit, hit
    assert "StandbyInstance" not in {c.resource for c in changes}


def test_replacing_the_standby_slot_leaves_the_primary_running() -> None:
    template = host_template()
    if "StandbyImageId" not in template["Parameters"]:
        pytest.fail("the host stack has no per-slot image")
    old = {**PARAMETERS, **image_parameters(template, "ami-0123456789abcdef0")}
    changes = plan_update(template, old, {**old, "StandbyImageId": "ami-0aaaaaaaaaaaaaaaa"})
    hit = {i.resource: i.impact for i in interruptions(changes)}
    assert hit.get("StandbyInstance") == "replacement"
    assert "PrimaryInstance" not in {c.resource for c in changes}


def test_the_hosts_render_without_dynamic_references() -> None:
    """A `{{resolve:ssm:…}}` is re-resolved only when its text changes: an image named that way never rolls out.
    With the parameters LaunchHost passes, the host stack holds concrete values only."""
    template = host_template()
    params = {**PARAMETERS, **image_parameters(template, "ami-0123456789abcdef0")}
    assert dynamic_references(render_resources(template, params)) == []


# --- the planner itself, on small templates: each impact it reports, and dependents --------------------------

INSTANCE_TEMPLATE: dict[str, Any] = {
    "Parameters": {"Ami": {"Type": "String"}, "Data": {"Type": "String"}, "Tag": {"Type": "String"}},
    "Resources": {
        "First": {
            "Type": "AWS::EC2::Instance",
            "Properties": {
                "ImageId": {"Ref": "Ami"},
                "UserData": {"Fn::Base64": {"Fn::Sub": "echo ${Data}"}},
                "Tags": [{"Key": "t", "Value": {"Ref": "Tag"}}],
            },
        },
        "Second": {
            "Type": "AWS::EC2::Instance",
            "Properties": {
                "ImageId": "ami-0123456789abcdef0",
                "UserData": {"Fn::Base64": {"Fn::Sub": "peer=${First.PrivateIp}"}},
            },
        },
    },
}
BASE = {"Ami": "ami-0123456789abcdef0", "Data": "a", "Tag": "x"}


def test_the_planner_tells_no_interruption_from_stop_start_from_replacement() -> None:
    assert interruptions(plan_update(INSTANCE_TEMPLATE, BASE, {**BASE, "Tag": "y"})) == []
    stop_start = interruptions(plan_update(INSTANCE_TEMPLATE, BASE, {**BASE, "Data": "b"}))
    assert [(i.resource, i.impact, i.properties) for i in stop_start] == [("First", "interruption", ("UserData",))]
    replaced = interruptions(plan_update(INSTANCE_TEMPLATE, BASE, {**BASE, "Ami": "ami-0aaaaaaaaaaaaaaaa"}))
    # the replaced instance's new private address is in the other one's user data: that one stops and starts
    assert [(i.resource, i.impact) for i in replaced] == [("First", "replacement"), ("Second", "interruption")]


def test_a_launch_template_change_replaces_the_instances_that_follow_its_latest_version() -> None:
    template = {
        "Parameters": {"Type": {"Type": "String"}},
        "Resources": {
            "Lt": {
                "Type": "AWS::EC2::LaunchTemplate",
                "Properties": {"LaunchTemplateData": {"InstanceType": {"Ref": "Type"}}},
            },
            "Host": {
                "Type": "AWS::EC2::Instance",
                "Properties": {
                    "LaunchTemplate": {
                        "LaunchTemplateId": {"Ref": "Lt"},
                        "Version": {"Fn::GetAtt": ["Lt", "LatestVersionNumber"]},
                    }
                },
            },
        },
    }
    hit = interruptions(plan_update(template, {"Type": "t4g.small"}, {"Type": "t4g.medium"}))
    assert [(i.resource, i.impact) for i in hit] == [("Host", "replacement")]


def test_a_dynamic_reference_with_the_same_text_is_no_change() -> None:
    template = {
        "Resources": {
            "Host": {"Type": "AWS::EC2::Instance", "Properties": {"ImageId": "{{resolve:ssm:/images/current}}"}}
        }
    }
    assert plan_update(template, {}, {}) == []
    assert dynamic_references(render_resources(template, {})) == ["Host.ImageId"]


def test_classification_comes_from_the_registry_schemas() -> None:
    assert classify("AWS::EC2::Instance", {"UserData"}) == "interruption"
    assert classify("AWS::EC2::Instance", {"InstanceType"}) == "interruption"
    assert classify("AWS::EC2::Instance", {"ImageId"}) == "replacement"
    assert classify("AWS::EC2::Instance", {"Tags"}) is None
    assert classify("AWS::IAM::Role", {"Policies"}) is None
    assert classify("AWS::IAM::Role", {"Path"}) == "replacement"
