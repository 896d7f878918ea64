"""`sip-trunk push` / `pull` against moto: a stack with the outputs template.yaml declares, its template
settings parameter (a CloudFormation resource, as in template.yaml) and a Provision state machine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from cfnlint.decode import decode
from moto import mock_aws
from sip_trunk.cli import app
from sip_trunk.push import REQUIRED_OUTPUTS
from support import world
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK = "voice"
SETTINGS = f"/sip-trunk/{STACK}/settings"
OPERATOR = f"/sip-trunk/{STACK}/operator-settings"
SECRET_VALUE = "Secret-Value-0123456789"


def template_document(recording: bool = False) -> dict[str, Any]:
    return {
        "name": "voice",
        "elevenlabs": {
            "phone_number": "+14155550100",
            "outbound_username": "gateway-out",
            "outbound_password": f"secretsmanager:{STACK}/sip/outbound-password",
            "inbound_username": "elevenlabs-in",
            "inbound_password": f"secretsmanager:{STACK}/sip/inbound-password",
        },
        "network": {"public_address": "198.51.100.7", "local_nets": ["10.0.0.0/16"], "udp_enabled": False},
        "dialplan": {"recording": recording},
    }


def stack_template(recording: bool = False) -> str:
    """The outputs push reads, named as in template.yaml, and the template's document as a stack resource."""
    return json.dumps(
        {
            "Resources": {
                "SettingsParameter": {
                    "Type": "AWS::SSM::Parameter",
                    "Properties": {
                        "Name": SETTINGS,
                        "Type": "String",
                        "Value": json.dumps(template_document(recording)),
                    },
                }
            },
            "Outputs": {
                "ProvisionStateMachineArn": {
                    "Value": {"Fn::Sub": "arn:aws:states:${AWS::Region}:${AWS::AccountId}:stateMachine:voice-provision"}
                },
                "SettingsParameterName": {"Value": {"Ref": "SettingsParameter"}},
                "OperatorSettingsParameterName": {
                    "Value": {"Fn::Sub": "/sip-trunk/${AWS::StackName}/operator-settings"}
                },
            },
        }
    )


def operator_document() -> dict[str, Any]:
    return world.operator_document(STACK, outbound_password=f"secretsmanager:{STACK}/sip/outbound-password")


class Account:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.ssm = boto3.client("ssm", region_name=REGION)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.cfn = boto3.client("cloudformation", region_name=REGION)
        self.machine_arn = ""

    def state_machine(self, definition: dict[str, Any]) -> None:
        self.machine_arn = self.sfn.create_state_machine(
            name=f"{STACK}-provision",
            definition=json.dumps(definition),
            roleArn="arn:aws:iam::123456789012:role/provision",
        )["stateMachineArn"]

    def write(self, document: Any, name: str = "settings.yaml") -> Path:
        path = self.tmp_path / name
        path.write_text(yaml.safe_dump(document), encoding="utf-8")
        return path

    def stored(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.ssm.get_parameter(Name=OPERATOR)["Parameter"]["Value"])
        except self.ssm.exceptions.ParameterNotFound:
            return None

    def executions(self) -> list[dict[str, Any]]:
        return list(self.sfn.list_executions(stateMachineArn=self.machine_arn)["executions"])


PASS = {"StartAt": "ValidateSettings", "States": {"ValidateSettings": {"Type": "Pass", "End": True}}}
FAIL = {
    "StartAt": "ValidateSettings",
    "States": {"ValidateSettings": {"Type": "Fail", "Error": "SettingsInvalid", "Cause": "secrets not found"}},
}


@pytest.fixture
def account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Account]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        acct = Account(tmp_path)
        acct.cfn.create_stack(StackName=STACK, TemplateBody=stack_template())
        sm = boto3.client("secretsmanager", region_name=REGION)
        for name in ("sip/outbound-password", "sip/inbound-password"):
            sm.create_secret(Name=f"{STACK}/{name}", SecretString=SECRET_VALUE)
        acct.ssm.put_parameter(Name=f"/sip-trunk/{STACK}/ext/1001", Type="SecureString", Value=SECRET_VALUE)
        acct.state_machine(PASS)
        yield acct


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), input=input)


def push(account: Account, path: Path, *extra: str, input: str | None = None) -> Any:
    return run("push", "--stack", STACK, "--settings", str(path), "--region", REGION, *extra, input=input)


# --- the contract with template.yaml ------------------------------------------------------------------
def test_template_declares_the_outputs_push_reads_and_names_the_functions_parameter() -> None:
    template, matches = decode(str(ROOT / "template.yaml"))
    assert not matches
    outputs = template["Outputs"]
    assert set(REQUIRED_OUTPUTS) <= set(outputs)
    # the operator parameter push writes is the one the functions read, and no resource of the stack owns it
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    assert outputs["OperatorSettingsParameterName"]["Value"] == env["OPERATOR_SETTINGS_PARAMETER"]
    assert outputs["SettingsParameterName"]["Value"] == {"Ref": "SettingsParameter"}
    owned = [r["Properties"].get("Name") for r in template["Resources"].values() if r["Type"] == "AWS::SSM::Parameter"]
    assert env["OPERATOR_SETTINGS_PARAMETER"] not in owned
    assert env["SETTINGS_PARAMETER"] in owned


# --- refusals: nothing stored, exit 2, no traceback ---------------------------------------------------
def test_an_invalid_document_is_refused_with_its_fields(account: Account) -> None:
    document = operator_document()
    document["elevenlabs"]["phone_number"] = "4155550100"
    result = push(account, account.write(document), "--yes")
    assert result.exit_code == 2
    assert "elevenlabs.phone_number" in result.output
    assert "Traceback" not in result.output
    assert account.stored() is None
    assert account.executions() == []


def test_a_plain_secret_is_refused_without_showing_it(account: Account) -> None:
    document = operator_document()
    document["extensions"][0]["password"] = "Plain-Password-42"
    result = push(account, account.write(document), "--yes")
    assert result.exit_code == 2
    assert "extensions.0.password" in result.output
    assert "secret reference" in result.output
    assert "Plain-Password-42" not in result.output
    assert account.stored() is None


def test_a_missing_secret_is_refused(account: Account) -> None:
    document = operator_document()
    document["extensions"][0]["password"] = f"ssm:/sip-trunk/{STACK}/ext/9999"
    result = push(account, account.write(document), "--yes")
    assert result.exit_code == 2
    assert f"missing secret: ssm:/sip-trunk/{STACK}/ext/9999" in result.output
    assert account.stored() is None


def test_what_the_stack_did_not_build_is_refused(account: Account) -> None:
    document = operator_document()
    document["network"]["udp_enabled"] = True
    result = push(account, account.write(document), "--yes")
    assert result.exit_code == 2
    assert "network.udp_enabled" in result.output
    assert "AllowedSipCidrs" in result.output
    assert account.stored() is None


def test_a_stack_without_the_outputs_is_refused(account: Account) -> None:
    account.cfn.create_stack(
        StackName="old",
        TemplateBody=json.dumps(
            {
                "Resources": {
                    "P": {
                        "Type": "AWS::SSM::Parameter",
                        "Properties": {"Name": "/old/p", "Type": "String", "Value": "x"},
                    }
                }
            }
        ),
    )
    path = account.write(operator_document())
    result = run("push", "--stack", "old", "--settings", str(path), "--region", REGION, "--yes")
    assert result.exit_code == 1
    assert "OperatorSettingsParameterName" in result.output
    missing = run("push", "--stack", "nope", "--settings", str(path), "--region", REGION, "--yes")
    assert missing.exit_code == 1
    assert "does not exist" in missing.output


def test_not_confirmed_stores_nothing(account: Account) -> None:
    result = push(account, account.write(operator_document()), input="n\n")
    assert result.exit_code == 1
    assert "nothing stored" in result.output
    assert account.stored() is None


# --- storing and provisioning -----------------------------------------------------------------------
def test_push_shows_the_change_stores_the_document_and_does_not_provision_when_asked(account: Account) -> None:
    document = operator_document()
    result = push(account, account.write(document), "--yes", "--no-provision")
    assert result.exit_code == 0, result.output
    # the diff against the template's document, and the stack-owned replacements, named
    assert "--- deployed: template document" in result.output
    assert "+- name: backup-carrier" in result.output
    assert "network.public_address: 203.0.113.10 is replaced by the stack's 198.51.100.7" in result.output
    assert "name: 'acme-voice' is replaced by the stack's deployment name 'voice'" in result.output
    assert account.stored() == document
    param = account.ssm.get_parameter(Name=OPERATOR)["Parameter"]
    assert param["Type"] == "String"
    assert account.executions() == []


def test_push_provisions_and_waits_for_success(account: Account) -> None:
    result = push(account, account.write(operator_document()), "--yes", "--wait", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.output
    [execution] = account.executions()
    assert execution["status"] == "SUCCEEDED"
    assert execution["name"].startswith("push-v1-")
    described = account.sfn.describe_execution(executionArn=execution["executionArn"])
    assert json.loads(described["input"]) == {"reason": "sip-trunk push: operator settings v1"}
    assert f"#/v2/executions/details/{execution['executionArn']}" in result.output
    assert "ValidateSettings" in result.output
    assert "provisioned" in result.output


def test_push_exits_non_zero_when_provision_fails(account: Account) -> None:
    account.sfn.delete_state_machine(stateMachineArn=account.machine_arn)
    account.state_machine(FAIL)
    result = push(account, account.write(operator_document()), "--yes", "--wait", "--poll-interval", "0.05")
    assert result.exit_code == 1
    assert "provision FAILED" in result.output
    assert "SettingsInvalid" in result.output
    assert account.stored() == operator_document()


def test_the_same_document_twice_stores_nothing_and_the_diff_is_against_it(account: Account) -> None:
    path = account.write(operator_document())
    assert push(account, path, "--yes", "--no-provision").exit_code == 0
    again = push(account, path, "--yes")
    assert again.exit_code == 0
    assert "nothing stored" in again.output
    assert account.executions() == []
    changed = operator_document()
    changed["extensions"][0]["max_contacts"] = 5
    result = push(account, account.write(changed, "changed.yaml"), "--yes", "--no-provision")
    assert result.exit_code == 0
    assert "--- deployed: operator document v1" in result.output
    assert "-  max_contacts: 3" in result.output
    assert "+  max_contacts: 5" in result.output
    assert account.ssm.get_parameter(Name=OPERATOR)["Parameter"]["Version"] == 2


def test_pull_round_trips_the_stored_document(account: Account, tmp_path: Path) -> None:
    none = run("pull", "--stack", STACK, "--region", REGION)
    assert none.exit_code == 1
    assert "no operator document" in none.output
    template = run("pull", "--stack", STACK, "--region", REGION, "--template")
    assert yaml.safe_load(template.output) == template_document()
    document = operator_document()
    assert push(account, account.write(document), "--yes", "--no-provision").exit_code == 0
    pulled = tmp_path / "pulled.yaml"
    result = run("pull", "--stack", STACK, "--region", REGION, "--out", str(pulled))
    assert result.exit_code == 0
    assert yaml.safe_load(pulled.read_text()) == document
    # and pushing what was pulled changes nothing
    assert "nothing stored" in push(account, pulled, "--yes").output


def test_a_stack_update_leaves_the_operator_document_alone(account: Account) -> None:
    # Given a pushed operator document
    document = operator_document()
    assert push(account, account.write(document), "--yes", "--no-provision").exit_code == 0
    # When the stack is updated (its template document changes: recordings turned on)
    account.cfn.update_stack(StackName=STACK, TemplateBody=stack_template(recording=True))
    # Then the template's document changed and the operator's is untouched
    template = json.loads(account.ssm.get_parameter(Name=SETTINGS)["Parameter"]["Value"])
    assert template["dialplan"]["recording"] is True
    assert account.stored() == document
    assert account.ssm.get_parameter(Name=OPERATOR)["Parameter"]["Version"] == 1
