"""Every AWS call the host agent makes is allowed by the host role in stacks/host.yaml, and nothing more is."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "layers/sip_trunk/src/sip_trunk"
AGENT_SOURCES = sorted((PACKAGE / "agent").glob("*.py"))
# The configstore functions the agent uses (publish_config/set_desired_version belong to the control plane).
AGENT_CONFIGSTORE = {"get_desired_version", "fetch_config"}
# Names the scan matches that are not AWS calls: Manifest.verify.
NOT_AWS = {"verify"}
SERVICES = ("ssm", "s3", "cloudwatch", "dynamodb", "stepfunctions", "logs", "kms", "cloudformation", "lambda")

# boto3 operation (snake_case, as called) -> (IAM actions it needs, the host.yaml statement Sid that allows them)
REQUIRED: dict[str, tuple[tuple[str, ...], str]] = {
    "get_parameter": (("ssm:GetParameter", "kms:Decrypt"), "ReadConfig"),  # desired-version pointer
    "get_parameters_by_path": (("ssm:GetParametersByPath", "kms:Decrypt"), "ReadConfig"),  # SecureStrings
    "put_metric_data": (("cloudwatch:PutMetricData",), "HostMetrics"),
    # The state table is encrypted with the stack key: DynamoDB decrypts its table key as the caller.
    "put_item": (("dynamodb:PutItem", "kms:Decrypt"), "Heartbeat"),
    "put_object": (("s3:PutObject", "kms:GenerateDataKey"), "Backups"),
    "get_object": (("s3:GetObject", "kms:Decrypt"), "Backups"),
    "head_object": (("s3:GetObject", "s3:ListBucket"), "Backups"),  # 404 rather than 403 needs ListBucket
    "start_execution": (("states:StartExecution",), "WatchPeerFailover"),
}
KMS_SID = "DecryptConfigAndObjects"
TABLE_KEY_SID = "DecryptStateTableKey"
# The service that asks KMS on the agent's behalf (the kms:ViaService its KMS statement must admit).
KMS_VIA = {
    "get_parameter": ("ssm", KMS_SID),
    "get_parameters_by_path": ("ssm", KMS_SID),
    "put_item": ("dynamodb", TABLE_KEY_SID),
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
    """Every ``<something>.<aws operation>(...)`` in the agent's sources."""
    known = operations() - NOT_AWS
    trees: list[ast.AST] = [ast.parse(path.read_text()) for path in AGENT_SOURCES]
    used = {
        node.attr
        for tree in trees
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "configstore"
    }
    assert used <= AGENT_CONFIGSTORE, used
    store = ast.parse((PACKAGE / "configstore.py").read_text())
    trees += [n for n in ast.walk(store) if isinstance(n, ast.FunctionDef) and n.name in AGENT_CONFIGSTORE]
    found = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in known:
                found.add(node.func.attr)
    return found


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
    assert all(s["Resource"] != "*" for sid, s in by_sid.items() if sid != "HostMetrics")


def test_keys_the_agent_writes_fit_the_scoped_prefixes() -> None:
    backup = (PACKAGE / "agent/backup.py").read_text()
    recordings = (PACKAGE / "agent/recordings.py").read_text()
    assert re.search(r'key = f"hosts/\{instance_id\}/', backup)
    assert 'return f"recordings/' in recordings
    report = (PACKAGE / "agent/report.py").read_text()
    assert 'NAMESPACE = "AwsSipTrunk/Host"' in report
    assert 'item["pk"] = f"host#' in report
