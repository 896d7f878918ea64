"""template.yaml, transformed offline and created in moto's CloudFormation: are the pieces wired?

The transform and moto's fix-ups are local mode's (`sip_trunk_local.controlplane`, whose docstring lists
them); this test proves the result is wired as the functions expect.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest
from sip_trunk_local.controlplane import create_control_plane

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK = "sip-wiring"
PARAMETERS = {
    "ElevenLabsPhoneNumber": "+14155550100",
    "AlarmEmail": "ops@example.com",
    "RecordingsEnabled": "true",
}


def test_root_stack_creates_every_piece_and_wires_the_functions(aws: None) -> None:
    # Given the network stack and the transformed root template
    # When the root stack is created
    plane = create_control_plane(ROOT, STACK, PARAMETERS, high_availability=True)
    template, physical, outputs, network_id = (
        plane.template,
        plane.physical,
        plane.network_outputs,
        plane.network_stack_id,
    )
    assert outputs["PrimaryAllocationId"].startswith("eipalloc-")
    assert "StandbyAllocationId" not in outputs, "one Elastic IP only (ADR-12)"
    cfn = boto3.client("cloudformation")
    stack = cfn.describe_stacks(StackName=plane.stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")

    # Then every function exists with the contract's environment pointing at real resources
    lam = boto3.client("lambda")
    functions = {f["FunctionName"]: f for f in lam.list_functions()["Functions"]}
    expected = [
        n for n, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::Function" and "Condition" not in r
    ]
    assert len(expected) == 16
    # without the ElevenLabs static range there is no in-VPC probe function and nothing names one (ADR-27)
    assert "SipProbeFunction" not in physical
    assert all(not f.get("Environment", {}).get("Variables", {}).get("PROBE_FUNCTION") for f in functions.values())
    for logical in expected:
        fn = functions[physical[logical]]
        assert fn["Runtime"] == "python3.13"
        assert fn["Handler"] == "app.handler"
        env = fn["Environment"]["Variables"]
        assert env["STACK_NAME"] == STACK
        assert env["CONFIG_PREFIX"] == f"/sip-trunk/{STACK}/asterisk"
        assert env["STATE_TABLE"] == physical["StateTable"]
        assert env["BACKUP_BUCKET"] == physical["BackupBucket"]
        assert env["RECORDINGS_BUCKET"] == physical["RecordingsBucket"]
        assert env["NOTIFICATION_TOPIC_ARN"] == physical["NotificationTopic"]
        assert env["PRIMARY_ALLOCATION_ID"] == outputs["PrimaryAllocationId"]
        assert env["NETWORK_STACK_NAME"] == network_id
        assert env["FAILOVER_STATE_MACHINE_ARN"] == physical["FailoverStateMachine"]
        assert env["HOST_TEMPLATE_URL"].startswith(f"https://{physical['BackupBucket']}.")
        assert env["POWERTOOLS_SERVICE_NAME"] == STACK
        assert env["POWERTOOLS_METRICS_NAMESPACE"] == "AwsSipTrunk"
        # The stock Ubuntu image (the default) builds Asterisk at boot: LaunchHost waits longer for the stack.
        if plane.function_names[physical[logical]] == "launch_host":
            assert env["STACK_TIMEOUT_S"] == "7800"
        else:
            assert "STACK_TIMEOUT_S" not in env

    # and the table, buckets, topic and parameters exist
    table = boto3.client("dynamodb").describe_table(TableName=physical["StateTable"])["Table"]
    assert {k["AttributeName"] for k in table["KeySchema"]} == {"pk", "sk"}
    buckets = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    assert {physical["BackupBucket"], physical["RecordingsBucket"], physical["AccessLogBucket"]} <= buckets
    topics = {t["TopicArn"] for t in boto3.client("sns").list_topics()["Topics"]}
    assert physical["NotificationTopic"] in topics

    ssm = boto3.client("ssm")
    from sip_trunk.settings import parse_settings

    settings_text = ssm.get_parameter(Name=f"/sip-trunk/{STACK}/settings")["Parameter"]["Value"]
    settings = parse_settings(json.loads(settings_text), "settings parameter")
    assert settings.network.public_address == outputs["PrimaryPublicIp"]
    assert settings.elevenlabs.api_key == f"secretsmanager:{STACK}/elevenlabs/api-key"
    host_params = json.loads(ssm.get_parameter(Name=f"/sip-trunk/{STACK}/host-parameters")["Parameter"]["Value"])
    assert host_params["PrimaryAllocationId"] == outputs["PrimaryAllocationId"]
    assert host_params["StandbySubnetId"] == outputs["StandbySubnetId"]
    assert host_params["StateTable"] == physical["StateTable"]
    assert not {"StandbyAllocationId", "InstanceProfileName"} & set(host_params), "host role lives in host.yaml"

    # and every secret the settings document refers to is a secret of the template, created
    assert host_params["LayerVersionArn"].startswith("arn:aws:lambda:")
    existing = {s["Name"] for s in boto3.client("secretsmanager").list_secrets()["SecretList"]}
    secret_names = {
        r["Properties"]["Name"]["Fn::Sub"].replace("${AWS::StackName}", STACK)
        for r in template["Resources"].values()
        if r["Type"] == "AWS::SecretsManager::Secret"
    }
    refs = [*settings.secret_refs(), settings.elevenlabs.api_key]
    assert {str(ref).removeprefix("secretsmanager:") for ref in refs} == secret_names == existing

    # and both state machines exist with every placeholder resolved to a created function
    sfn = boto3.client("stepfunctions")
    for logical in ("ProvisionStateMachine", "FailoverStateMachine"):
        described = sfn.describe_state_machine(stateMachineArn=physical[logical])
        text = described["definition"]
        assert "${" not in text, f"{logical}: unresolved placeholder"
        assert "$$.Execution.Name" in text, f"{logical}: context references lost"
        for arn in re.findall(r"arn:aws:lambda:[^\"]+", text):
            assert arn.rsplit(":", 1)[-1] in functions, f"{logical} invokes a function that does not exist"
    assert physical["FailoverStateMachine"].endswith(f":stateMachine:{STACK}-failover")


def test_with_the_static_range_the_probing_functions_name_the_in_vpc_probe_function(aws: None) -> None:
    """ADR-27: ElevenLabsStaticCidr set → SipProbeFunction in the hosts' subnets with the probe security group, and
    exactly the probing functions name it in PROBE_FUNCTION; the probe group may send SIP to the hosts only."""
    static = {**PARAMETERS, "ElevenLabsStaticCidr": "198.51.100.0/24"}
    plane = create_control_plane(ROOT, STACK, static, high_availability=True)
    lam = boto3.client("lambda")
    probe = lam.get_function(FunctionName=plane.physical["SipProbeFunction"])["Configuration"]
    outputs = plane.network_outputs
    assert probe["VpcConfig"]["SecurityGroupIds"] == [outputs["ProbeSecurityGroupId"]]
    assert sorted(probe["VpcConfig"]["SubnetIds"]) == sorted(outputs["SubnetIds"].split(","))
    named = {
        plane.function_names[name]
        for name, env in plane.functions.items()
        if env.get("PROBE_FUNCTION") == plane.physical["SipProbeFunction"]
    }
    assert named == {"verify_trunk", "health_check", "failover_confirm", "failover_verify"}
    ec2 = boto3.client("ec2")
    group = ec2.describe_security_groups(GroupIds=[outputs["ProbeSecurityGroupId"]])["SecurityGroups"][0]
    assert group["IpPermissions"] == []
    hosts = ec2.describe_security_groups(GroupIds=[outputs["SecurityGroupId"]])["SecurityGroups"][0]
    from_groups = {
        (p["IpProtocol"], p["FromPort"], pair["GroupId"])
        for p in hosts["IpPermissions"]
        for pair in p["UserIdGroupPairs"]
    }
    assert from_groups == {
        ("tcp", 5060, outputs["SecurityGroupId"]),
        ("tcp", 5060, outputs["ProbeSecurityGroupId"]),
        ("udp", 5060, outputs["ProbeSecurityGroupId"]),
    }


SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:sip-gateway/tls-AbCdEf"
KEY_ARN = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def rendered_host_stack(parameters: dict[str, str]) -> tuple[dict[str, dict[str, str]], dict[str, Any]]:
    """The root stack created in moto with `parameters`; stacks/host.yaml rendered with the host-parameters
    document it wrote, as LaunchHost passes it: (each instance's agent.env, the host role's statements by Sid)."""
    from cfnlint.decode import decode
    from sip_trunk.workflows.provision import launch
    from sip_trunk_local.stack_updates import render_resources

    create_control_plane(ROOT, STACK, parameters, high_availability=True)
    document = json.loads(
        boto3.client("ssm").get_parameter(Name=f"/sip-trunk/{STACK}/host-parameters")["Parameter"]["Value"]
    )
    # what LaunchHost passes: the document without the image reference and boot-only entries, plus the slots' images
    host_params = {k: str(v) for k, v in document.items() if k not in {launch.IMAGE_SOURCE, launch.IMAGE}}
    for key in launch.BOOT_ONLY:
        host_params.pop(key)
    host_params |= dict.fromkeys(launch.SLOT_IMAGES.values(), "ami-0123456789abcdef0")
    host_params[launch.CONFIG_VERSION] = "v1"
    template, problems = decode(str(ROOT / "stacks" / "host.yaml"))
    assert template is not None, problems
    rendered = render_resources(template, host_params)
    envs = {}
    for logical in ("PrimaryInstance", "StandbyInstance"):
        user_data = base64.b64decode(rendered[logical][1]["UserData"]).decode()
        block = user_data.split("cat > /etc/sip-trunk/agent.env <<'EOF'\n", 1)[1].split("EOF\n", 1)[0]
        envs[logical] = dict(line.strip().split("=", 1) for line in block.splitlines())
    statements = {
        s["Sid"]: s
        for policy in rendered["HostRole"][1]["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
        if "Sid" in s
    }
    return envs, statements


@pytest.mark.parametrize("tls", [True, False])
def test_the_host_stack_gets_the_host_name_and_zone_exactly_when_tls_is_on(
    aws: None, tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The root stack (created in moto) writes the host-parameters document LaunchHost passes on; stacks/host.yaml
    rendered with it writes the certificate's name and zone into each host's agent.env and grants the Route 53
    challenge permissions on that zone only. Negative control: without the document's ``PublicHostname`` (or its
    ``CertificateZoneId``) the agent.env lines are empty and renew-cert and its timer never run on the hosts."""
    zone, name = "Z0123456789ABCDEFGHIJ", "sip.example.com"
    # the operator's public zone, with an id of the form Route 53 gives (moto's are random letters)
    monkeypatch.setattr("moto.route53.models.create_route53_zone_id", lambda *_, **__: zone)
    boto3.client("route53").create_hosted_zone(Name="example.com", CallerReference="wiring")
    dns = {"HostedZoneId": zone, "RecordName": name}
    parameters = {**PARAMETERS, **dns, **({"EnableTls": "true", "SipTransport": "tls"} if tls else {})}
    envs, statements = rendered_host_stack(parameters)

    for logical, env in envs.items():
        assert env["SIP_TRUNK_PUBLIC_HOSTNAME"] == (name if tls else ""), logical
        assert env["SIP_TRUNK_ACME_HOSTED_ZONE_ID"] == (zone if tls else ""), logical
        assert "SIP_TRUNK_TLS_CERTIFICATE_SECRET_ARN" not in env, logical  # the line exists only with a secret
    acme = {sid for sid in statements if sid.startswith("Acme")}
    if tls:
        assert acme == {"AcmeChallengeRecords", "AcmeZone", "AcmeFindZone", "AcmeWaitForChange"}
        assert statements["AcmeChallengeRecords"]["Resource"] == f"arn:aws:route53:::hostedzone/{zone}"
    else:
        assert acme == set()
    assert not {"ReadCertificateSecret", "DecryptCertificateSecret"} & set(statements)


@pytest.mark.parametrize("zone", [True, False], ids=["with-zone", "without-zone"])
@pytest.mark.parametrize("key", [True, False], ids=["customer-key", "aws-managed-key"])
def test_with_the_operators_secret_the_host_stack_reads_that_secret_and_gets_no_route53_permission(
    aws: None, zone: bool, key: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR-48: the secret wins over a zone. agent.env names the secret and no zone (renew-cert never runs certbot),
    the host role may read exactly that secret, decrypt with the operator's key only when one is given, and
    has no Route 53 statement; the settings carry the DNS name with or without a zone (the certificate's name)."""
    zone_id, name = "Z0123456789ABCDEFGHIJ", "sip.example.com"
    monkeypatch.setattr("moto.route53.models.create_route53_zone_id", lambda *_, **__: zone_id)
    boto3.client("route53").create_hosted_zone(Name="example.com", CallerReference="wiring")
    parameters = {**PARAMETERS, "EnableTls": "true", "SipTransport": "tls", "RecordName": name,
                  "TlsCertificateSecretArn": SECRET_ARN}  # fmt: skip
    if zone:
        parameters["HostedZoneId"] = zone_id
    if key:
        parameters["TlsCertificateKmsKeyArn"] = KEY_ARN
    envs, statements = rendered_host_stack(parameters)

    for logical, env in envs.items():
        assert env["SIP_TRUNK_PUBLIC_HOSTNAME"] == name, logical
        assert env["SIP_TRUNK_ACME_HOSTED_ZONE_ID"] == "", logical
        assert env["SIP_TRUNK_TLS_CERTIFICATE_SECRET_ARN"] == SECRET_ARN, logical
    assert {sid for sid in statements if sid.startswith("Acme")} == set()
    assert statements["ReadCertificateSecret"]["Action"] == "secretsmanager:GetSecretValue"
    assert statements["ReadCertificateSecret"]["Resource"] == SECRET_ARN
    if key:
        assert statements["DecryptCertificateSecret"]["Resource"] == KEY_ARN
        assert statements["DecryptCertificateSecret"]["Condition"]["StringEquals"] == {
            "kms:EncryptionContext:SecretARN": SECRET_ARN
        }
    else:
        assert "DecryptCertificateSecret" not in statements
    settings = json.loads(boto3.client("ssm").get_parameter(Name=f"/sip-trunk/{STACK}/settings")["Parameter"]["Value"])
    assert settings["network"]["public_hostname"] == name
