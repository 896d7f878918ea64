"""The operator's own settings document (stored by `sip-trunk push`, never by CloudFormation) drives Provision,
with the fields the stack owns taken from the template's document."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from sip_trunk.errors import SettingsInvalid
from support.moto_sfn import REGION
from support.world import OPERATOR_SETTINGS_PARAMETER, STACK, _reset_caches, operator_document

pytestmark = pytest.mark.integration

EXTENSION_PASSWORD = "ext-1001-Pass-9876"


def ssm() -> Any:
    return boto3.client("ssm", region_name=REGION)


def store(document: dict[str, Any]) -> None:
    ssm().put_parameter(Name=OPERATOR_SETTINGS_PARAMETER, Type="String", Value=json.dumps(document), Overwrite=True)
    _reset_caches()


@pytest.fixture
def extension_secret(world: Any) -> None:
    ssm().put_parameter(Name=f"/sip-trunk/{STACK}/ext/1001", Type="SecureString", Value=EXTENSION_PASSWORD)


def rendered(version: str, path: str) -> str:
    name = f"/sip-trunk/{STACK}/asterisk/{version}/{path}"
    return str(ssm().get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])


def test_validate_uses_the_operator_document(world, handlers, event, lambda_context, extension_secret):
    # Given the operator's full document stored beside the template's
    store(operator_document())
    # When ValidateSettings runs
    result = handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)
    # Then it validated the operator's document (three secrets: the extension's too) under the stack's name
    assert result["settings_source"] == "operator"
    assert result["secrets"] == 3
    assert result["name"] == "demo"


def test_render_uses_the_operator_document_with_the_stack_owned_network(
    world, handlers, event, lambda_context, extension_secret
):
    # Given the operator's document, which names another public address and another local network
    store(operator_document())
    # When RenderConfig runs
    result = handlers["render_config"](event("provision_task_render.json"), lambda_context)
    # Then the carrier, the softphone and the inbound user are configured
    pjsip = rendered(result["version"], "asterisk/pjsip.conf")
    assert "[backup-carrier]" in pjsip
    assert "[1001]" in pjsip
    assert "[acme-elevenlabs]" in pjsip
    # and the Elastic IP is the stack's, the VPC network stays local beside the operator's
    assert result["public_address"] == world.address
    assert f"external_signaling_address = {world.address}" in pjsip
    assert "local_net = 10.0.0.0/16" in pjsip
    assert "local_net = 10.20.0.0/16" in pjsip
    assert "203.0.113.10" not in pjsip


def test_without_an_operator_document_the_template_document_is_used(world, handlers, event, lambda_context):
    result = handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)
    assert result["settings_source"] == "template"
    assert result["secrets"] == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"network": {"udp_enabled": True}}, "network.udp_enabled"),
        ({"dialplan": {"recording": True}}, "dialplan.recording"),
        ({"network": {"sip_port": 5080}}, "network.sip_port"),
    ],
)
def test_an_operator_document_cannot_ask_for_what_the_stack_did_not_build(
    world, handlers, event, lambda_context, extension_secret, change, field
):
    # Given an operator document that needs UDP, recordings or another port the stack does not open/provide
    document = operator_document()
    for section, values in change.items():
        document[section] = {**document.get(section, {}), **values}
    store(document)
    # Then ValidateSettings refuses it and names the field
    with pytest.raises(SettingsInvalid, match=field.replace(".", r"\.")):
        handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)


def test_an_invalid_operator_document_is_refused_with_its_fields(
    world, handlers, event, lambda_context, extension_secret
):
    document = operator_document()
    document["extensions"][0]["password"] = "plain-Password-123"
    store(document)
    with pytest.raises(SettingsInvalid, match=r"(?s)operator settings.*extensions\.0\.password") as raised:
        handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)
    assert "plain-Password-123" not in str(raised.value)
