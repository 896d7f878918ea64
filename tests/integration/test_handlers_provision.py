"""Each Provision step handler on its own: invoked as Lambda invokes it, with the Task input the ASL's
Parameters produce (tests/events/provision_task_*.json), against moto, an emulated host agent and the
local ElevenLabs stand-in."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk.configstore import PART_SUFFIX
from sip_trunk.elevenlabs import (
    ElevenLabsAuthError,
    ElevenLabsNotFound,
    ElevenLabsRateLimited,
    ElevenLabsValidationError,
)
from sip_trunk.errors import (
    ApplyFailed,
    SettingsInvalid,
    StackFailed,
    StackTimedOut,
    TrunkNotVerified,
    VerificationTimedOut,
)
from sip_trunk.workflows import clock
from sip_trunk_local.elevenlabs_api import ElevenLabsStandIn
from support.moto_sfn import ACCOUNT, REGION
from support.world import (
    API_KEY,
    CONFIG_PREFIX,
    IMAGE_ID,
    INBOUND_PASSWORD,
    OUTBOUND_PASSWORD,
    STACK,
    World,
    _reset_caches,
    build_world,
    settings_document,
)

pytestmark = pytest.mark.integration

SECRETS = (INBOUND_PASSWORD, OUTBOUND_PASSWORD, API_KEY)
VERSION_RE = re.compile(r"^v[0-9a-f]{16}$")
HOST_STACK = f"{STACK}-host"
KEYED_BY_INSTANCE = {"qualify", "statuses"}


# --- helpers -----------------------------------------------------------------------------------------
def ssm() -> Any:
    return boto3.client("ssm", region_name=REGION)


def now_iso() -> str:
    return clock.iso(time.time()).replace("+00:00", ".000Z")


def same_shape(recorded: Any, real: Any, where: str = "$") -> None:
    """The recorded event and what the previous handler really returns have the same keys (recursively)."""
    if isinstance(recorded, dict) and isinstance(real, dict):
        assert set(recorded) == set(real), f"{where}: recorded {sorted(recorded)} != real {sorted(real)}"
        for key in recorded:
            if key not in KEYED_BY_INSTANCE:
                same_shape(recorded[key], real[key], f"{where}.{key}")
    elif isinstance(recorded, list) and isinstance(real, list) and recorded and real:
        same_shape(recorded[0], real[0], f"{where}[0]")


def idempotency_records(world: Any) -> list[dict[str, Any]]:
    return [i for i in world.ddb.scan()["Items"] if str(i["pk"]).startswith("idempotency#")]


def commands() -> list[dict[str, Any]]:
    return list(ssm().list_commands()["Commands"])


EVENT_HOSTS = ("i-0a1b2c3d4e5f60718", "i-0f1e2d3c4b5a69788")  # the instance ids in the recorded events


def on_hosts(world: Any, recorded: dict[str, Any], stack: str = STACK) -> dict[str, Any]:
    """A recorded event about two hosts that exist (tagged, as the roles require) in a stack named `stack`."""
    text = json.dumps(recorded).replace(":execution:trunk-provision:", f":execution:{stack}-provision:")
    for fixture_id, instance_id in zip(EVENT_HOSTS, world.run_hosts(2, stack), strict=True):
        text = text.replace(fixture_id, instance_id)
    result: dict[str, Any] = json.loads(text)
    return result


def render(handlers: dict[str, Any], event: Any, ctx: Any) -> dict[str, Any]:
    return handlers["render_config"](event("provision_task_render.json"), ctx.fresh())


def launch_and_check(handlers: dict[str, Any], event: Any, ctx: Any, rendered: dict[str, Any]) -> dict[str, Any]:
    launch_event = event("provision_task_launch.json")
    launch_event["render"] = rendered
    launched = handlers["launch_host"](launch_event, ctx.fresh())
    check_event = event("provision_task_check_stack.json")
    check_event["launch"] = launched
    return handlers["check_host_stack"](check_event, ctx.fresh())


def serving(world: Any, version: str, *, heartbeats: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two running hosts, the Elastic IP on the first, both reporting `version`: (render, stack) sections."""
    primary, standby = world.run_hosts(2)
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=primary)
    if heartbeats:
        for instance_id in (primary, standby):
            world.heartbeat(instance_id, version, at=time.time())
    rendered = {
        "version": version,
        "previous_version": None,
        "public_address": world.address,
        "published": True,
        "files": 19,
    }
    stack = {
        "ready": True,
        "status": "CREATE_COMPLETE",
        "primary_instance_id": primary,
        "standby_instance_id": standby,
        "address_associated": True,
    }
    return rendered, stack


def set_stack_status(status: str) -> None:
    from moto.cloudformation.models import cloudformation_backends

    cloudformation_backends[ACCOUNT][REGION].get_stack(HOST_STACK).status = status


def set_invocations(command_id: str, status: str, stderr: str = "") -> None:
    from moto.ssm.models import ssm_backends

    command = ssm_backends[ACCOUNT][REGION].get_command_by_id(command_id)
    for invocation in command.invocations:
        invocation["Status"] = invocation["StatusDetails"] = status
        invocation["StandardErrorContent"] = stderr


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# --- ValidateSettings ----------------------------------------------------------------------------------
def test_validate_settings_summarises_without_side_effects(world, handlers, event, lambda_context):
    # Given the account's settings document and secrets
    # When ValidateSettings runs with the ASL's input
    result = handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)
    # Then it summarises the settings and changes nothing
    assert result == {
        "name": "demo",
        "phone_number": "+14155550100",
        "transport": "tcp",
        "sip_port": 5060,
        "elevenlabs_api": False,
        "secrets": 2,
        "settings_sha256": result["settings_sha256"],
        "settings_source": "template",
        "settings_notes": [],
    }
    assert re.fullmatch(r"[0-9a-f]{64}", result["settings_sha256"])
    same_shape(event("provision_task_record_succeeded.json")["state"]["validate"], result)
    assert world.ssm_versions() == {}
    assert_no_secrets(json.dumps(result))


def test_validate_settings_invalid_document(world, handlers, event, lambda_context):
    # Given a phone number that is not E.164
    world.put_settings(phone_number="4155550100")
    # Then SettingsInvalid names the field
    with pytest.raises(SettingsInvalid, match=r"elevenlabs\.phone_number"):
        handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)


def test_validate_settings_missing_secret(world, handlers, event, lambda_context):
    # Given the inbound password's secret deleted from Secrets Manager
    sm = boto3.client("secretsmanager", region_name=REGION)
    sm.delete_secret(SecretId=f"{STACK}/sip/inbound-password", ForceDeleteWithoutRecovery=True)
    # Then SettingsInvalid names the reference
    with pytest.raises(SettingsInvalid, match=f"secrets not found: secretsmanager:{STACK}/sip/inbound-password"):
        handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)


def test_validate_settings_bad_secret_value_is_not_shown(world, handlers, event, lambda_context, logs):
    # Given a password that breaks the allowed alphabet
    bad = "short pw; DROP"
    ssm().put_parameter(
        Name=f"/sip-trunk/{STACK}/sip/outbound-password", Type="SecureString", Value=bad, Overwrite=True
    )
    # Then SettingsInvalid names the reference, not the value, in the error and in the logs
    with pytest.raises(SettingsInvalid) as raised:
        handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)
    assert f"ssm:/sip-trunk/{STACK}/sip/outbound-password" in str(raised.value)
    assert "value not shown" in str(raised.value)
    assert bad not in str(raised.value)
    logs.assert_no(bad, *SECRETS)


def test_validate_settings_invalid_environment(world, handlers, event, lambda_context, monkeypatch):
    # Given a function deployed without its state table
    from support.world import _reset_caches

    monkeypatch.delenv("STATE_TABLE")
    _reset_caches()
    # Then SettingsInvalid says the environment is wrong
    with pytest.raises(SettingsInvalid, match="function environment is invalid"):
        handlers["validate_settings"](event("provision_task_validate.json"), lambda_context)


# --- RenderConfig --------------------------------------------------------------------------------------
def test_render_config_publishes_a_version_with_secure_strings_and_tiers(world, handlers, event, lambda_context):
    # When RenderConfig runs on a fresh account
    result = handlers["render_config"](event("provision_task_render.json"), lambda_context)
    # Then the version is published under the prefix and desired-version points at it
    version = result["version"]
    assert VERSION_RE.fullmatch(version)
    assert result["previous_version"] is None
    assert result["public_address"] == world.address
    assert result["published"] is True
    same_shape(event("provision_task_launch.json")["render"], result)
    assert world.desired_version() == version
    described: dict[str, dict[str, Any]] = {}
    for page in (
        ssm()
        .get_paginator("describe_parameters")
        .paginate(ParameterFilters=[{"Key": "Name", "Option": "BeginsWith", "Values": [f"{CONFIG_PREFIX}/{version}/"]}])
    ):
        described.update({p["Name"]: p for p in page["Parameters"]})
    stored_files = {name.split(f"/{version}/", 1)[1].split(PART_SUFFIX)[0] for name in described}
    assert len(stored_files) == result["files"]  # a file over 8 KB is stored in parts
    assert f"{CONFIG_PREFIX}/{version}/manifest.json" in described
    values = {}
    for page in (
        ssm()
        .get_paginator("get_parameters_by_path")
        .paginate(Path=f"{CONFIG_PREFIX}/{version}/", Recursive=True, WithDecryption=True)
    ):
        values.update({p["Name"]: p["Value"] for p in page["Parameters"]})
    secure = {n for n, p in described.items() if p["Type"] == "SecureString"}
    assert f"{CONFIG_PREFIX}/{version}/asterisk/pjsip.conf" in secure
    for name, value in values.items():
        # a secret value lives only in a SecureString; the tier follows the size
        if any(s in value for s in (INBOUND_PASSWORD, OUTBOUND_PASSWORD)):
            assert name in secure, name
        assert described[name]["Tier"] == ("Advanced" if len(value.encode()) > 4096 else "Standard"), name
    assert any(INBOUND_PASSWORD in values[n] for n in secure)
    assert {p["Tier"] for p in described.values()} == {"Standard", "Advanced"} or all(
        len(v.encode()) <= 4096 for v in values.values()
    )


def test_render_config_rerun_publishes_nothing(world, handlers, event, lambda_context):
    # Given a rendered version
    first = handlers["render_config"](event("provision_task_render.json"), lambda_context)
    before = world.ssm_versions()
    # When RenderConfig runs again with unchanged settings
    second = handlers["render_config"](event("provision_task_render.json"), lambda_context.fresh())
    # Then nothing is written
    assert second == {**first, "published": False, "previous_version": first["version"]}
    assert world.ssm_versions() == before


def test_render_config_invalid_settings_publish_nothing(world, handlers, event, lambda_context):
    world.put_settings(transport="udp")
    with pytest.raises(SettingsInvalid, match="experimental"):
        handlers["render_config"](event("provision_task_render.json"), lambda_context)
    assert world.ssm_versions() == {}


# --- LaunchHost ----------------------------------------------------------------------------------------
def test_launch_host_creates_the_stack_once_per_execution(world, handlers, event, lambda_context):
    # Given a rendered version
    rendered = render(handlers, event, lambda_context)
    launch_event = event("provision_task_launch.json")
    launch_event["render"] = rendered
    # When LaunchHost runs
    started = time.time()
    result = handlers["launch_host"](launch_event, lambda_context)
    # Then the host stack exists with the root stack's parameters plus ConfigVersion
    assert result["stack_name"] == HOST_STACK
    assert result["operation"] == "created"
    assert started + 1800 <= result["deadline"] <= time.time() + 1800
    same_shape(event("provision_task_check_stack.json")["launch"], result)
    cfn = boto3.client("cloudformation", region_name=REGION)
    stack = cfn.describe_stacks(StackName=HOST_STACK)["Stacks"][0]
    params = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
    assert params["ConfigVersion"] == rendered["version"]
    assert params["StateTable"] == world.env["STATE_TABLE"]
    assert params["ConfigPrefix"] == CONFIG_PREFIX
    events_before = len(cfn.describe_stack_events(StackName=HOST_STACK)["StackEvents"])
    records = idempotency_records(world)
    assert [r["status"] for r in records] == ["COMPLETED"]
    assert "launch" in records[0]["sk"]
    assert int(records[0]["expires_at"]) > time.time()

    # When Step Functions invokes it again with the same input (a retried Lambda invocation)
    again = handlers["launch_host"](launch_event, lambda_context.fresh())
    # Then the stored result comes back (same deadline) and CloudFormation is not called again
    assert again == result
    assert len(cfn.describe_stack_events(StackName=HOST_STACK)["StackEvents"]) == events_before
    assert len(idempotency_records(world)) == 1

    # And a new execution does act: the stack is updated (or found unchanged) with a new deadline
    launch_event["execution"]["name"] = "console-2026-01-02"
    later = handlers["launch_host"](launch_event, lambda_context.fresh())
    assert later["operation"] in {"updated", "unchanged"}
    assert later["deadline"] > result["deadline"]
    assert len(idempotency_records(world)) == 2


def test_launch_host_update_keeps_the_launch_config_version(world, handlers, event, lambda_context):
    # Given a host stack created with the first version (its hosts' user data names it)
    rendered = render(handlers, event, lambda_context)
    first_version = rendered["version"]
    launch_event = event("provision_task_launch.json")
    launch_event["render"] = rendered
    handlers["launch_host"]({**launch_event, "execution": {"name": "first"}}, lambda_context.fresh())
    assert world.stack_parameters()["ConfigVersion"] == first_version
    instances_before = world.ec2.describe_instances()["Reservations"]
    events_before = world.stack_events()
    # When a later execution launches with a new config version only
    world.put_settings(phone_number="+14155550199")
    newer = render(handlers, event, lambda_context.fresh())
    assert newer["version"] != first_version
    launch_event["render"] = newer
    launch_event["execution"]["name"] = "second"
    result = handlers["launch_host"](launch_event, lambda_context.fresh())
    # Then the stack is not updated: ConfigVersion keeps its previous value, no event, same hosts
    assert result["operation"] == "unchanged"
    assert world.stack_parameters()["ConfigVersion"] == first_version
    assert world.stack_events() == events_before
    assert world.ec2.describe_instances()["Reservations"] == instances_before

    # When a host parameter changes, in a third execution
    world.put_host_parameters(StateTable="trunk-state-2")
    launch_event["execution"]["name"] = "third"
    result = handlers["launch_host"](launch_event, lambda_context.fresh())
    # Then the stack is updated with the new parameter, and still the launch-time ConfigVersion
    assert result["operation"] == "updated"
    params = world.stack_parameters()
    assert (params["StateTable"], params["ConfigVersion"]) == ("trunk-state-2", first_version)
    assert world.stack_events() > events_before


def test_a_code_deploy_and_a_new_image_update_the_host_stack_without_interrupting_a_host(
    world, handlers, event, lambda_context
):
    # Given a host stack created from the image the public parameter named then
    rendered = render(handlers, event, lambda_context)
    launch_event = {**event("provision_task_launch.json"), "render": rendered}
    handlers["launch_host"]({**launch_event, "execution": {"name": "first"}}, lambda_context.fresh())
    params = world.stack_parameters()
    assert (params["PrimaryImageId"], params["StandbyImageId"]) == (IMAGE_ID, IMAGE_ID)
    # When a code deploy publishes a new layer version and a new image is published under the same name
    world.put_host_parameters(LayerVersionArn=f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{STACK}-sip-trunk:2")
    World.publish_image("ami-0bbbbbbbbbbbbbbbb")
    # and a Provision runs without asking for a rollout
    result = handlers["launch_host"]({**launch_event, "execution": {"name": "second"}}, lambda_context.fresh())
    # Then nothing changes on the stack, and the new image is reported as pending for both slots
    assert result["operation"] == "unchanged"
    assert result["image"]["target"] == "ami-0bbbbbbbbbbbbbbbb"
    assert result["image"]["pending"] == ["primary", "standby"]
    assert world.stack_parameters() == params

    # When a Provision asks for the image rollout
    before = world.stack_outputs()
    rollout = {**launch_event, "execution": {"name": "third"}, "request": {"rollout_image": True}}
    world.expected_interruptions = {"StandbyInstance"}
    result = handlers["launch_host"](rollout, lambda_context.fresh())
    # Then the new AMI reaches the stack for the standby's slot only: CloudFormation replaces that instance
    # and nothing else (the world plans the update with CloudFormation's rules)
    assert result["operation"] == "updated"
    params = world.stack_parameters()
    assert (params["PrimaryImageId"], params["StandbyImageId"]) == (IMAGE_ID, "ami-0bbbbbbbbbbbbbbbb")
    assert [(i.resource, i.impact) for i in world.interruptions()] == [("StandbyInstance", "replacement")]
    after = world.stack_outputs()
    assert after["PrimaryInstanceId"] == before["PrimaryInstanceId"]
    assert after["StandbyInstanceId"] != before["StandbyInstanceId"]
    old_standby = world.ec2.describe_instances(InstanceIds=[before["StandbyInstanceId"]])["Reservations"][0]
    assert old_standby["Instances"][0]["State"]["Name"] == "terminated"


def test_the_world_fails_a_test_whose_stack_update_would_stop_a_host(world, handlers, event, lambda_context):
    """The negative control of the world's check: a ConfigVersion change (in the hosts' user data) is noticed."""
    cfn = boto3.client("cloudformation", region_name=REGION)
    rendered = render(handlers, event, lambda_context)
    handlers["launch_host"]({**event("provision_task_launch.json"), "render": rendered}, lambda_context.fresh())
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in world.stack_parameters().items()]
    for p in parameters:
        if p["ParameterKey"] == "ConfigVersion":
            p["ParameterValue"] = "v-other"
    cfn.update_stack(StackName=HOST_STACK, UsePreviousTemplate=True, Parameters=parameters)
    with pytest.raises(AssertionError, match=r"PrimaryInstance \(AWS::EC2::Instance\): interruption, UserData"):
        world.check_interruptions()
    world.stack_updates.clear()


def test_launch_host_refuses_a_rolled_back_stack(world, handlers, event, lambda_context):
    # Given a host stack left in ROLLBACK_COMPLETE
    rendered = render(handlers, event, lambda_context)
    launch_event = event("provision_task_launch.json")
    launch_event["render"] = rendered
    handlers["launch_host"]({**launch_event, "execution": {"name": "first"}}, lambda_context.fresh())
    set_stack_status("ROLLBACK_COMPLETE")
    # Then LaunchHost fails with StackFailed telling to delete it, and caches no result
    with pytest.raises(StackFailed, match=r"ROLLBACK_COMPLETE.*delete it"):
        handlers["launch_host"](launch_event, lambda_context.fresh())
    assert [r["status"] for r in idempotency_records(world)] == ["COMPLETED"]  # only the first execution's


def test_launch_host_template_refused(world, handlers, event, lambda_context):
    # Given a host template CloudFormation cannot parse
    rendered = render(handlers, event, lambda_context)
    world.break_host_template()
    launch_event = event("provision_task_launch.json")
    launch_event["render"] = rendered
    # Then StackFailed, and no stack
    with pytest.raises(StackFailed, match=f"cannot create {HOST_STACK}"):
        handlers["launch_host"](launch_event, lambda_context)
    assert boto3.client("cloudformation", region_name=REGION).list_stacks()["StackSummaries"] == []


# --- CheckHostStack ------------------------------------------------------------------------------------
def _launched(handlers: dict[str, Any], event: Any, ctx: Any) -> dict[str, Any]:
    rendered = render(handlers, event, ctx)
    launch_event = event("provision_task_launch.json")
    launch_event["render"] = rendered
    return handlers["launch_host"](launch_event, ctx.fresh())


def test_check_host_stack_ready_puts_the_address_on_the_primary(world, handlers, event, lambda_context):
    # Given a created host stack
    check_event = event("provision_task_check_stack.json")
    check_event["launch"] = _launched(handlers, event, lambda_context)
    # When CheckHostStack runs
    result = handlers["check_host_stack"](check_event, lambda_context)
    # Then the stack is ready and the Elastic IP is on the primary output
    outputs = {
        o["OutputKey"]: o["OutputValue"]
        for o in boto3.client("cloudformation", region_name=REGION).describe_stacks(StackName=HOST_STACK)["Stacks"][0][
            "Outputs"
        ]
    }
    primary, standby = outputs["PrimaryInstanceId"], outputs["StandbyInstanceId"]
    # (moto lists every instance of the account in a command's InstanceIds: the role names the target)
    by_role = {c["Comment"].rsplit(" ", 1)[-1]: c for c in commands()}
    sent = {primary: by_role["primary"], standby: by_role["standby"]}
    assert result == {
        "ready": True,
        "status": "CREATE_COMPLETE",
        "primary_instance_id": primary,
        "standby_instance_id": standby,
        "address_associated": True,
        "roles": [
            {
                "instance_id": primary,
                "role": "primary",
                "peer_address": None,
                "sent": True,
                "command_id": sent[primary]["CommandId"],
                "detail": "",
            },
            {
                "instance_id": standby,
                "role": "standby",
                "peer_address": outputs["PrimaryPrivateIp"],
                "sent": True,
                "command_id": sent[standby]["CommandId"],
                "detail": "",
            },
        ],
    }
    same_shape(event("provision_task_apply.json")["stack"], result)
    assert world.holder() == primary
    # And each host is told its role through Run Command: the standby watches the primary's private address
    assert outputs["PrimaryPrivateIp"] == world.private_ip(primary)
    assert {i: c["Parameters"]["commands"] for i, c in sent.items()} == {
        primary: ["sip-trunk-agent set-role --role primary"],
        standby: [f"sip-trunk-agent set-role --role standby --peer-address {outputs['PrimaryPrivateIp']}"],
    }
    assert all(instance in c["InstanceIds"] for instance, c in sent.items())
    assert {c["DocumentName"] for c in sent.values()} == {"AWS-RunShellScript"}
    assert all(check_event["execution"]["name"] in c["Comment"] for c in sent.values())
    # And a second poll moves nothing (the roles are sent again: set-role is idempotent)
    again = handlers["check_host_stack"](check_event, lambda_context.fresh())
    assert again["address_associated"] is False
    assert [(r["instance_id"], r["role"], r["peer_address"]) for r in again["roles"]] == [
        (primary, "primary", None),
        (standby, "standby", outputs["PrimaryPrivateIp"]),
    ]


def test_check_host_stack_keeps_swapped_roles(world, handlers, event, lambda_context):
    # Given a failover swapped the roles in the state table and the address is on the (new) primary
    check_event = event("provision_task_check_stack.json")
    check_event["launch"] = _launched(handlers, event, lambda_context)
    first = handlers["check_host_stack"](check_event, lambda_context)
    old_primary, new_primary = first["primary_instance_id"], first["standby_instance_id"]
    world.ec2.associate_address(AllocationId=world.allocation_id, InstanceId=new_primary, AllowReassociation=True)
    world.ddb.put_item(
        Item={
            "pk": "deployment",
            "sk": "current",
            "primary_instance_id": new_primary,
            "standby_instance_id": old_primary,
        }
    )
    # When CheckHostStack runs
    result = handlers["check_host_stack"](check_event, lambda_context.fresh())
    # Then the table's primary stays primary and the address is not moved back
    assert (result["primary_instance_id"], result["standby_instance_id"]) == (new_primary, old_primary)
    assert result["address_associated"] is False
    assert world.holder() == new_primary
    # And the roles follow the table, not the stack's slots: the old primary (slot Primary) watches the new
    # primary's private address (the StandbyPrivateIp output)
    assert [(r["instance_id"], r["role"], r["peer_address"]) for r in result["roles"]] == [
        (new_primary, "primary", None),
        (old_primary, "standby", world.private_ip(new_primary)),
    ]
    assert {c["Parameters"]["commands"][0] for c in commands()} >= {
        "sip-trunk-agent set-role --role primary",
        f"sip-trunk-agent set-role --role standby --peer-address {world.private_ip(new_primary)}",
    }


def test_check_host_stack_reports_a_role_it_could_not_send(world, handlers, event, lambda_context):
    # Given Run Command refusing the standby (its SSM agent is not registered)
    check_event = event("provision_task_check_stack.json")
    check_event["launch"] = _launched(handlers, event, lambda_context)
    stack = boto3.client("cloudformation", region_name=REGION).describe_stacks(StackName=HOST_STACK)["Stacks"][0]
    world.unregistered.add(next(o["OutputValue"] for o in stack["Outputs"] if o["OutputKey"] == "StandbyInstanceId"))
    # When CheckHostStack finds the stack ready
    result = handlers["check_host_stack"](check_event, lambda_context)
    # Then it still reports ready (ApplyConfig and VerifyTrunk gate serving) and names the host it could not tell
    assert result["ready"] is True
    primary, standby = result["roles"]
    assert (primary["sent"], standby["sent"]) == (True, False)
    assert "InvalidInstanceId" in standby["detail"]


def test_check_host_stack_in_progress_is_not_ready(world, handlers, event, lambda_context):
    check_event = event("provision_task_check_stack.json")
    check_event["launch"] = _launched(handlers, event, lambda_context)
    set_stack_status("UPDATE_IN_PROGRESS")
    result = handlers["check_host_stack"](check_event, lambda_context)
    assert result == {
        "ready": False,
        "status": "UPDATE_IN_PROGRESS",
        "primary_instance_id": None,
        "standby_instance_id": None,
        "address_associated": False,
        "roles": [],
    }
    assert not world.holder()
    assert commands() == []


def test_check_host_stack_in_progress_past_the_deadline(world, handlers, event, lambda_context):
    check_event = event("provision_task_check_stack.json")
    check_event["launch"] = {**_launched(handlers, event, lambda_context), "deadline": time.time() - 1}
    set_stack_status("CREATE_IN_PROGRESS")
    with pytest.raises(StackTimedOut, match="still CREATE_IN_PROGRESS at the deadline"):
        handlers["check_host_stack"](check_event, lambda_context)


@pytest.mark.parametrize("status", ["ROLLBACK_COMPLETE", "UPDATE_ROLLBACK_COMPLETE", "CREATE_FAILED"])
def test_check_host_stack_failed(world, handlers, event, lambda_context, status):
    check_event = event("provision_task_check_stack.json")
    check_event["launch"] = _launched(handlers, event, lambda_context)
    set_stack_status(status)
    with pytest.raises(StackFailed, match=f"{HOST_STACK} is {status}"):
        handlers["check_host_stack"](check_event, lambda_context)
    assert not world.holder()


def test_check_host_stack_missing(world, handlers, event, lambda_context):
    check_event = event("provision_task_check_stack.json")
    check_event["launch"]["deadline"] = time.time() + 600
    with pytest.raises(StackFailed, match="does not exist"):
        handlers["check_host_stack"](check_event, lambda_context)


# --- ApplyConfig ---------------------------------------------------------------------------------------
def test_apply_config_sends_run_command_to_hosts_not_on_the_version(world, handlers, event, lambda_context):
    # Given two hosts that do not run the version yet
    rendered, stack = serving(world, "v1111111111111111")
    rendered["version"] = "v2222222222222222"
    apply_event = event("provision_task_apply.json")
    apply_event.update(render=rendered, stack=stack)
    # When ApplyConfig runs
    result = handlers["apply_config"](apply_event, lambda_context)
    # Then Run Command asks the agent on both hosts to apply the version
    hosts = [stack["primary_instance_id"], stack["standby_instance_id"]]
    assert result["skipped"] is False
    assert result["instance_ids"] == hosts
    assert result["version"] == "v2222222222222222"
    same_shape(event("provision_task_check_apply.json")["apply"], result)
    sent = commands()
    assert len(sent) == 1
    assert sent[0]["CommandId"] == result["command_id"]
    assert sorted(sent[0]["InstanceIds"]) == sorted(hosts)
    assert sent[0]["DocumentName"] == "AWS-RunShellScript"
    assert sent[0]["Parameters"]["commands"] == ["sip-trunk-agent apply --version v2222222222222222"]
    assert apply_event["execution"]["name"] in sent[0]["Comment"]


def test_apply_config_skips_hosts_already_on_the_version(world, handlers, event, lambda_context):
    rendered, stack = serving(world, "v1111111111111111")
    apply_event = event("provision_task_apply.json")
    apply_event.update(render=rendered, stack=stack)
    result = handlers["apply_config"](apply_event, lambda_context)
    assert (result["skipped"], result["command_id"]) == (True, None)
    assert commands() == []


def test_apply_config_refuses_an_unexpected_version(world, handlers, event, lambda_context):
    rendered, stack = serving(world, "v1111111111111111", heartbeats=False)
    rendered["version"] = "v1111111111111111; reboot"
    apply_event = event("provision_task_apply.json")
    apply_event.update(render=rendered, stack=stack)
    with pytest.raises(SettingsInvalid, match="unexpected version id"):
        handlers["apply_config"](apply_event, lambda_context)
    assert commands() == []


# --- CheckApply ----------------------------------------------------------------------------------------
def _applied(world: Any, handlers: dict[str, Any], event: Any, ctx: Any) -> dict[str, Any]:
    rendered, stack = serving(world, "v1111111111111111", heartbeats=False)
    apply_event = event("provision_task_apply.json")
    apply_event.update(render=rendered, stack=stack)
    check_event = event("provision_task_check_apply.json")
    check_event["apply"] = handlers["apply_config"](apply_event, ctx.fresh())
    return check_event


def test_check_apply_done(world, handlers, event, lambda_context):
    check_event = _applied(world, handlers, event, lambda_context)
    result = handlers["check_apply"](check_event, lambda_context)
    assert result == {"done": True, "statuses": dict.fromkeys(check_event["apply"]["instance_ids"], "Success")}


def test_check_apply_in_progress_polls_again(world, handlers, event, lambda_context):
    # Given the agent still running (the ASL loops WaitForApply ⇄ CheckApply on done=false)
    check_event = _applied(world, handlers, event, lambda_context)
    set_invocations(check_event["apply"]["command_id"], "InProgress")
    result = handlers["check_apply"](check_event, lambda_context)
    assert result == {"done": False, "statuses": dict.fromkeys(check_event["apply"]["instance_ids"], "InProgress")}


def test_check_apply_in_progress_past_the_deadline(world, handlers, event, lambda_context):
    check_event = _applied(world, handlers, event, lambda_context)
    check_event["apply"]["deadline"] = time.time() - 1
    set_invocations(check_event["apply"]["command_id"], "InProgress")
    with pytest.raises(ApplyFailed, match="did not finish before the deadline"):
        handlers["check_apply"](check_event, lambda_context)


def test_check_apply_failed_quotes_the_agent(world, handlers, event, lambda_context):
    check_event = _applied(world, handlers, event, lambda_context)
    set_invocations(check_event["apply"]["command_id"], "Failed", "apply: asterisk refused the new pjsip.conf\n")
    with pytest.raises(ApplyFailed, match=re.escape("Failed apply: asterisk refused the new pjsip.conf")):
        handlers["check_apply"](check_event, lambda_context)


def test_check_apply_skipped(world, handlers, event, lambda_context):
    check_event = event("provision_task_check_apply.json")
    check_event["apply"].update(skipped=True, command_id=None)
    result = handlers["check_apply"](check_event, lambda_context)
    assert result == {"done": True, "statuses": dict.fromkeys(check_event["apply"]["instance_ids"], "AlreadyCurrent")}


# --- VerifyTrunk ---------------------------------------------------------------------------------------
def test_verify_trunk_passes(world, handlers, event, lambda_context, capsys):
    # Given both hosts on the version and the Elastic IP answering SIP
    rendered, stack = serving(world, "v1111111111111111")
    verify_event = event("provision_task_verify.json")
    verify_event.update(render=rendered, stack=stack, entered_at=now_iso())
    # When VerifyTrunk runs
    result = handlers["verify_trunk"](verify_event, lambda_context)
    # Then every host is ok, the probe answered 200, and TrunkVerified was published
    assert [h["ok"] for h in result["hosts"]] == [True, True]
    assert result["probe"]["reachable"] is True
    assert result["probe"]["status_code"] == 200
    assert result["elevenlabs"] == {
        "checked": False,
        "matches": None,
        "mismatches": [],
        "note": NO_API_KEY_YET,
    }
    same_shape(event("provision_task_record_succeeded.json")["state"]["verify"], result)
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert any(doc.get("TrunkVerified") in (1, 1.0, [1.0]) for doc in emf)


def test_verify_trunk_host_not_on_the_version(world, handlers, event, lambda_context):
    rendered, stack = serving(world, "v1111111111111111")
    world.heartbeat(stack["standby_instance_id"], "v0000000000000000", at=time.time())
    verify_event = event("provision_task_verify.json")
    verify_event.update(render=rendered, stack=stack, entered_at=now_iso())
    with pytest.raises(TrunkNotVerified, match=f"{stack['standby_instance_id']} runs v0000000000000000"):
        handlers["verify_trunk"](verify_event, lambda_context)


def test_verify_trunk_address_not_answering(world, handlers, event, lambda_context):
    rendered, stack = serving(world, "v1111111111111111")
    world.down.add(stack["primary_instance_id"])
    verify_event = event("provision_task_verify.json")
    verify_event.update(render=rendered, stack=stack, entered_at=now_iso())
    with pytest.raises(TrunkNotVerified, match=f"{world.address} does not answer SIP OPTIONS"):
        handlers["verify_trunk"](verify_event, lambda_context)


def test_verify_trunk_times_out_after_the_state_deadline(world, handlers, event, lambda_context):
    # Given a state entered longer ago than VERIFY_TIMEOUT_S (the recorded event's EnteredTime)
    rendered, stack = serving(world, "v1111111111111111", heartbeats=False)
    verify_event = event("provision_task_verify.json")
    verify_event.update(render=rendered, stack=stack)
    with pytest.raises(VerificationTimedOut, match=r"no fresh heartbeat.*gave up after 60s"):
        handlers["verify_trunk"](verify_event, lambda_context)


# --- SyncElevenLabs (no API key yet) -------------------------------------------------------------------
# The stack creates its API-key secret as "unset"; the operator stores a key later.
NO_API_KEY_YET = (
    "no API key yet: skipped; add it with `aws secretsmanager put-secret-value --secret-id "
    f"{STACK}/elevenlabs/api-key --secret-string <ElevenLabs API key>`, then provision again"
)


def test_sync_elevenlabs_skipped_until_an_api_key_is_stored(world, handlers, event, lambda_context):
    # Given the API-key secret as the stack creates it ("unset"); the stand-in URL refuses connections
    sync_event = event("provision_task_sync.json")
    sync_event["render"]["public_address"] = world.address
    # When SyncElevenLabs runs
    result = handlers["sync_elevenlabs"](sync_event, lambda_context)
    # Then nothing is sent to ElevenLabs and the result says how to add the key
    assert result == {
        "action": "skipped",
        "phone_number_id": None,
        "changed_fields": [],
        "credentials_hash": None,
        "note": NO_API_KEY_YET,
    }
    same_shape(event("provision_task_record_succeeded.json")["state"]["sync"], result)


def test_sync_elevenlabs_without_an_api_key_reference(world, handlers, event, lambda_context):
    # Given a hand-written settings document without elevenlabs.api_key
    document = settings_document(api_key=False)
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=f"/sip-trunk/{STACK}/settings", Type="String", Value=json.dumps(document), Overwrite=True
    )
    _reset_caches()
    sync_event = event("provision_task_sync.json")
    sync_event["render"]["public_address"] = world.address
    result = handlers["sync_elevenlabs"](sync_event, lambda_context)
    assert (result["action"], result["note"]) == ("skipped", "no API key configured")


def test_record_deployment_tells_how_to_add_the_api_key(world, handlers, event, lambda_context):
    # Given a successful execution whose sync was skipped for want of a key
    record_event = event("provision_task_record_succeeded.json")
    record_event["state"]["sync"]["note"] = NO_API_KEY_YET
    # When RecordDeployment composes the report
    result = handlers["record_deployment"](record_event, lambda_context)
    # Then the e-mail carries the command
    assert f"ElevenLabs number: skipped: {NO_API_KEY_YET}" in result["message"].splitlines()


# --- RecordDeployment ----------------------------------------------------------------------------------
def test_record_deployment_success(world, handlers, event, lambda_context, capsys):
    # Given the whole state of a successful execution
    record_event = event("provision_task_record_succeeded.json")
    state = record_event["state"]
    # When RecordDeployment runs
    result = handlers["record_deployment"](record_event, lambda_context)
    # Then deployment/current and a history item are written, and the notification is composed
    version = state["render"]["version"]
    assert result["outcome"] == "succeeded"
    assert result["version"] == version
    assert result["subject"] == f"[sip-trunk] {STACK}: provision succeeded ({version})"
    assert f"Provision {record_event['execution']['name']} succeeded: version {version} deployed." in result["message"]
    current = world.item("deployment", "current")
    assert current["desired_version"] == current["active_version"] == version
    assert current["primary_instance_id"] == state["stack"]["primary_instance_id"]
    assert current["standby_instance_id"] == state["stack"]["standby_instance_id"]
    assert current["allocation_id"] == world.allocation_id
    assert current["host_stack_name"] == HOST_STACK
    assert (current["last_execution"], current["last_outcome"]) == (record_event["execution"]["name"], "succeeded")
    history = [i for i in world.ddb.scan()["Items"] if str(i["sk"]).startswith("history#")]
    assert len(history) == 1
    assert history[0]["sk"].endswith(f"#{record_event['execution']['name']}")
    assert (history[0]["outcome"], history[0]["version"]) == ("succeeded", version)
    assert '"ProvisionSucceeded"' in capsys.readouterr().out


def test_record_deployment_failure_restores_the_previous_version(world, handlers, event, lambda_context):
    # Given an execution that failed at CheckApply after pointing desired-version at the new version
    record_event = on_hosts(world, event("provision_task_record_failed.json"))
    state = record_event["state"]
    new, previous = state["render"]["version"], state["render"]["previous_version"]
    ssm().put_parameter(Name=f"{CONFIG_PREFIX}/desired-version", Type="String", Value=new)
    # When RecordFailure runs
    result = handlers["record_deployment"](record_event, lambda_context)
    # Then the pointer is back on the previous version and the hosts are told to re-apply it
    assert world.desired_version() == previous
    sent = commands()
    assert len(sent) == 1
    assert sorted(sent[0]["InstanceIds"]) == sorted(state["apply"]["instance_ids"])
    assert sent[0]["Parameters"]["commands"] == [f"sip-trunk-agent apply --version {previous}"]
    assert result["outcome"] == "failed"
    assert (result["failed_step"], result["error"]) == ("CheckApply", "ApplyFailed")
    assert result["actions"][0] == f"desired version restored to {previous}"
    assert sent[0]["CommandId"] in result["actions"][1]
    assert result["subject"] == f"[sip-trunk] {STACK}: provision failed at CheckApply"
    assert "asterisk refused the new pjsip.conf" in result["message"]
    history = [i for i in world.ddb.scan()["Items"] if str(i["sk"]).startswith("history#")]
    assert [(h["outcome"], h["failed_step"], h["error"]) for h in history] == [("failed", "CheckApply", "ApplyFailed")]


def test_record_deployment_failure_of_a_first_deployment_clears_the_pointer(world, handlers, event, lambda_context):
    record_event = event("provision_task_record_failed.json")
    record_event["state"]["render"]["previous_version"] = None
    record_event["state"]["failure"] = {
        "VerifyTrunk": {"Error": "VerificationTimedOut", "Cause": '{"errorMessage": "version not verified"}'}
    }
    ssm().put_parameter(Name=f"{CONFIG_PREFIX}/desired-version", Type="String", Value="v3f9a1c0d2b4e6f81")
    result = handlers["record_deployment"](record_event, lambda_context)
    assert world.desired_version() is None
    assert commands() == []
    assert result["actions"] == ["desired version cleared (there was no previous version)"]
    assert result["subject"].endswith("provision failed at VerifyTrunk")


# --- the whole chain, handler by handler: logs, correlation id, fixture shapes ------------------------------
@pytest.fixture
def standin() -> Iterator[ElevenLabsStandIn]:
    with ElevenLabsStandIn(API_KEY) as api:
        yield api


@pytest.fixture
def world_api(monkeypatch, standin):
    """The account with an ElevenLabs API key configured, the client pointed at the stand-in, and the
    client's back-off recorded instead of slept."""
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")
    slept: list[float] = []
    clock.set_sleeper(slept.append)
    try:
        with mock_aws(), build_world(monkeypatch, api_key=True, api_url=standin.url) as world:
            world.slept = slept  # type: ignore[attr-defined]
            yield world
    finally:
        clock.set_sleeper(None)


@pytest.fixture
def api_handlers(world_api, monkeypatch):
    from sip_trunk.observability import metrics

    monkeypatch.setattr(metrics, "namespace", "AwsSipTrunkTest")
    from support.moto_sfn import load_handlers

    return load_handlers()


def test_provision_steps_in_order_log_no_secret_and_carry_the_execution_name(
    world_api, api_handlers, logs, event, lambda_context, standin
):
    # Given an account with an API key; each step gets exactly the ASL's Parameters built from the state
    world, h = world_api, api_handlers
    name = "console-2026-01-01"
    state: dict[str, Any] = {"request": {"reason": "first deployment"}}
    state["execution"] = event("provision_task_validate.json")["execution"]

    def step(function: str, result_path: str, params: dict[str, Any], recorded: str) -> dict[str, Any]:
        assert set(event(recorded)) == set(params), recorded
        same_shape(
            {k: v for k, v in event(recorded).items() if k != "request"},
            {k: v for k, v in params.items() if k != "request"},
        )
        state[result_path] = h[function](params, lambda_context.fresh())
        return state[result_path]

    ex = state["execution"]
    step("validate_settings", "validate", {"execution": ex}, "provision_task_validate.json")
    step("render_config", "render", {"execution": ex}, "provision_task_render.json")
    launch = {"execution": ex, "request": state["request"], "render": state["render"]}
    step("launch_host", "launch", launch, "provision_task_launch.json")
    stack = step(
        "check_host_stack", "stack", {"execution": ex, "launch": state["launch"]}, "provision_task_check_stack.json"
    )
    apply = step(
        "apply_config",
        "apply",
        {"execution": ex, "render": state["render"], "stack": stack},
        "provision_task_apply.json",
    )
    for instance_id in apply["instance_ids"]:  # what the agent's `report` writes after applying
        world.heartbeat(instance_id, apply["version"], at=time.time())
    step("check_apply", "apply_status", {"execution": ex, "apply": apply}, "provision_task_check_apply.json")
    verify = step(
        "verify_trunk",
        "verify",
        {"execution": ex, "render": state["render"], "stack": stack, "entered_at": now_iso()},
        "provision_task_verify.json",
    )
    sync = step(
        "sync_elevenlabs",
        "sync",
        {"execution": ex, "render": state["render"], "request": state["request"]},
        "provision_task_sync.json",
    )
    record = h["record_deployment"]({"execution": ex, "outcome": "succeeded", "state": state}, lambda_context.fresh())
    # Then the deployment is recorded with the created ElevenLabs number
    assert verify["elevenlabs"]["checked"] is True
    assert sync["action"] == "created"
    assert record["outcome"] == "succeeded"
    assert world.item("deployment", "current")["phone_number_id"] == sync["phone_number_id"]
    same_shape(event("provision_task_record_succeeded.json")["state"], state)
    # And no secret value appears anywhere in the logs (events are logged too: POWERTOOLS_LOGGER_LOG_EVENT)
    text = logs.read()
    assert "first deployment" in text  # the logged events are really in the capture
    assert_no_secrets(text)
    assert_no_secrets(json.dumps(state))
    # And every Powertools line of every handler carries the execution name as correlation id
    lines = logs.lines()
    functions = {line.get("function_name") for line in lines}
    assert len(lines) >= 9
    assert {line.get("correlation_id") for line in lines} == {name}
    assert functions == {"test-function"}
    messages = {line["message"] if isinstance(line["message"], str) else "event" for line in lines}
    assert {"settings valid", "config rendered", "host stack launch", "trunk verified"} <= messages


# --- SyncElevenLabs against the stand-in -----------------------------------------------------------------
def _sync_event(event: Any, world: Any, **request: Any) -> dict[str, Any]:
    sync_event = event("provision_task_sync.json")
    sync_event["render"]["public_address"] = world.address
    sync_event["request"] = request
    return sync_event


def mutations(api: ElevenLabsStandIn) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in api.requests if r.method in {"POST", "PATCH", "DELETE"}]


def test_sync_creates_the_number_once_per_execution(world_api, api_handlers, logs, event, lambda_context, standin):
    # When SyncElevenLabs runs for a number not imported yet
    sync_event = _sync_event(event, world_api)
    result = api_handlers["sync_elevenlabs"](sync_event, lambda_context)
    # Then the number is created pointing at the Elastic IP with our credentials
    assert result["action"] == "created"
    assert re.fullmatch(r"[0-9a-f]{64}", result["credentials_hash"])
    assert mutations(standin) == [("POST", "/v1/convai/phone-numbers")]
    assert standin.stored_password(result["phone_number_id"]) == INBOUND_PASSWORD
    assert standin.stored_password(result["phone_number_id"], "inbound") == OUTBOUND_PASSWORD
    requests = len(standin.requests)
    # When Step Functions invokes it again with the same input
    again = api_handlers["sync_elevenlabs"](sync_event, lambda_context.fresh())
    # Then the stored result comes back without a single request to ElevenLabs
    assert again == result
    assert len(standin.requests) == requests
    # And a new execution reads, finds it unchanged and writes nothing
    sync_event["execution"]["name"] = "console-2026-01-02"
    later = api_handlers["sync_elevenlabs"](sync_event, lambda_context.fresh())
    assert (later["action"], later["phone_number_id"]) == ("unchanged", result["phone_number_id"])
    assert mutations(standin) == [("POST", "/v1/convai/phone-numbers")]
    logs.assert_no(*SECRETS)


def test_sync_rotate_credentials_patches_the_passwords(world_api, api_handlers, logs, event, lambda_context, standin):
    first = api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    rotated = _sync_event(event, world_api, reason="rotated the SIP passwords", rotate_credentials=True)
    result = api_handlers["sync_elevenlabs"](rotated, lambda_context.fresh())
    assert result["action"] == "updated"
    assert set(result["changed_fields"]) == {"outbound_trunk.password", "inbound_trunk.password"}
    assert mutations(standin)[-1] == ("PATCH", f"/v1/convai/phone-numbers/{first['phone_number_id']}")
    logs.assert_no(*SECRETS)


def test_sync_rejected_api_key_is_fatal_and_does_not_show_it(
    world_api, api_handlers, logs, event, lambda_context, standin
):
    # Given a wrong key stored in Secrets Manager
    wrong = "sk_wrong_key_4242424242"
    world_api.put_api_key(wrong)
    # Then ElevenLabsAuthError (not retried by the ASL), a clear message, and neither key anywhere
    with pytest.raises(ElevenLabsAuthError) as raised:
        api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    message = str(raised.value)
    assert message == "GET /v1/convai/phone-numbers: HTTP 401: Invalid API key"
    for text in (message, repr(raised.value)):
        assert wrong not in text
        assert_no_secrets(text)
    logs.assert_no(wrong, *SECRETS)
    assert mutations(standin) == []
    assert world_api.slept == []
    assert idempotency_records(world_api) == []  # a failure is not cached: the next run tries again


def test_sync_configured_phone_number_id_not_found(world_api, api_handlers, logs, event, lambda_context, standin):
    # Given settings naming an ElevenLabs phone-number id that does not exist there
    world_api.put_settings(phone_number_id="phnum_0000000000000000deadbeef")
    # Then SyncElevenLabs fails with ElevenLabsNotFound naming the id, and creates nothing
    with pytest.raises(ElevenLabsNotFound, match="phnum_0000000000000000deadbeef"):
        api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    assert mutations(standin) == []


def test_sync_over_tls_points_the_number_at_the_host_name(
    world_api, api_handlers, logs, event, lambda_context, standin
):
    # Given settings with ElevenLabs over TLS to the gateway's host name
    world_api.put_settings(transport="tls", network={"public_hostname": "sip.gateway.example"}, tls={"enabled": True})
    # When SyncElevenLabs runs
    result = api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    # Then ElevenLabs holds the host name (not the Elastic IP), transport tls, and the name as a remote domain
    assert result["action"] == "created"
    number = _get_number(standin, result["phone_number_id"])
    assert (number["outbound_trunk"]["address"], number["outbound_trunk"]["transport"]) == (
        "sip.gateway.example",
        "tls",
    )
    assert number["inbound_trunk"]["remote_domains"] == ["sip.gateway.example"]
    # And a later execution finds it unchanged
    later = _sync_event(event, world_api)
    later["execution"]["name"] = "console-2026-01-02"
    assert api_handlers["sync_elevenlabs"](later, lambda_context.fresh())["action"] == "unchanged"
    logs.assert_no(*SECRETS)


def _get_number(standin: ElevenLabsStandIn, phone_number_id: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 -- the stand-in on 127.0.0.1
        f"{standin.url}/v1/convai/phone-numbers/{phone_number_id}", headers={"xi-api-key": API_KEY}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
        return dict(json.loads(answer.read()))


def test_sync_number_deleted_at_elevenlabs_is_recreated_by_number(
    world_api, api_handlers, logs, event, lambda_context, standin
):
    # Given a synced number that someone deletes at ElevenLabs (its id now answers 404)
    first = api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    request = urllib.request.Request(  # noqa: S310 -- the stand-in on 127.0.0.1
        f"{standin.url}/v1/convai/phone-numbers/{first['phone_number_id']}",
        method="DELETE",
        headers={"xi-api-key": API_KEY},
    )
    urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
    # When a later execution syncs
    later = _sync_event(event, world_api)
    later["execution"]["name"] = "console-2026-01-02"
    result = api_handlers["sync_elevenlabs"](later, lambda_context.fresh())
    # Then the number is created again with a new id
    assert result["action"] == "created"
    assert result["phone_number_id"] != first["phone_number_id"]
    logs.assert_no(*SECRETS)


def test_sync_validation_error_is_fatal_without_echoing_passwords(
    world_api, api_handlers, logs, event, lambda_context, standin, monkeypatch
):
    # Given ElevenLabs refusing the trunk with a 422 that echoes the request body (passwords included)
    from sip_trunk_local import elevenlabs_api

    def refuse(self: Any, body: Any) -> tuple[int, Any]:
        raise elevenlabs_api._Invalid(
            [
                {
                    "type": "value_error",
                    "loc": ["body", "outbound_trunk_config", "address"],
                    "msg": "Value error, address must be a public host name or IP address",
                    "input": body,
                }
            ]
        )

    monkeypatch.setattr(elevenlabs_api._Handler, "_create", refuse)
    # Then ElevenLabsValidationError (fatal in the ASL) names the field and shows no secret
    with pytest.raises(ElevenLabsValidationError) as raised:
        api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    message = str(raised.value)
    assert "HTTP 422" in message
    assert "outbound_trunk_config.address" in message
    assert "must be a public host name" in message
    for text in (message, repr(raised.value), getattr(raised.value, "detail", "")):
        assert_no_secrets(text)
    logs.assert_no(*SECRETS)
    assert [r.status for r in standin.requests if r.method == "POST"] == [422]  # not retried


def test_sync_rate_limited_then_succeeds(world_api, api_handlers, logs, event, lambda_context, standin):
    # Given ElevenLabs answering 429 with Retry-After to the next two requests
    standin.rate_limit_next(2, retry_after=1.5)
    # When SyncElevenLabs runs
    result = api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    # Then the client honours Retry-After (recorded, not slept) and the number is created
    assert result["action"] == "created"
    assert world_api.slept == [1.5, 1.5]
    assert [r.status for r in standin.requests][:3] == [429, 429, 200]
    assert "HTTP 429; retry 1/2" in logs.read()
    logs.assert_no(*SECRETS)


def test_sync_rate_limited_until_the_client_gives_up(world_api, api_handlers, logs, event, lambda_context, standin):
    # Given ElevenLabs rate-limiting every request
    standin.rate_limit_next(100, retry_after=0.5)
    # Then ElevenLabsRateLimited (the ASL retries it) after the client's 3 attempts
    with pytest.raises(ElevenLabsRateLimited, match="HTTP 429 after 3 attempts"):
        api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    assert len(standin.requests) == 3
    logs.assert_no(*SECRETS)


# --- the recorded events match the ASL ---------------------------------------------------------------------
ASL_TASKS = {
    "ValidateSettings": "provision_task_validate.json",
    "RenderConfig": "provision_task_render.json",
    "LaunchHost": "provision_task_launch.json",
    "CheckHostStack": "provision_task_check_stack.json",
    "ApplyConfig": "provision_task_apply.json",
    "CheckApply": "provision_task_check_apply.json",
    "VerifyTrunk": "provision_task_verify.json",
    "SyncElevenLabs": "provision_task_sync.json",
    "RecordDeployment": "provision_task_record_succeeded.json",
    "RecordFailure": "provision_task_record_failed.json",
}


@pytest.mark.parametrize(("state", "recorded"), ASL_TASKS.items())
def test_recorded_task_input_matches_the_asl_parameters(state, recorded, event):
    import yaml
    from support.moto_sfn import STATEMACHINES

    states = yaml.safe_load((STATEMACHINES / "provision.asl.yaml").read_text())["States"]
    parameters = states[state]["Parameters"]
    ev = event(recorded)
    assert set(ev) == {key.removesuffix(".$") for key in parameters}
    for key, value in parameters.items():
        if not key.endswith(".$"):
            assert ev[key] == value
    if "state" in ev:  # `state.$: $`: the execution's data, one key per earlier ResultPath
        writers = [*states.values(), *(c for s in states.values() for c in s.get("Catch", []))]
        result_paths = {w["ResultPath"].removeprefix("$.").split(".")[0] for w in writers if w.get("ResultPath")}
        assert set(ev["state"]) <= result_paths | {"request", "execution"}


@pytest.mark.parametrize("recorded", ["provision_task_record_succeeded.json", "provision_task_record_failed.json"])
def test_notification_subject_fits_sns_with_the_longest_stack_name(
    world, handlers, event, lambda_context, monkeypatch, recorded
):
    from sip_trunk.aws import wiring
    from sip_trunk.limits import SNS_SUBJECT

    # Given the longest stack name the template allows (its state machines are `<stack>-provision`, 80 at most)
    stack = "a" + "b" * 69
    monkeypatch.setenv("STACK_NAME", stack)
    monkeypatch.setenv("CONFIG_PREFIX", f"/sip-trunk/{stack}/asterisk")
    wiring.reset()
    # When RecordDeployment composes the notification that the state machine publishes to SNS
    result = handlers["record_deployment"](on_hosts(world, event(recorded), stack), lambda_context)
    # Then its subject is one SNS accepts (moto's SNS refuses more than 100 characters too)
    assert len(result["subject"]) <= SNS_SUBJECT.value
    assert result["subject"].isascii()
    assert result["subject"].isprintable()
    assert result["subject"].startswith("[sip-trunk] abbb")


def test_a_failed_commands_answer_is_shown_even_when_it_logged():
    # Given an agent that logged to stderr and answered on stdout (as sip-trunk-agent does)
    from sip_trunk.aws.runcommand import command_output

    invocation = {
        "StandardOutputContent": 'progress\n{"ok": false, "error": "no backups bucket"}\n',
        "StandardErrorContent": "INFO sip_trunk.agent: starting\nWARNING sip_trunk.agent: retrying\n",
    }
    # When the poller summarises it
    output = command_output(invocation)
    # Then both the answer and the end of the log are there
    assert '"error": "no backups bucket"' in output
    assert "retrying" in output
    assert command_output({"StandardOutputContent": "x" * 900}) == "x" * 500


def test_sync_restricting_inbound_to_the_gateway_keeps_the_operators_fields(
    world_api, api_handlers, logs, event, lambda_context, standin
):
    # Given a synced number an operator then edited in the dashboard
    first = api_handlers["sync_elevenlabs"](_sync_event(event, world_api), lambda_context)
    number_id = first["phone_number_id"]
    standin.edit(
        number_id,
        inbound={"allowed_addresses": ["198.51.100.0/24"], "allowed_numbers": ["+14155550199"]},
        outbound={"headers": {"X-Team": "support"}, "enabled_codecs": ["PCMU/8000"]},
    )
    # When a later execution runs with the inbound restriction off, Then the operator's allowlist is no drift
    later = _sync_event(event, world_api)
    later["execution"]["name"] = "console-2026-01-02"
    assert api_handlers["sync_elevenlabs"](later, lambda_context.fresh())["action"] == "unchanged"
    # When the restriction is turned on
    world_api.put_settings(restrict_inbound_to_gateway=True)
    later["execution"]["name"] = "console-2026-01-03"
    result = api_handlers["sync_elevenlabs"](later, lambda_context.fresh())
    # Then only the allowlist changed, to the Elastic IP alone, and every other operator field is as it was
    assert (result["action"], result["changed_fields"]) == ("updated", ["inbound_trunk.allowed_addresses"])
    number = _get_number(standin, number_id)
    assert number["inbound_trunk"]["allowed_addresses"] == [f"{world_api.address}/32"]
    assert number["inbound_trunk"]["allowed_numbers"] == ["+14155550199"]
    assert (number["outbound_trunk"]["headers"], number["outbound_trunk"]["enabled_codecs"]) == (
        {"X-Team": "support"},
        ["PCMU/8000"],
    )
    logs.assert_no(*SECRETS)
