"""Every AWS call the host agent makes is allowed by the host role in stacks/host.yaml, and nothing more is."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name
from support.reach import Reach, codes

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
# Names the agent's code uses that are also AWS operation names but not AWS calls: Manifest.verify.
NOT_AWS = {"verify"}
SERVICES = (
    "ssm", "s3", "cloudwatch", "dynamodb", "stepfunctions", "logs", "kms", "cloudformation", "lambda", "route53",
    "secretsmanager",
)  # fmt: skip

# boto3 operation (snake_case, as called) -> (IAM actions it needs, the host.yaml statement Sid that allows them)
REQUIRED: dict[str, tuple[tuple[str, ...], str]] = {
    "get_parameter": (("ssm:GetParameter", "kms:Decrypt"), "ReadConfig"),  # desired-version pointer
    "get_parameters_by_path": (("ssm:GetParametersByPath", "kms:Decrypt"), "ReadConfig"),  # SecureStrings
    "put_metric_data": (("cloudwatch:PutMetricData",), "HostMetrics"),
    # The state table is encrypted with the stack key: DynamoDB decrypts its table key as the caller.
    "put_item": (("dynamodb:PutItem", "kms:Decrypt"), "Heartbeat"),
    "get_item": (("dynamodb:GetItem", "kms:Decrypt"), "ReadRoles"),  # a later boot's roles
    "put_object": (("s3:PutObject", "kms:GenerateDataKey"), "Backups"),
    "get_object": (("s3:GetObject", "kms:Decrypt"), "Backups"),
    "head_object": (("s3:GetObject", "s3:ListBucket"), "Backups"),  # 404 rather than 403 needs ListBucket
    "start_execution": (("states:StartExecution",), "WatchPeerFailover"),
    # call records, into the same log group the CloudWatch agent ships Asterisk's logs to
    "create_log_stream": (("logs:CreateLogStream",), "ShipLogs"),
    "put_log_events": (("logs:PutLogEvents",), "ShipLogs"),
    # renew-cert: the configured zone must hold the host name
    "get_hosted_zone": (("route53:GetHostedZone",), "AcmeZone"),
    # renew-cert with the operator's certificate (ADR-48)
    "get_secret_value": (("secretsmanager:GetSecretValue",), "ReadCertificateSecret"),
}
KMS_SID = "DecryptConfigAndObjects"
TABLE_KEY_SID = "DecryptStateTableKey"
# The service that asks KMS on the agent's behalf (the kms:ViaService its KMS statement must admit).
KMS_VIA = {
    "get_parameter": ("ssm", KMS_SID),
    "get_parameters_by_path": ("ssm", KMS_SID),
    "put_item": ("dynamodb", TABLE_KEY_SID),
    "get_item": ("dynamodb", TABLE_KEY_SID),
    "put_object": ("s3", KMS_SID),
    "get_object": ("s3", KMS_SID),
}


def via_services(statement: dict[str, Any]) -> set[str]:
    value = statement["Condition"]["StringEquals"]["kms:ViaService"]
    return {v["Fn::Sub"] for v in (value if isinstance(value, list) else [value])}


# Calls made outside the Python agent: the boot script's signal, the stock-path install, the CloudWatch agent.
OTHER = {
    "cloudformation:SignalResource": "SignalBoot",
    "lambda:GetLayerVersion": "InstallAgentFromLayer",
    "logs:CreateLogStream": "ShipLogs",
    "logs:PutLogEvents": "ShipLogs",
    "logs:DescribeLogStreams": "ShipLogs",
    # certbot's Route 53 plugin, run by renew-cert (tests/integration/test_agent_certificate.py evaluates them)
    "route53:ChangeResourceRecordSets": "AcmeChallengeRecords",
    "route53:ListHostedZones": "AcmeFindZone",
    "route53:GetChange": "AcmeWaitForChange",
    # Secrets Manager decrypting the operator's secret under a customer managed key, as the caller
    "kms:Decrypt": "DecryptCertificateSecret",
}


def cfn_load(path: Path) -> dict[str, Any]:
    class Loader(yaml.SafeLoader):
        pass

    def tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
        key = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
        if isinstance(node, yaml.ScalarNode):
            return {key: loader.construct_scalar(node)}
        if isinstance(node, yaml.SequenceNode):
            return {key: loader.construct_sequence(node, deep=True)}
        return {key: loader.construct_mapping(node, deep=True)}  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", tag)
    document: dict[str, Any] = yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - SafeLoader subclass
    return document


def operations() -> set[str]:
    session = botocore.session.get_session()
    return {xform_name(name) for service in SERVICES for name in session.get_service_model(service).operation_names}


def agent_calls() -> set[str]:
    """Every AWS operation the code reachable from the agent's command line names (`<client>.<operation>(…)`),
    found by following the imported agent (support.reach), wherever the code lives."""
    from sip_trunk.agent.__main__ import main

    reach = Reach().follow(main)
    named = {name for function in reach.functions for code in codes(function.__code__) for name in code.co_names}
    return named & (operations() - NOT_AWS)


def statements() -> dict[str, dict[str, Any]]:
    host = cfn_load(REPO / "stacks/host.yaml")
    policy = host["Resources"]["HostRole"]["Properties"]["Policies"]
    out = {}
    for entry in (s for p in policy for s in p["PolicyDocument"]["Statement"]):
        if "Fn::If" in entry:
            entry = entry["Fn::If"][1]
        assert entry["Effect"] == "Allow"
        out[entry["Sid"]] = entry
    return out


def actions(statement: dict[str, Any]) -> set[str]:
    value = statement["Action"]
    return {value} if isinstance(value, str) else set(value)


def test_every_aws_call_of_the_agent_is_in_the_table() -> None:
    calls = agent_calls()
    # sanity: the scan sees the calls we know about
    assert {"get_parameters_by_path", "put_metric_data", "put_item", "start_execution", "head_object"} <= calls
    assert calls == set(REQUIRED), f"AWS calls without a row in REQUIRED (and a statement): {calls - set(REQUIRED)}"


def test_every_required_action_has_an_allow_statement() -> None:
    by_sid = statements()
    for operation, (needed, sid) in REQUIRED.items():
        for action in needed:
            where = (
                KMS_VIA[operation][1]
                if action.startswith("kms:")
                else ("ListBackups" if action == "s3:ListBucket" else sid)
            )
            assert action in actions(by_sid[where]), f"{operation} needs {action} in {where}"
    for action, sid in OTHER.items():
        assert action in actions(by_sid[sid]), action


def test_every_kms_need_is_admitted_through_its_service() -> None:
    by_sid = statements()
    kms_needs = {op for op, (needed, _) in REQUIRED.items() if any(a.startswith("kms:") for a in needed)}
    assert kms_needs == set(KMS_VIA), kms_needs ^ set(KMS_VIA)
    for operation, (service, sid) in KMS_VIA.items():
        via = via_services(by_sid[sid])
        assert f"{service}.${{AWS::Region}}.amazonaws.com" in via, f"{operation}: KMS through {service} is denied"


def test_the_role_grants_nothing_beyond_the_table() -> None:
    by_sid = statements()
    granted = {a for s in by_sid.values() for a in actions(s)}
    needed = {a for acts, _ in REQUIRED.values() for a in acts} | set(OTHER)
    assert granted == needed, f"extra: {granted - needed}; missing: {needed - granted}"


def test_scoping() -> None:
    by_sid = statements()
    assert by_sid["ReadConfig"]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${ConfigPrefix}/*"
    }
    assert by_sid["Heartbeat"]["Condition"] == {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["host#*"]}}
    assert by_sid["HostMetrics"]["Condition"] == {"StringEquals": {"cloudwatch:namespace": "AwsSipTrunk/Host"}}
    assert by_sid["HostMetrics"]["Resource"] == "*"  # PutMetricData has no resource-level permissions
    assert by_sid["Backups"]["Resource"]["Fn::Sub"].endswith(":s3:::${BackupBucket}/hosts/*")
    assert by_sid["Recordings"]["Resource"]["Fn::Sub"].endswith(":s3:::${RecordingsBucket}/recordings/*")
    assert by_sid["ListBackups"]["Condition"] == {"StringLike": {"s3:prefix": ["hosts/*"]}}
    assert by_sid["WatchPeerFailover"]["Resource"] == {"Ref": "FailoverStateMachineArn"}
    for sid in (KMS_SID, TABLE_KEY_SID):
        assert via_services(by_sid[sid]) == {
            f"{service}.${{AWS::Region}}.amazonaws.com" for service, where in KMS_VIA.values() if where == sid
        }
    assert actions(by_sid[TABLE_KEY_SID]) == {"kms:Decrypt"}  # DynamoDB only decrypts the table key
    zone = {"Fn::Sub": "arn:${AWS::Partition}:route53:::hostedzone/${CertificateZoneId}"}
    assert by_sid["AcmeChallengeRecords"]["Resource"] == by_sid["AcmeZone"]["Resource"] == zone
    assert by_sid["AcmeChallengeRecords"]["Condition"] == {
        "ForAllValues:StringEquals": {"route53:ChangeResourceRecordSetsRecordTypes": ["TXT"]},
        "ForAllValues:StringLike": {"route53:ChangeResourceRecordSetsNormalizedRecordNames": ["_acme-challenge.*"]},
    }
    assert by_sid["AcmeFindZone"]["Resource"] == "*"  # ListHostedZones has no resource-level permissions
    assert all(s["Resource"] != "*" for sid, s in by_sid.items() if sid not in ("HostMetrics", "AcmeFindZone"))
    # the operator's certificate: that secret only, and its customer key only through Secrets Manager for it
    assert by_sid["ReadCertificateSecret"]["Resource"] == {"Ref": "CertificateSecretArn"}
    assert by_sid["DecryptCertificateSecret"]["Resource"] == {"Ref": "CertificateKmsKeyArn"}
    assert by_sid["DecryptCertificateSecret"]["Condition"] == {
        "StringLike": {"kms:ViaService": "secretsmanager.*.amazonaws.com"},
        "StringEquals": {"kms:EncryptionContext:SecretARN": {"Ref": "CertificateSecretArn"}},
    }


class RecordingS3:
    """Just enough of an S3 client for `backup`: keeps what was put and answers the check read."""

    def __init__(self) -> None:
        self.put: dict[str, Any] = {}

    def put_object(self, **kwargs: Any) -> dict[str, Any]:
        self.put[kwargs["Key"]] = kwargs
        return {}

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        sent = self.put[Key]
        return {"ContentLength": len(sent["Body"]), "Metadata": sent["Metadata"]}


def _prefix_allows(resource: str, key: str) -> bool:
    """`arn:…:s3:::${Bucket}/<prefix>*` allows `key`."""
    prefix = resource.split("}/", 1)[1]
    return fnmatch.fnmatchcase(key, prefix)


def test_keys_the_agent_writes_fit_the_scoped_prefixes(tmp_path: Path) -> None:
    from sip_trunk import callrecords
    from sip_trunk.agent import backup, recordings, report
    from sip_trunk.agent.config import AgentConfig

    by_sid = statements()
    # a backup
    s3 = RecordingS3()
    config = AgentConfig(
        backup_bucket="b",
        config_dir=tmp_path / "etc",
        releases_dir=tmp_path / "releases",
        astdb_path=tmp_path / "astdb.sqlite3",
        voicemail_dir=tmp_path / "voicemail",
    )
    backup.backup(config, s3, "i-0123456789abcdef0", now=0)
    assert s3.put
    assert all(_prefix_allows(by_sid["Backups"]["Resource"]["Fn::Sub"], key) for key in s3.put), s3.put
    # a recording
    key = recordings.object_key("trunk", "call/../1", 0.0, ".wav")
    assert _prefix_allows(by_sid["Recordings"]["Resource"]["Fn::Sub"], key), key
    # a batch of call records
    key = callrecords.object_key("20261203", "i-0123456789abcdef0", "1796303932206000000")
    assert _prefix_allows(by_sid["CallRecords"]["Resource"]["Fn::Sub"], key), key
    assert not _prefix_allows(by_sid["Backups"]["Resource"]["Fn::Sub"], key)
    # a heartbeat and the host's metrics
    item = report.heartbeat_item({"instance_id": "i-0123456789abcdef0", "reported_at": 0})
    leading = by_sid["Heartbeat"]["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"]
    assert any(fnmatch.fnmatchcase(item["pk"], pattern) for pattern in leading), item["pk"]
    assert by_sid["HostMetrics"]["Condition"]["StringEquals"]["cloudwatch:namespace"] == report.NAMESPACE


def test_the_boot_reads_the_layer_from_the_host_parameters_and_may_install_any_version_of_it() -> None:
    """The stock-image boot reads the layer's ARN from the root stack's document (not its user data) and
    installs it: the statements name the document and every version of the stack's layer, so the policy is
    the same after a code deploy and a host booting just after one may install the newer version."""
    by_sid = statements()
    assert by_sid["ReadLayerVersion"]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${HostParametersName}"
    }
    assert by_sid["InstallAgentFromLayer"]["Resource"] == {
        "Fn::Sub": "arn:${AWS::Partition}:lambda:${AWS::Region}:${AWS::AccountId}:layer:${RootStackName}-sip-trunk:*"
    }
    # the root stack names its layer so
    layer = cfn_load(REPO / "template.yaml")["Resources"]["SipTrunkLayer"]["Properties"]["LayerName"]
    assert layer == {"Fn::Sub": "${AWS::StackName}-sip-trunk"}
