"""moto alone accepts what AWS refuses: why the limits of `sip_trunk.limits` are checked by the code.

Each case sends moto, directly, a value over one documented limit and shows it is stored or accepted (so
a test world of moto alone would never catch the defect), then shows the adapter refusing the same value.
Where moto refuses too (the reserved SSM prefix, Step Functions names), the case says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk import configstore, limits
from sip_trunk.aws.runcommand import SsmCommands
from sip_trunk.aws.ssm import SsmConfigStore
from sip_trunk.aws.stepfunctions import SfnExecutions
from sip_trunk.limits import AwsLimitExceeded
from sip_trunk.manifest import MANIFEST_NAME, Manifest

pytestmark = pytest.mark.integration

REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws():
        yield


def one_file_set(rel: str, data: bytes) -> tuple[dict[str, bytes], str]:
    manifest = Manifest.for_files({rel: data})
    return {rel: data, MANIFEST_NAME: manifest.to_json()}, manifest.version


def test_moto_stores_a_value_over_the_advanced_tier(aws: None) -> None:
    ssm = boto3.client("ssm")
    value = "x" * (limits.SSM_VALUE_ADVANCED.value + 1)
    ssm.put_parameter(Name="/sip-trunk/stk/big", Value=value, Type="String", Tier="Advanced")
    assert ssm.get_parameter(Name="/sip-trunk/stk/big")["Parameter"]["Value"] == value
    with pytest.raises(AwsLimitExceeded) as exc:
        SsmConfigStore("/sip-trunk/stk/asterisk", ssm).set_desired_version(value)
    assert exc.value.limit is limits.SSM_VALUE_ADVANCED


def test_moto_stores_a_value_over_the_standard_tier_as_standard(aws: None) -> None:
    ssm = boto3.client("ssm")
    value = "x" * (limits.SSM_VALUE_STANDARD.value + 1)
    ssm.put_parameter(Name="/sip-trunk/stk/std", Value=value, Type="String", Tier="Standard")
    described = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": ["/sip-trunk/stk/std"]}])
    assert described["Parameters"][0]["Tier"] == "Standard"
    with pytest.raises(AwsLimitExceeded) as exc:
        limits.check_parameter_value("/sip-trunk/stk/std", value, "Standard")
    assert exc.value.limit is limits.SSM_VALUE_STANDARD


def test_moto_stores_a_name_deeper_than_fifteen_levels(aws: None) -> None:
    ssm = boto3.client("ssm")
    prefix = "/" + "/".join(f"level{i}" for i in range(14))
    files, version = one_file_set("asterisk/rtp.conf", b"[general]\n")
    ssm.put_parameter(Name=f"{prefix}/{version}/asterisk/rtp.conf", Value="[general]\n", Type="String")
    with pytest.raises(AwsLimitExceeded) as exc:
        configstore.publish_config(ssm, prefix, files, [], version)
    assert exc.value.limit is limits.SSM_HIERARCHY_DEPTH


def test_moto_stores_a_name_longer_than_its_arn_allows(aws: None) -> None:
    ssm = boto3.client("ssm")
    name = "/sip-trunk/" + "n" * 1000
    ssm.put_parameter(Name=name, Value="x", Type="String")
    assert ssm.get_parameter(Name=name)["Parameter"]["Value"] == "x"
    with pytest.raises(AwsLimitExceeded) as exc:
        limits.check_parameter_name(name)
    assert exc.value.limit is limits.SSM_NAME_LENGTH


def test_moto_refuses_the_reserved_prefix_too(aws: None) -> None:
    ssm = boto3.client("ssm")
    with pytest.raises(ssm.exceptions.ClientError, match="reserved parameter name"):
        ssm.put_parameter(Name="/aws-sip-trunk/settings", Value="{}", Type="String")
    with pytest.raises(AwsLimitExceeded) as exc:
        limits.check_parameter_name("/aws-sip-trunk/settings")
    assert exc.value.limit is limits.SSM_RESERVED_PREFIX


def test_moto_accepts_a_run_command_comment_over_its_limit(aws: None) -> None:
    ssm = boto3.client("ssm")
    comment = "c" * (limits.RUN_COMMAND_COMMENT.value + 50)
    sent = ssm.send_command(
        InstanceIds=["i-0123456789abcdef0"],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
        Comment=comment,
    )
    assert sent["Command"]["Comment"] == comment
    command_id = SsmCommands(ssm).send(["i-0123456789abcdef0"], ["true"], comment)
    listed = ssm.list_commands(CommandId=command_id)["Commands"][0]
    assert listed["Comment"] == comment[: limits.RUN_COMMAND_COMMENT.value]


def test_moto_refuses_invalid_execution_names_too(aws: None) -> None:
    sfn = boto3.client("stepfunctions")
    arn = sfn.create_state_machine(
        name="stk-failover",
        definition='{"StartAt": "P", "States": {"P": {"Type": "Pass", "End": true}}}',
        roleArn="arn:aws:iam::123456789012:role/r",
    )["stateMachineArn"]
    with pytest.raises(sfn.exceptions.ClientError):
        sfn.start_execution(stateMachineArn=arn, name="health:1")
    with pytest.raises(AwsLimitExceeded) as exc:
        SfnExecutions(sfn).start(arn, "health:1", {})
    assert exc.value.limit is limits.SFN_EXECUTION_NAME
    assert SfnExecutions(sfn).start(arn, "health-1", {}).endswith(":health-1")


def test_moto_ssm_round_trips_a_chunked_secret_file(aws: None) -> None:
    ssm: Any = boto3.client("ssm")
    data = b"".join(b"[ext%d](endpoint-tpl)\nauth = ext%d\n" % (i, i) for i in range(600))
    files, version = one_file_set("asterisk/pjsip.conf", data)
    names = configstore.publish_config(ssm, "/sip-trunk/stk/asterisk", files, ["asterisk/pjsip.conf"], version)
    assert len(names) == len(configstore.split_value(data)) + 1
    for name in names[:-1]:
        assert ssm.get_parameter(Name=name)["Parameter"]["Type"] == "SecureString"
    assert configstore.fetch_config(ssm, "/sip-trunk/stk/asterisk", version) == files
