"""template.yaml, transformed offline and created in moto's CloudFormation: are the pieces wired?

moto does not apply the SAM transform and has gaps; the fix-ups below are the documented ones:
- the SAM transform runs here (samtranslator) with code/definition locations pointing at S3 objects;
- the network stack is created on its own and its outputs replace `GetAtt NetworkStack.Outputs.X`
  (moto cannot resolve nested-stack outputs);
- state machine definitions are given inline with the substitutions already applied (moto leaves
  DefinitionSubstitutions unresolved);
- AWS::Scheduler::Schedule is removed (unsupported by moto; test_templates.py checks it);
- the dashboard is removed (moto cannot resolve `${Alarm.Arn}` inside its body);
- in the network stack, `Fn::Cidr` and `Fn::GetAZs` are evaluated here (moto does not know them).
"""

from __future__ import annotations

import copy
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cfnlint.decode import decode

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK = "sip-wiring"
PARAMETERS = {
    "ElevenLabsPhoneNumber": "+14155550100",
    "AlarmEmail": "ops@example.com",
    "RecordingsEnabled": "true",
    "HighAvailability": "true",
    "ElevenLabsApiKey": "sk_0123456789abcdefghijklmnop",
}


def load(path: Path) -> dict[str, Any]:
    template, matches = decode(str(path))
    assert not matches
    return json.loads(json.dumps(template))


def replace_network_outputs(node: Any, outputs: dict[str, str], stack_id: str) -> Any:
    if isinstance(node, dict):
        if node.get("Fn::GetAtt", [None])[0] == "NetworkStack":
            return outputs[node["Fn::GetAtt"][1].removeprefix("Outputs.")]
        if node == {"Ref": "NetworkStack"}:
            return stack_id
        if "Fn::Sub" in node:
            sub = node["Fn::Sub"]
            text = sub if isinstance(sub, str) else sub[0]
            text = re.sub(r"\$\{NetworkStack\.Outputs\.(\w+)\}", lambda m: outputs[m[1]], text)
            rest = [] if isinstance(sub, str) else [replace_network_outputs(sub[1], outputs, stack_id)]
            return {"Fn::Sub": text if isinstance(sub, str) else [text, *rest]}
        return {k: replace_network_outputs(v, outputs, stack_id) for k, v in node.items()}
    if isinstance(node, list):
        return [replace_network_outputs(v, outputs, stack_id) for v in node]
    return node


def without_cidr_and_azs(node: Any) -> Any:
    if isinstance(node, dict):
        if "Fn::Cidr" in node:
            return [f"10.0.{i}.0/24" for i in range(int(node["Fn::Cidr"][1]))]
        if "Fn::GetAZs" in node:
            return [f"{REGION}a", f"{REGION}b"]
        return {k: without_cidr_and_azs(v) for k, v in node.items()}
    if isinstance(node, list):
        return [without_cidr_and_azs(v) for v in node]
    return node


def definition(path: Path) -> str:
    if path.exists():
        return json.dumps(yaml.safe_load(path.read_text()))
    return json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}})


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from moto import mock_aws

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws(config={"lambda": {"use_docker": False}}):
        yield


def create_network(cfn: Any) -> tuple[str, dict[str, str]]:
    key = boto3.client("kms").create_key()["KeyMetadata"]["Arn"]
    params = {"RootStackName": STACK, "HighAvailability": "true", "LogKmsKeyArn": key}
    stack_id = cfn.create_stack(
        StackName=f"{STACK}-NetworkStack",
        TemplateBody=json.dumps(without_cidr_and_azs(load(ROOT / "stacks" / "network.yaml"))),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
    )["StackId"]
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return stack_id, {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def root_template(outputs: dict[str, str], network_id: str) -> dict[str, Any]:
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(load(ROOT / "template.yaml"))
    resources = template["Resources"]
    definitions: dict[str, str] = {}
    assert resources.pop("NetworkStack")["Type"] == "AWS::CloudFormation::Stack"
    schedules = [n for n, r in resources.items() if r["Type"] == "AWS::Scheduler::Schedule"]
    assert schedules, "the template schedules the health check and the backup"
    for name in schedules:
        del resources[name]
    assert resources.pop("Dashboard")["Type"] == "AWS::CloudWatch::Dashboard"
    for res in resources.values():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = "s3://artifacts/code.zip"
        elif res["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = "s3://artifacts/code.zip"
        elif res["Type"] == "AWS::Serverless::StateMachine":
            definitions[props["Name"]["Fn::Sub"]] = definition(ROOT / props["DefinitionUri"])
            props["DefinitionUri"] = "s3://artifacts/definition.json"
    template = replace_network_outputs(template, outputs, network_id)

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    transformed = transform(template, {}, NoManagedPolicies())
    for res in transformed["Resources"].values():
        if res["Type"] == "AWS::StepFunctions::StateMachine":
            props = res["Properties"]
            text = definitions[props["StateMachineName"]["Fn::Sub"]]
            del props["DefinitionS3Location"]
            props["DefinitionString"] = {"Fn::Sub": [text, props.pop("DefinitionSubstitutions")]}
    return transformed


def upload_code() -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="artifacts")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("app.py", "def handler(event, context):\n    return event\n")
    s3.put_object(Bucket="artifacts", Key="code.zip", Body=buffer.getvalue())


def test_root_stack_creates_every_piece_and_wires_the_functions(aws: None) -> None:
    # Given the network stack and the transformed root template
    cfn = boto3.client("cloudformation")
    network_id, outputs = create_network(cfn)
    assert outputs["PrimaryAllocationId"].startswith("eipalloc-")
    upload_code()
    template = root_template(outputs, network_id)

    # When the root stack is created
    stack_id = cfn.create_stack(
        StackName=STACK,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in PARAMETERS.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"],
    )["StackId"]
    stack = cfn.describe_stacks(StackName=stack_id)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cfn.describe_stack_resources(StackName=stack_id)["StackResources"]
        if "LogicalResourceId" in r and "PhysicalResourceId" in r  # moto omits them for some types
    }

    # Then every function exists with the contract's environment pointing at real resources
    lam = boto3.client("lambda")
    functions = {f["FunctionName"]: f for f in lam.list_functions()["Functions"]}
    expected = [n for n, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::Function"]
    assert len(expected) == 16
    for logical in expected:
        fn = functions[physical[logical]]
        assert fn["Runtime"] == "python3.13"
        assert fn["Handler"] == "app.handler"
        env = fn["Environment"]["Variables"]
        assert env["STACK_NAME"] == STACK
        assert env["CONFIG_PREFIX"] == f"/{STACK}/asterisk"
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

    # and the table, buckets, topic and parameters exist
    table = boto3.client("dynamodb").describe_table(TableName=physical["StateTable"])["Table"]
    assert {k["AttributeName"] for k in table["KeySchema"]} == {"pk", "sk"}
    buckets = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
    assert {physical["BackupBucket"], physical["RecordingsBucket"], physical["AccessLogBucket"]} <= buckets
    topics = {t["TopicArn"] for t in boto3.client("sns").list_topics()["Topics"]}
    assert physical["NotificationTopic"] in topics

    ssm = boto3.client("ssm")
    from sip_trunk.settings import parse_settings

    settings_text = ssm.get_parameter(Name=f"/{STACK}/settings")["Parameter"]["Value"]
    settings = parse_settings(json.loads(settings_text), "settings parameter")
    assert settings.network.public_address == outputs["PrimaryPublicIp"]
    assert settings.elevenlabs.api_key == f"secretsmanager:{STACK}/elevenlabs/api-key"
    host_params = json.loads(ssm.get_parameter(Name=f"/{STACK}/host-parameters")["Parameter"]["Value"])
    assert host_params["PrimaryAllocationId"] == outputs["PrimaryAllocationId"]
    assert host_params["StandbySubnetId"] == outputs["StandbySubnetId"]
    assert host_params["StateTable"] == physical["StateTable"]

    # and every secret the settings document refers to is a secret of the template (moto stores
    # AWS::SecretsManager::Secret without creating it, so the names are checked on the template)
    secret_names = {
        r["Properties"]["Name"]["Fn::Sub"].replace("${AWS::StackName}", STACK)
        for r in template["Resources"].values()
        if r["Type"] == "AWS::SecretsManager::Secret"
    }
    refs = [*settings.secret_refs(), settings.elevenlabs.api_key]
    assert {str(ref).removeprefix("secretsmanager:") for ref in refs} == secret_names

    # and both state machines exist with every placeholder resolved to a created function
    sfn = boto3.client("stepfunctions")
    for logical in ("ProvisionStateMachine", "FailoverStateMachine"):
        described = sfn.describe_state_machine(stateMachineArn=physical[logical])
        text = described["definition"]
        assert "${" not in text, f"{logical}: unresolved placeholder"
        for arn in re.findall(r"arn:aws:lambda:[^\"]+", text):
            assert arn.rsplit(":", 1)[-1] in functions, f"{logical} invokes a function that does not exist"
    assert physical["FailoverStateMachine"].endswith(f":stateMachine:{STACK}-failover")
