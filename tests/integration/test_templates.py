"""Security and wiring properties of the SAM/CloudFormation templates, read as data.

The templates are parsed with cfn-lint's loader (it understands the short-form tags such as `!Ref`);
the IAM checks run on the SAM-transformed template (samtranslator, offline) so that policy templates
and the roles SAM generates are included.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cfnlint.decode import decode
from sip_trunk.workflows.provision import launch
from support.sam import sam_transform

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ROOT_TEMPLATE = ROOT / "template.yaml"
NETWORK_TEMPLATE = ROOT / "stacks" / "network.yaml"
HOST_TEMPLATE = ROOT / "stacks" / "host.yaml"
ALL_TEMPLATES = [ROOT_TEMPLATE, NETWORK_TEMPLATE, HOST_TEMPLATE]

# docs/CONTRACTS.md: one function per step, handler app.handler in functions/<name>/.
PROVISION_FUNCTIONS = [
    "validate_settings",
    "render_config",
    "launch_host",
    "check_host_stack",
    "apply_config",
    "check_apply",
    "verify_trunk",
    "sync_elevenlabs",
    "record_deployment",
]
FAILOVER_FUNCTIONS = [
    "failover_confirm",
    "failover_lock",
    "failover_move_eip",
    "failover_verify",
    "failover_swap_roles",
]
SCHEDULED_FUNCTIONS = ["health_check", "backup"]
VPC_FUNCTIONS = ["sip_probe"]  # ADR-27: invoked by the probing functions when the static range is set
ALL_FUNCTIONS = PROVISION_FUNCTIONS + FAILOVER_FUNCTIONS + SCHEDULED_FUNCTIONS + VPC_FUNCTIONS

# Every IAM statement with Resource "*" (role → actions). Each is explained in docs/SECURITY.md:
# these actions have no resource-level permissions.
LOG_DELIVERY = {
    "logs:CreateLogDelivery",
    "logs:GetLogDelivery",
    "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery",
    "logs:ListLogDeliveries",
    "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups",
}
WILDCARD_ALLOWLIST: dict[str, set[str]] = {
    # The Describe/List calls of the host stack's resource handlers (tests/unit/test_host_stack_role.py).
    "HostStackRole": {
        "ec2:DescribeIamInstanceProfileAssociations",
        "ec2:DescribeInstanceCreditSpecifications",
        "ec2:DescribeInstances",
        "ec2:DescribeKeyPairs",
        "ec2:DescribeLaunchTemplateVersions",
        "ec2:DescribeLaunchTemplates",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeSubnets",
        "ec2:DescribeVolumes",
        "ec2:DescribeVpcs",
        "ssm:ListAssociations",
    },
    "RenderConfigFunctionRole": {"ec2:DescribeAddresses"},
    "CheckHostStackFunctionRole": {"ec2:DescribeAddresses"},
    "CheckApplyFunctionRole": {"ssm:GetCommandInvocation"},
    "BackupFunctionRole": {"ssm:GetCommandInvocation"},
    "FailoverConfirmFunctionRole": {"ec2:DescribeAddresses", "ec2:DescribeInstances"},
    # ADR-27: with the static range, the probed public address is resolved to the holder's private address.
    "VerifyTrunkFunctionRole": {"ec2:DescribeAddresses", "ec2:DescribeInstances"},
    "FailoverVerifyFunctionRole": {"ec2:DescribeAddresses", "ec2:DescribeInstances"},
    "FailoverMoveEipFunctionRole": {"ec2:DescribeAddresses"},
    "FailoverSwapRolesFunctionRole": {"ec2:DescribeInstances"},
    "HealthCheckFunctionRole": {"ec2:DescribeAddresses", "ec2:DescribeInstances"},
    "ProvisionStateMachineRole": LOG_DELIVERY,
    "FailoverStateMachineRole": LOG_DELIVERY,
}
# The host stack's roles (stacks/host.yaml): the host role lives there (ADR-11).
HOST_WILDCARD_ALLOWLIST: dict[str, set[str]] = {
    # PutMetricData and ListHostedZones have no resource-level permissions (ListHostedZones: renew-cert, TLS on)
    "HostRole": {"cloudwatch:PutMetricData", "route53:ListHostedZones"}
}
MANAGED_POLICY_ALLOWLIST = {
    "AWSLambdaBasicExecutionRole",  # functions: write their log streams
    "AWSXrayWriteOnlyAccess",  # functions and state machines: Tracing Active
    # the in-VPC probe function (ADR-27): Lambda creates and deletes its network interfaces with its role
    "AWSLambdaVPCAccessExecutionRole",
}
HOST_MANAGED_POLICY_ALLOWLIST = {"AmazonSSMManagedInstanceCore"}  # the host: Session Manager and Run Command


def pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def load(path: Path) -> dict[str, Any]:
    template, matches = decode(str(path))
    assert not matches, f"{path.name} does not parse: {matches}"
    assert template is not None
    # Plain dicts/lists/strings (cfn-lint's node types carry positions).
    return json.loads(json.dumps(template))


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {name: res for name, res in template["Resources"].items() if res["Type"] == kind}


def transformed_root(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """template.yaml after the SAM transform, offline (local code/definition paths made S3-like)."""
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return sam_transform(load(ROOT_TEMPLATE))


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# --- parameters --------------------------------------------------------------------------------------


def test_every_parameter_is_explained_and_constrained() -> None:
    params = load(ROOT_TEMPLATE)["Parameters"]
    for name, spec in params.items():
        assert spec.get("Description"), f"{name}: no Description"
        assert "AllowedPattern" in spec or "AllowedValues" in spec, f"{name}: no AllowedPattern/AllowedValues"
        assert spec.get("ConstraintDescription"), f"{name}: no human ConstraintDescription"
    labelled = {p for group in load(ROOT_TEMPLATE)["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
                for p in group["Parameters"]}  # fmt: skip
    assert labelled == set(params), "every parameter appears in exactly the console's parameter groups"


def test_parameter_patterns_accept_good_and_refuse_bad_values() -> None:
    params = load(ROOT_TEMPLATE)["Parameters"]

    def ok(name: str, value: str) -> bool:
        return re.fullmatch(params[name]["AllowedPattern"], value) is not None

    assert ok("ElevenLabsPhoneNumber", "+14155550100")
    assert not ok("ElevenLabsPhoneNumber", "14155550100")
    assert not ok("ElevenLabsPhoneNumber", "+1415555\n0100")
    assert ok("AllowedSipCidrs", "")
    assert ok("AllowedSipCidrs", "198.51.100.0/24,203.0.113.7/32")
    assert not ok("AllowedSipCidrs", "198.51.100.0/24, 203.0.113.7/32")
    assert not ok("AllowedSipCidrs", "1.1.1.0/24,2.2.2.0/24,3.3.3.0/24,4.4.4.0/24,5.5.5.0/24")
    assert ok("ElevenLabsStaticCidr", "")
    assert not ok("ElevenLabsStaticCidr", "198.51.100.0/23")
    assert ok("AmiReference", "ami-0123456789abcdef0")
    assert ok("AmiReference", "/aws-sip-trunk/ami/latest")
    assert not ok("InboundUsername", "bad;user")
    assert params["InstanceType"]["Default"].split(".")[0].endswith("g"), "default is a Graviton type"
    assert params["ElevenLabsSipHost"]["Default"] == "sip.rtc.elevenlabs.io"


def test_generated_passwords_use_only_the_digest_password_alphabet() -> None:
    from sip_trunk.settings import PASSWORD_ALPHABET

    allowed = set(re.sub(r"(.)-(.)", lambda m: "".join(map(chr, range(ord(m[1]), ord(m[2]) + 1))), PASSWORD_ALPHABET))
    allowed |= {"-"}
    printable = {chr(c) for c in range(33, 127)}
    secrets = resources(load(ROOT_TEMPLATE), "AWS::SecretsManager::Secret")
    generated = {n: s for n, s in secrets.items() if "GenerateSecretString" in s["Properties"]}
    assert set(generated) == {"InboundPasswordSecret", "OutboundPasswordSecret"}
    for name, secret in generated.items():
        spec = secret["Properties"]["GenerateSecretString"]
        assert spec["PasswordLength"] == 32, name
        assert not spec.get("IncludeSpace"), name
        assert printable - set(spec["ExcludeCharacters"]) == allowed, name


# --- settings document ---------------------------------------------------------------------------


class Evaluator:
    """Just enough of CloudFormation's intrinsic functions to evaluate the settings/host Subs."""

    def __init__(self, template: dict[str, Any], params: dict[str, str]) -> None:
        self.template = template
        defaults = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
        self.params = {**defaults, **params, "AWS::StackName": "sip-prod", "AWS::Region": "eu-west-1"}
        self.params |= {"AWS::AccountId": "123456789012", "AWS::Partition": "aws", "AWS::NoValue": ""}

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template["Conditions"][name]))

    def value(self, node: Any) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            return node
        (fn, arg), = node.items()  # fmt: skip
        if fn == "Ref":
            return self.params.get(arg, f"<{arg}>")
        if fn == "Fn::GetAtt":
            return f"<{'.'.join(as_list(arg))}>"
        if fn == "Fn::If":
            return self.value(arg[1] if self.condition(arg[0]) else arg[2])
        if fn == "Fn::Equals":
            return str(self.value(arg[0])) == str(self.value(arg[1]))
        if fn == "Fn::Not":
            return not self.value(arg[0])
        if fn == "Fn::And":
            return all(self.value(a) for a in arg)
        if fn == "Fn::Or":
            return any(self.value(a) for a in arg)
        if fn == "Condition":
            return self.condition(arg)
        if fn == "Fn::Sub":
            text, variables = (arg, {}) if isinstance(arg, str) else arg
            scope = {k: str(self.value(v)) for k, v in variables.items()}

            def repl(match: re.Match[str]) -> str:
                key = match[1]
                if key in scope:
                    return scope[key]
                if key in self.params:
                    return self.params[key]
                return f"<{key}>"

            return re.sub(r"\$\{([A-Za-z0-9:._]+)\}", repl, text)
        raise AssertionError(f"intrinsic {fn} not understood by the test evaluator")


SCENARIOS = {
    "minimal": {"ElevenLabsPhoneNumber": "+14155550100", "AlarmEmail": "ops@example.com"},
    "everything": {
        "ElevenLabsPhoneNumber": "+442071234567",
        "AlarmEmail": "ops@example.com",
        "SipTransport": "tls",
        "EnableTls": "true",
        "MediaEncryption": "required",
        "ElevenLabsPhoneNumberId": "phnum_123",
        "ElevenLabsAgentId": "agent_456",
        "AllowedSipCidrs": "198.51.100.0/24",
        "HostedZoneId": "Z0123456789ABC",
        "RecordName": "sip.example.com",
        "RecordingsEnabled": "true",
        "HighAvailability": "true",
        "AmiSource": "image-pipeline",
        "AmiReference": "/aws-sip-trunk/ami/latest",
    },
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_settings_parameter_is_a_valid_settings_document(scenario: str) -> None:
    from sip_trunk.settings import parse_settings

    template = load(ROOT_TEMPLATE)
    evaluator = Evaluator(template, SCENARIOS[scenario])
    text = evaluator.value(template["Resources"]["SettingsParameter"]["Properties"]["Value"])
    assert template["Resources"]["SettingsParameter"]["Properties"]["Name"] == {
        "Fn::Sub": "/sip-trunk/${AWS::StackName}/settings"
    }
    # The Elastic IP and VPC CIDR come from the network stack at deploy time.
    text = text.replace("<NetworkStack.Outputs.PrimaryPublicIp>", "203.0.113.10")
    text = text.replace("<NetworkStack.Outputs.VpcCidr>", "10.0.0.0/16")
    settings = parse_settings(json.loads(text), f"settings ({scenario})")
    assert settings.elevenlabs.phone_number == SCENARIOS[scenario]["ElevenLabsPhoneNumber"]
    assert settings.elevenlabs.inbound_password == "secretsmanager:sip-prod/sip/inbound-password"
    assert settings.elevenlabs.outbound_password == "secretsmanager:sip-prod/sip/outbound-password"
    assert settings.elevenlabs.api_key == "secretsmanager:sip-prod/elevenlabs/api-key"
    assert settings.network.public_address == "203.0.113.10"
    assert settings.dialplan.recording == (SCENARIOS[scenario].get("RecordingsEnabled") == "true")


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_host_parameters_document_matches_the_host_template(scenario: str) -> None:
    template = load(ROOT_TEMPLATE)
    text = Evaluator(template, SCENARIOS[scenario]).value(
        template["Resources"]["HostParametersParameter"]["Properties"]["Value"]
    )
    document = json.loads(text)
    # LaunchHost takes out what the host stack does not take: the image reference (it passes the resolved AMI
    # id per slot instead) and what a host reads itself at boot (the layer's ARN)
    resolved = {launch.IMAGE_SOURCE, launch.IMAGE, *launch.BOOT_ONLY}
    assert resolved <= set(document)
    values = {k: v for k, v in document.items() if k not in resolved}
    host_params = load(HOST_TEMPLATE)["Parameters"]
    assert set(values) <= set(host_params), set(values) - set(host_params)
    required = {name for name, spec in host_params.items() if "Default" not in spec}
    added = {launch.CONFIG_VERSION, *launch.SLOT_IMAGES.values()}
    assert required <= set(values) | added, f"LaunchHost would miss {required - set(values) - added}"
    assert set(host_params) - set(values) <= {"VolumeSizeGiB", *added}
    for name, value in values.items():
        pattern = host_params[name].get("AllowedPattern")
        if pattern and not value.startswith("<"):
            assert re.fullmatch(pattern, value), f"{name}={value!r} breaks the host template's pattern"
        if "AllowedValues" in host_params[name]:
            assert value in host_params[name]["AllowedValues"], name


# --- network exposure --------------------------------------------------------------------------------


def ingress_rules() -> list[tuple[str | None, dict[str, Any]]]:
    """(condition, rule) for every ingress rule of the network stack, inline or standalone."""
    template = load(NETWORK_TEMPLATE)
    rules: list[tuple[str | None, dict[str, Any]]] = []
    for res in resources(template, "AWS::EC2::SecurityGroup").values():
        rules += [(res.get("Condition"), rule) for rule in res["Properties"].get("SecurityGroupIngress", [])]
    for res in resources(template, "AWS::EC2::SecurityGroupIngress").values():
        rules.append((res.get("Condition"), res["Properties"]))
    return rules


def test_security_group_opens_only_sip_and_rtp_and_never_ssh() -> None:
    allowed = {("tcp", 5060, 5060), ("tcp", 5061, 5061), ("udp", 5060, 5060), ("udp", 10000, 20000)}
    rules = ingress_rules()
    assert rules
    for _, rule in rules:
        ports = (rule["IpProtocol"], int(rule["FromPort"]), int(rule["ToPort"]))
        assert ports in allowed, f"unexpected ingress {ports}"
        assert not ports[1] <= 22 <= ports[2], "port 22 must stay closed (Session Manager instead)"
        assert rule["IpProtocol"] != "-1"
        assert "CidrIpv6" not in rule
        assert "SourcePrefixListId" not in rule


def test_udp_sip_only_from_allowed_networks_and_rtp_from_anywhere() -> None:
    world = "0.0.0.0/0"
    by_port: dict[tuple[str, int], list[tuple[str | None, Any]]] = {}
    for condition, rule in ingress_rules():
        if "CidrIp" not in rule:
            continue  # a group source: test_sip_from_groups_only_from_the_hosts_and_the_probe_function
        by_port.setdefault((rule["IpProtocol"], int(rule["FromPort"])), []).append((condition, rule["CidrIp"]))
    assert all(cidr != world for _, cidr in by_port[("udp", 5060)]), "SIP over UDP must not be open to the world"
    assert all(json.dumps(cidr).count("AllowedSipCidrs") == 1 for _, cidr in by_port[("udp", 5060)])
    assert (None, world) in by_port[("udp", 10000)], "RTP must be open to any source (ElevenLabs media)"
    # TCP 5060 / TLS 5061 reach the world only while no ElevenLabs static range is given, TCP 5060 only while
    # the trunk's transport is tcp and TLS 5061 only while TLS is on.
    assert [c for c, cidr in by_port[("tcp", 5060)] if cidr == world] == ["TcpOpenToAll"]
    assert [c for c, cidr in by_port[("tcp", 5061)] if cidr == world] == ["TlsOpenToAll"]
    conditions = load(NETWORK_TEMPLATE)["Conditions"]
    assert conditions["SipOpenToAll"] == {"Fn::Not": [{"Condition": "HasStaticCidr"}]}
    assert conditions["TcpOpenToAll"] == {"Fn::And": [{"Condition": "TrunkOverTcp"}, {"Condition": "SipOpenToAll"}]}
    assert conditions["TlsOpenToAll"] == {"Fn::And": [{"Condition": "TlsOn"}, {"Condition": "SipOpenToAll"}]}
    assert ("TcpToStatic", {"Ref": "ElevenLabsStaticCidr"}) in by_port[("tcp", 5060)]


def test_sip_from_groups_only_from_the_hosts_and_the_probe_function() -> None:
    """ADR-27: the only group sources are the hosts' own group (watch-peer, TCP 5060 only) and the in-VPC probe
    function's group, which exists only with the static range and admits nothing itself."""
    template = load(NETWORK_TEMPLATE)
    sources: dict[str, set[tuple[str, int, str | None]]] = {}
    for condition, rule in ingress_rules():
        if "SourceSecurityGroupId" in rule:
            group = rule["SourceSecurityGroupId"]["Ref"]
            sources.setdefault(group, set()).add((rule["IpProtocol"], int(rule["FromPort"]), condition))
    assert sources == {
        "SipSecurityGroup": {("tcp", 5060, None)},
        "ProbeSecurityGroup": {("tcp", 5060, "HasStaticCidr"), ("tcp", 5061, "TlsToStatic"),
                               ("udp", 5060, "HasStaticCidr")},
    }  # fmt: skip
    probe = template["Resources"]["ProbeSecurityGroup"]
    assert probe["Condition"] == "HasStaticCidr"
    assert "SecurityGroupIngress" not in probe["Properties"]
    assert {json.dumps(e["DestinationSecurityGroupId"]) for e in probe["Properties"]["SecurityGroupEgress"]} == {
        json.dumps({"Ref": "SipSecurityGroup"})
    }


def test_the_probe_function_is_the_only_function_in_the_vpc_and_the_probing_functions_may_invoke_it() -> None:
    """ADR-27: SipProbeFunction sits in the hosts' subnets with the probe group; the functions that probe name it
    in PROBE_FUNCTION and may invoke it, exactly when the static range is set."""
    root = load(ROOT_TEMPLATE)
    functions = resources(root, "AWS::Serverless::Function")
    in_vpc = {name for name, f in functions.items() if "VpcConfig" in f["Properties"]}
    assert in_vpc == {"SipProbeFunction"}
    probe = functions["SipProbeFunction"]
    assert probe["Condition"] == "HasStaticCidr"
    assert root["Conditions"]["HasStaticCidr"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "ElevenLabsStaticCidr"}, ""]}]}
    vpc = probe["Properties"]["VpcConfig"]
    assert vpc["SecurityGroupIds"] == [{"Fn::GetAtt": ["NetworkStack", "Outputs.ProbeSecurityGroupId"]}]
    assert "Policies" not in probe["Properties"], "it calls no AWS API"
    outputs = load(NETWORK_TEMPLATE)["Outputs"]
    assert outputs["ProbeSecurityGroupId"]["Value"] == {"Fn::If": ["HasStaticCidr", {"Ref": "ProbeSecurityGroup"}, ""]}
    probing = {"VerifyTrunkFunction", "HealthCheckFunction", "FailoverConfirmFunction", "FailoverVerifyFunction"}
    for name, function in functions.items():
        env = function["Properties"].get("Environment", {}).get("Variables", {})
        statements = json.dumps(function["Properties"].get("Policies", []))
        if name in probing:
            assert env["PROBE_FUNCTION"] == {"Fn::If": ["HasStaticCidr", {"Ref": "SipProbeFunction"}, ""]}, name
            assert '"lambda:InvokeFunction"' in statements, name
            assert '"ec2:DescribeAddresses"' in statements, name
        else:
            assert "PROBE_FUNCTION" not in env, name
            assert "SipProbeFunction" not in statements, name


def test_subnets_in_two_zones_and_no_automatic_public_ips() -> None:
    template = load(NETWORK_TEMPLATE)
    subnets = resources(template, "AWS::EC2::Subnet")
    assert len(subnets) == 2
    zones = {json.dumps(s["Properties"]["AvailabilityZone"]) for s in subnets.values()}
    assert len(zones) == 2
    assert all(s["Properties"]["MapPublicIpOnLaunch"] is False for s in subnets.values())
    cidr = ipaddress.IPv4Network(template["Parameters"]["VpcCidr"]["Default"])
    assert cidr.prefixlen == 16
    assert resources(template, "AWS::EC2::FlowLog"), "VPC flow logs"
    # One Elastic IP: the control plane moves it to whichever host is primary; no standby address (ADR-12).
    eips = resources(template, "AWS::EC2::EIP")
    assert set(eips) == {"PrimaryAddress"}
    assert "Condition" not in eips["PrimaryAddress"]
    assert not [o for o in template["Outputs"] if o.startswith("Standby") and o != "StandbySubnetId"]
    assert "StandbyAllocationId" not in load(HOST_TEMPLATE)["Parameters"]


# --- encryption and public access ----------------------------------------------------------------


def test_buckets_are_encrypted_private_and_tls_only() -> None:
    template = load(ROOT_TEMPLATE)
    buckets = resources(template, "AWS::S3::Bucket")
    assert {"RecordingsBucket", "BackupBucket", "AccessLogBucket"} <= set(buckets)
    policies = {p["Properties"]["Bucket"]["Ref"]: p for p in resources(template, "AWS::S3::BucketPolicy").values()}
    for name, bucket in buckets.items():
        props = bucket["Properties"]
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"], name
        block = props["PublicAccessBlockConfiguration"]
        assert all(
            block[k] is True
            for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
        )
        assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}], name
        statements = policies[name]["Properties"]["PolicyDocument"]["Statement"]
        assert any(
            s["Effect"] == "Deny"
            and s["Principal"] == "*"
            and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
            for s in statements
        ), f"{name}: no TLS-only policy"
        assert "AccessControl" not in props, name
    assert buckets["BackupBucket"]["Properties"]["VersioningConfiguration"] == {"Status": "Enabled"}
    backup_rules = buckets["BackupBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert any("NoncurrentVersionExpiration" in r for r in backup_rules)


def test_recording_lifecycle_never_contradicts_itself() -> None:
    template = load(ROOT_TEMPLATE)
    rule = template["Resources"]["RecordingsBucket"]["Properties"]["LifecycleConfiguration"]["Rules"][0]
    for days in template["Parameters"]["RecordingRetentionDays"]["AllowedValues"]:
        evaluator = Evaluator(template, {"RecordingRetentionDays": str(days)})
        transitions = evaluator.value(rule["Transitions"]) or []
        if transitions == "":
            transitions = []
        for transition in transitions:
            assert transition["TransitionInDays"] < int(days), f"retention {days}: transition after expiry"
        classes = [t["StorageClass"] for t in transitions]
        expected = ["STANDARD_IA", "GLACIER_IR"] if int(days) > 90 else ["STANDARD_IA"] if int(days) > 30 else []
        assert classes == expected, f"retention {days}: {classes}"


def test_data_at_rest_is_encrypted_everywhere() -> None:
    root = load(ROOT_TEMPLATE)
    table = root["Resources"]["StateTable"]["Properties"]
    assert table["SSESpecification"]["SSEEnabled"] is True
    assert table["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"pk": "HASH", "sk": "RANGE"}
    for topic in resources(root, "AWS::SNS::Topic").values():
        assert topic["Properties"]["KmsMasterKeyId"]
    for queue in resources(root, "AWS::SQS::Queue").values():
        assert queue["Properties"].get("KmsMasterKeyId") or queue["Properties"].get("SqsManagedSseEnabled")
    for secret in resources(root, "AWS::SecretsManager::Secret").values():
        assert secret["Properties"]["KmsKeyId"]
    assert root["Resources"]["StackKey"]["Properties"]["EnableKeyRotation"] is True
    volumes = load(HOST_TEMPLATE)["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"][
        "BlockDeviceMappings"
    ]
    assert all(v["Ebs"]["Encrypted"] is True and v["Ebs"]["VolumeType"] == "gp3" for v in volumes)


def test_host_requires_imdsv2_and_signals_its_boot() -> None:
    host = load(HOST_TEMPLATE)
    data = host["Resources"]["LaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    for name, instance in resources(host, "AWS::EC2::Instance").items():
        assert instance["Properties"]["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "LaunchTemplate"}, name
        assert instance["CreationPolicy"]["ResourceSignal"]["Count"] == 1, name
        assert "KeyName" not in instance["Properties"], f"{name}: no SSH key pair"
        role_tags = [t["Value"] for t in instance["Properties"]["Tags"] if t["Key"] == "aws-sip-trunk:role"]
        assert role_tags in (["primary"], ["standby"]), name
        user_data = json.dumps(instance["Properties"]["UserData"])
        assert "signal FAILURE" in user_data
        assert "signal SUCCESS" in user_data
        assert "sip-trunk-agent" in user_data


# --- logs, retries, dead letters ------------------------------------------------------------------


def test_every_log_group_has_retention_and_every_function_and_state_machine_has_one() -> None:
    for path in ALL_TEMPLATES:
        for name, group in resources(load(path), "AWS::Logs::LogGroup").items():
            assert group["Properties"].get("RetentionInDays"), f"{path.name}:{name} keeps logs forever"
            assert group["Properties"].get("KmsKeyId"), f"{path.name}:{name} not KMS-encrypted"
    root = load(ROOT_TEMPLATE)
    groups = set(resources(root, "AWS::Logs::LogGroup"))
    functions = resources(root, "AWS::Serverless::Function")
    for name, fn in functions.items():
        assert fn["Properties"]["LoggingConfig"]["LogGroup"]["Ref"] in groups, name
    for name, sm in resources(root, "AWS::Serverless::StateMachine").items():
        logging = sm["Properties"]["Logging"]
        assert logging["Level"] == "ALL", name
        assert logging["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0] in groups
        assert sm["Properties"]["Tracing"]["Enabled"] is True
    assert root["Globals"]["Function"]["Tracing"] == "Active"


def test_every_schedule_and_rule_target_has_retry_and_dead_letter_queue() -> None:
    root = load(ROOT_TEMPLATE)
    schedules = resources(root, "AWS::Scheduler::Schedule")
    rules = resources(root, "AWS::Events::Rule")
    assert set(schedules) == {"HealthCheckSchedule", "BackupSchedule"}
    assert set(rules) == {"HostDownToFailoverRule", "StackReadyToProvisionRule"}
    targets = [s["Properties"]["Target"] for s in schedules.values()]
    targets += [t for r in rules.values() for t in r["Properties"]["Targets"]]
    for target in targets:
        assert target["RetryPolicy"]["MaximumRetryAttempts"] >= 1
        assert target["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]}
    assert schedules["HealthCheckSchedule"]["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    assert schedules["BackupSchedule"]["Properties"]["ScheduleExpression"].startswith("cron(")
    for fn in resources(root, "AWS::Serverless::Function").values():
        assert "Events" not in fn["Properties"], "event sources are explicit resources with DLQs"
    assert rules["StackReadyToProvisionRule"]["Condition"] == "AutoProvisionOn"
    assert rules["HostDownToFailoverRule"]["Condition"] == "IsHA"


def test_host_down_alarms_match_the_failover_rule() -> None:
    root = load(ROOT_TEMPLATE)
    prefix = root["Resources"]["HostDownToFailoverRule"]["Properties"]["EventPattern"]["detail"]["alarmName"][0]
    assert prefix == {"prefix": {"Fn::Sub": "${AWS::StackName}-host-down-"}}
    host_alarms = resources(load(HOST_TEMPLATE), "AWS::CloudWatch::Alarm")
    down = [a["Properties"]["AlarmName"]["Fn::Sub"] for a in host_alarms.values() if "down" in json.dumps(a)]
    assert down
    assert all(name.startswith("${RootStackName}-host-down-") for name in down)
    assert root["Resources"]["SipProbeAlarm"]["Properties"]["AlarmName"]["Fn::Sub"].startswith(
        "${AWS::StackName}-host-down-"
    )


def test_alarms_cover_host_probe_trunk_failover_and_backup() -> None:
    alarms = resources(load(ROOT_TEMPLATE), "AWS::CloudWatch::Alarm")
    metrics = {
        (json.dumps(a["Properties"].get("Namespace")).strip('"'), a["Properties"].get("MetricName"))
        for a in alarms.values()
    } | {
        (m["MetricStat"]["Metric"]["Namespace"], m["MetricStat"]["Metric"]["MetricName"])
        for a in alarms.values()
        for m in a["Properties"].get("Metrics", [])
        if "MetricStat" in m
    }
    assert ("AwsSipTrunk/Host", "mem_used_percent") in metrics
    assert ("AwsSipTrunk/Host", "disk_used_percent") in metrics
    assert ("AwsSipTrunk", "SipProbeSuccess") in metrics
    assert ("AwsSipTrunk", "TrunkVerified") in metrics
    assert ("AwsSipTrunk", "BackupSucceeded") in metrics
    assert ("AwsSipTrunk", "BackupSkipped") in metrics, "a backup before the first Provision is a run"
    assert ("AWS/States", "ExecutionsStarted") in metrics
    backup = alarms["BackupMissingAlarm"]["Properties"]
    assert backup["TreatMissingData"] == "breaching", "a missing backup must alarm"
    for name, alarm in alarms.items():
        assert alarm["Properties"]["AlarmActions"] == [{"Ref": "NotificationTopic"}], name
    host_cpu = resources(load(HOST_TEMPLATE), "AWS::CloudWatch::Alarm")["PrimaryCpuAlarm"]["Properties"]
    assert host_cpu["MetricName"] == "CPUUtilization"


def test_the_gateway_certificate_alarms_three_weeks_before_it_expires() -> None:
    # The health check publishes GatewayCertificateDaysLeft hourly with transport tls (0 once ElevenLabs would
    # refuse the certificate); VerifyTrunk refuses below CERTIFICATE_MIN_DAYS (14), so 21 leaves a week to renew.
    alarm = resources(load(ROOT_TEMPLATE), "AWS::CloudWatch::Alarm")["GatewayCertificateAlarm"]
    props = alarm["Properties"]
    assert alarm["Condition"] == "TlsOn"
    assert (props["Namespace"], props["MetricName"]) == ("AwsSipTrunk", "GatewayCertificateDaysLeft")
    assert props["Dimensions"] == [{"Name": "service", "Value": {"Ref": "AWS::StackName"}}]
    assert (props["Statistic"], props["ComparisonOperator"], props["Threshold"]) == ("Minimum", "LessThanThreshold", 21)
    assert props["Period"] >= 3600, "one value an hour"
    assert props["AlarmActions"] == [{"Ref": "NotificationTopic"}]


# --- functions, state machines, substitutions --------------------------------------------------------


def test_one_function_per_contract_step() -> None:
    root = load(ROOT_TEMPLATE)
    functions = resources(root, "AWS::Serverless::Function")
    assert set(functions) == {f"{pascal(n)}Function" for n in ALL_FUNCTIONS}
    for name in ALL_FUNCTIONS:
        props = functions[f"{pascal(name)}Function"]["Properties"]
        assert props["CodeUri"] == f"functions/{name}/"
        assert "Handler" not in props, "from Globals"
        assert "Runtime" not in props, "from Globals"
    globals_ = root["Globals"]["Function"]
    assert globals_["Handler"] == "app.handler"
    assert globals_["Runtime"] == "python3.13"
    assert globals_["Architectures"] == ["arm64"]
    assert globals_["Layers"] == [{"Ref": "SipTrunkLayer"}]
    env = globals_["Environment"]["Variables"]
    contract = {
        "STACK_NAME", "CONFIG_PREFIX", "SETTINGS_PARAMETER", "STATE_TABLE", "BACKUP_BUCKET", "RECORDINGS_BUCKET",
        "NOTIFICATION_TOPIC_ARN", "HOST_TEMPLATE_URL", "NETWORK_STACK_NAME", "PRIMARY_ALLOCATION_ID",
        "FAILOVER_STATE_MACHINE_ARN", "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "POWERTOOLS_LOG_LEVEL",
    }  # fmt: skip
    assert contract <= set(env), contract - set(env)
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == "AwsSipTrunk"
    assert env["CONFIG_PREFIX"] == {"Fn::Sub": "/sip-trunk/${AWS::StackName}/asterisk"}


def test_the_layer_is_built_for_the_functions_runtime_and_architecture(tmp_path: Path) -> None:
    """`sam build` runs the layer's Makefile target (BuildMethod: makefile); what it would run (`make -n`, the
    variables expanded) installs wheels for the functions' Python and CPU, whatever the build host's are."""
    root = load(ROOT_TEMPLATE)
    layer = root["Resources"]["SipTrunkLayer"]
    assert layer["Metadata"]["BuildMethod"] == "makefile"
    globals_ = root["Globals"]["Function"]
    proc = subprocess.run(
        ["make", "-n", "-s", "-C", str(ROOT / layer["Properties"]["ContentUri"]), "build-SipTrunkLayer",
         f"ARTIFACTS_DIR={tmp_path}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    pip = next(shlex.split(line) for line in proc.stdout.replace("\\\n", " ").splitlines() if " pip install " in line)
    pip = [part for word in pip for part in (word.split("=", 1) if word.startswith("--") else [word])]
    option = {pip[i]: pip[i + 1] for i in range(len(pip) - 1) if pip[i].startswith("--")}
    assert f"python{option['--python-version']}" == globals_["Runtime"]
    machine = {"arm64": "aarch64", "x86_64": "x86_64"}[globals_["Architectures"][0]]
    assert option["--platform"].endswith(f"_{machine}")
    assert option["--only-binary"] == ":all:"
    assert option["--target"] == f"{tmp_path}/python"


def state_machines() -> dict[str, dict[str, Any]]:
    return resources(load(ROOT_TEMPLATE), "AWS::Serverless::StateMachine")


def test_state_machines_invoke_exactly_their_functions() -> None:
    expected = {"ProvisionStateMachine": PROVISION_FUNCTIONS, "FailoverStateMachine": FAILOVER_FUNCTIONS}
    machines = state_machines()
    assert set(machines) == set(expected)
    for name, functions in expected.items():
        props = machines[name]["Properties"]
        invoked = {
            p["LambdaInvokePolicy"]["FunctionName"]["Ref"] for p in props["Policies"] if "LambdaInvokePolicy" in p
        }
        assert invoked == {f"{pascal(f)}Function" for f in functions}, name
        subs = props["DefinitionSubstitutions"]
        arns = {k for k in subs if k.endswith("FunctionArn")}
        assert arns == {f"{pascal(f)}FunctionArn" for f in functions}, name
        for key in arns:
            assert subs[key] == {"Fn::GetAtt": [key.removesuffix("Arn"), "Arn"]}
        assert {"NotificationTopicArn", "StateTableName", "ConfigPrefix", "FailoverStateMachineArn"} <= set(subs)
    failover_name = machines["FailoverStateMachine"]["Properties"]["Name"]
    assert failover_name == {"Fn::Sub": "${AWS::StackName}-failover"}, "FAILOVER_STATE_MACHINE_ARN is built from it"


@pytest.mark.parametrize("machine", ["ProvisionStateMachine", "FailoverStateMachine"])
def test_every_asl_placeholder_has_a_definition_substitution(machine: str) -> None:
    props = state_machines()[machine]["Properties"]
    path = ROOT / props["DefinitionUri"]
    assert path.exists(), f"{props['DefinitionUri']} is missing"
    text = path.read_text()
    placeholders = set(re.findall(r"\$\{([^}]+)\}", text))
    missing = placeholders - set(props["DefinitionSubstitutions"])
    assert not missing, f"{path.name} uses ${{…}} without a DefinitionSubstitution: {sorted(missing)}"


@pytest.mark.parametrize("machine", ["ProvisionStateMachine", "FailoverStateMachine"])
def test_definitions_load_as_cloudformation_reads_them(machine: str) -> None:
    """CloudFormation parses a `DefinitionS3Location` file with Jackson, which gives a YAML alias as the
    anchor's name (a string), so the deployed definition would be invalid: the loader the harness and local
    mode use refuses aliases, and the definitions load through it."""
    from sip_trunk_local.controlplane import asl_document

    path = ROOT / state_machines()[machine]["Properties"]["DefinitionUri"]
    assert asl_document(path.read_text())["States"]
    retry = "Retry:\n      - ErrorEquals: [AwsThrottled]\n        MaxAttempts: 3\n"
    planted = f"States:\n  A:\n    Type: Pass\n    {retry.replace('Retry:', 'Retry: &retry')}    End: true\n"
    planted += "  B:\n    Type: Pass\n    Retry: *retry\n    End: true\n"
    with pytest.raises(yaml.YAMLError, match="cannot use YAML aliases"):
        asl_document(planted)


# --- IAM -----------------------------------------------------------------------------------------------


def wildcard_statements(template: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name, res in template["Resources"].items():
        if res["Type"] != "AWS::IAM::Role":
            continue
        for policy in res["Properties"].get("Policies", []):
            for statement in walk(policy["PolicyDocument"]):
                is_allow = isinstance(statement, dict) and statement.get("Effect") == "Allow"
                if is_allow and "*" in as_list(statement.get("Resource", [])):
                    found.setdefault(name, set()).update(as_list(statement["Action"]))
    return found


def test_wildcard_resources_equal_the_allowlist(monkeypatch: pytest.MonkeyPatch) -> None:
    template = transformed_root(monkeypatch)
    assert not [
        r for r in template["Resources"].values() if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")
    ]
    assert wildcard_statements(template) == WILDCARD_ALLOWLIST


def test_host_template_wildcard_resources_equal_its_allowlist() -> None:
    host = load(HOST_TEMPLATE)
    assert not [r for r in host["Resources"].values() if r["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy")]
    assert wildcard_statements(host) == HOST_WILDCARD_ALLOWLIST
    assert wildcard_statements(load(NETWORK_TEMPLATE)) == {}


def managed_policies_and_wildcard_actions(template: dict[str, Any]) -> set[str]:
    managed: set[str] = set()
    for name, res in template["Resources"].items():
        if res["Type"] != "AWS::IAM::Role":
            continue
        for arn in res["Properties"].get("ManagedPolicyArns", []):
            managed.add(json.dumps(arn).rsplit("/", 1)[-1].strip('"}'))
        for statement in walk(res["Properties"].get("Policies", [])):
            if isinstance(statement, dict) and "Action" in statement:
                for action in as_list(statement["Action"]):
                    assert "*" not in action, f"{name}: wildcard action {action}"
    return managed


def test_no_wildcard_actions_and_only_known_managed_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    template = transformed_root(monkeypatch)
    assert managed_policies_and_wildcard_actions(template) == MANAGED_POLICY_ALLOWLIST
    assert managed_policies_and_wildcard_actions(load(HOST_TEMPLATE)) == HOST_MANAGED_POLICY_ALLOWLIST
    assert managed_policies_and_wildcard_actions(load(NETWORK_TEMPLATE)) == set()
    for fn in ALL_FUNCTIONS:
        role = template["Resources"][f"{pascal(fn)}FunctionRole"]
        assert "AdministratorAccess" not in json.dumps(role)


def host_stack_statements() -> dict[str, dict[str, Any]]:
    policy = load(ROOT_TEMPLATE)["Resources"]["HostStackRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    return {s["Sid"]: s for s in policy["Statement"]}


def test_host_stack_role_manages_exactly_the_host_role_and_profile() -> None:
    # The host role and its instance profile live in the host stack (ADR-11): the root stack has none.
    root = load(ROOT_TEMPLATE)
    assert not resources(root, "AWS::IAM::InstanceProfile")
    assert "HostRole" not in root["Resources"]
    host = load(HOST_TEMPLATE)
    assert set(resources(host, "AWS::IAM::Role")) == {"HostRole"}
    assert set(resources(host, "AWS::IAM::InstanceProfile")) == {"HostInstanceProfile"}
    assert "InstanceProfileName" not in host["Parameters"]
    # Their ARNs: the path (never truncated) starts with "<root>-host-"; names are generated. The host stack
    # is "<root>-host" (LaunchHost's HOST_STACK_NAME).
    assert root["Globals"]["Function"]["Environment"]["Variables"]["HOST_STACK_NAME"] == {
        "Fn::Sub": "${AWS::StackName}-host"
    }
    evaluator = Evaluator(host, {"RootStackName": "sip-prod"})
    role_arn = f"arn:aws:iam::123456789012:role{evaluator.value(host['Resources']['HostRole']['Properties']['Path'])}"
    role_arn += "sip-prod-host-HostRole-1A2B3C4D5E6F"
    profile = host["Resources"]["HostInstanceProfile"]["Properties"]
    profile_arn = f"arn:aws:iam::123456789012:instance-profile{evaluator.value(profile['Path'])}"
    profile_arn += "sip-prod-host-HostInstanceProfile-1A2B3C4D5E6F"
    assert profile["Roles"] == [{"Ref": "HostRole"}]
    root_eval = Evaluator(root, {})  # AWS::StackName is sip-prod

    def arn_matches(statement: dict[str, Any], arn: str) -> bool:
        pattern = root_eval.value(statement["Resource"])
        return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), arn) is not None

    statements = host_stack_statements()
    assert "AssociateOwnAddresses" not in statements, "the host stack associates no Elastic IP (ADR-11)"
    for sid in ("HostRoleLifecycle", "HostRoleManagedPolicy", "PassHostRole"):
        assert arn_matches(statements[sid], role_arn), sid
        assert not arn_matches(statements[sid], role_arn.replace("sip-prod-host", "other-host")), sid
    assert arn_matches(statements["HostInstanceProfile"], profile_arn)
    # Passes that name a service must name EC2 (tests/unit/test_host_stack_role.py evaluates it).
    assert statements["PassHostRole"]["Condition"] == {
        "StringEqualsIfExists": {"iam:PassedToService": "ec2.amazonaws.com"}
    }
    # Attach/Detach only the managed policies host.yaml attaches.
    attached = {root_eval.value(a) for a in host["Resources"]["HostRole"]["Properties"]["ManagedPolicyArns"]}
    allowed = statements["HostRoleManagedPolicy"]["Condition"]["ArnEquals"]["iam:PolicyARN"]
    assert {root_eval.value(a) for a in as_list(allowed)} == attached
    for sid, statement in statements.items():
        if sid != "HostRoleManagedPolicy":
            assert not {"iam:AttachRolePolicy", "iam:DetachRolePolicy"} & set(as_list(statement["Action"])), sid
