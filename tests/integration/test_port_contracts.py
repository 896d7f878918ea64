"""The adapters (`sip_trunk.aws`) and the fakes of the unit tests (`support.fakes`) keep one error contract:
an instance EC2 does not know is absent, throttling raises the retryable `AwsThrottled`, a refused target
raises the typed error, and every other AWS error (a denied call) passes as botocore's `ClientError`.

The adapters run over moto for what moto models (unknown instance ids) and over botocore's `Stubber` for
the answers moto never gives (throttling, access denied, an unregistered host)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws
from sip_trunk.aws.cloudformation import CfnStacks
from sip_trunk.aws.ec2 import Ec2Addresses
from sip_trunk.aws.runcommand import SsmCommands
from sip_trunk.errors import AddressRefused, AwsThrottled, HostUnreachable, StackRejected
from sip_trunk.workflows.ports import Addresses, Commands, Stacks
from support.fakes import DENIED, FakeCommands, FakeEc2, FakeStacks

pytestmark = pytest.mark.integration

REGION = "us-east-1"


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def stubbed() -> Iterator[Callable[[str], tuple[Any, Stubber]]]:
    """`stubbed("ec2")`: a real client whose answers the test queues (no request leaves the process)."""
    stubbers: list[Stubber] = []

    def make(service: str) -> tuple[Any, Stubber]:
        client = boto3.client(service, region_name=REGION)  # type: ignore[call-overload]
        stubber = Stubber(client)
        stubber.activate()
        stubbers.append(stubber)
        return client, stubber

    yield make
    for stubber in stubbers:
        stubber.deactivate()


# --- EC2: instances ------------------------------------------------------------------------------


def test_adapter_leaves_out_instances_ec2_does_not_know() -> None:
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        image = ec2.describe_images()["Images"][0]["ImageId"]
        known = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        gone = "i-0123456789abcdef0"
        adapter = Ec2Addresses(ec2)
        assert adapter.instances([gone]) == []
        assert [i.instance_id for i in adapter.instances([known, gone])] == [known]


def test_fake_leaves_out_instances_ec2_does_not_know() -> None:
    fake = FakeEc2()
    known = next(iter(fake.known))
    assert fake.instances(["i-0123456789abcdef0"]) == []
    assert [i.instance_id for i in fake.instances([known, "i-0123456789abcdef0"])] == [known]


def _stubbed_ec2(stubbed: Callable[[str], tuple[Any, Stubber]], code: str) -> Addresses:
    client, stubber = stubbed("ec2")
    stubber.add_client_error("describe_instances", service_error_code=code)
    return Ec2Addresses(client)


def _faulty_ec2(code: str) -> Addresses:
    fake = FakeEc2()
    fake.faults.fail("instances", code)
    return fake


@pytest.mark.parametrize("kind", ["adapter", "fake"])
def test_throttled_describe_raises_the_retryable_error(
    kind: str, stubbed: Callable[[str], tuple[Any, Stubber]]
) -> None:
    addresses = (
        _stubbed_ec2(stubbed, "RequestLimitExceeded") if kind == "adapter" else _faulty_ec2("RequestLimitExceeded")
    )
    with pytest.raises(AwsThrottled):
        addresses.instances(["i-0123456789abcdef0"])


@pytest.mark.parametrize("kind", ["adapter", "fake"])
def test_denied_describe_passes_as_client_error(kind: str, stubbed: Callable[[str], tuple[Any, Stubber]]) -> None:
    addresses = _stubbed_ec2(stubbed, DENIED) if kind == "adapter" else _faulty_ec2(DENIED)
    with pytest.raises(ClientError) as raised:
        addresses.instances(["i-0123456789abcdef0"])
    assert raised.value.response["Error"]["Code"] == DENIED


# --- EC2: associate ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adapter", "fake"])
def test_associating_with_an_unknown_instance_is_refused(
    kind: str, stubbed: Callable[[str], tuple[Any, Stubber]]
) -> None:
    addresses: Addresses
    if kind == "adapter":
        client, stubber = stubbed("ec2")
        stubber.add_client_error("associate_address", service_error_code="InvalidInstanceID.NotFound")
        addresses = Ec2Addresses(client)
    else:
        addresses = FakeEc2()
    with pytest.raises(AddressRefused):
        addresses.associate("eipalloc-0123456789abcdef0", "i-0123456789abcdef0")


# --- Run Command ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adapter", "fake"])
def test_sending_to_an_unregistered_host_is_host_unreachable(
    kind: str, stubbed: Callable[[str], tuple[Any, Stubber]]
) -> None:
    commands: Commands
    if kind == "adapter":
        client, stubber = stubbed("ssm")
        stubber.add_client_error("send_command", service_error_code="InvalidInstanceId")
        commands = SsmCommands(client)
    else:
        commands = FakeCommands(unreachable={"i-0123456789abcdef0"})
    with pytest.raises(HostUnreachable):
        commands.send(["i-0123456789abcdef0"], ["true"], "test")


@pytest.mark.parametrize("kind", ["adapter", "fake"])
def test_throttled_send_raises_the_retryable_error(kind: str, stubbed: Callable[[str], tuple[Any, Stubber]]) -> None:
    commands: Commands
    if kind == "adapter":
        client, stubber = stubbed("ssm")
        stubber.add_client_error("send_command", service_error_code="ThrottlingException")
        commands = SsmCommands(client)
    else:
        commands = FakeCommands()
        commands.faults.fail("send", "ThrottlingException")
    with pytest.raises(AwsThrottled):
        commands.send(["i-0123456789abcdef0"], ["true"], "test")


# --- CloudFormation ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adapter", "fake"])
def test_a_refused_create_is_stack_rejected(kind: str, stubbed: Callable[[str], tuple[Any, Stubber]]) -> None:
    stacks: Stacks
    if kind == "adapter":
        client, stubber = stubbed("cloudformation")
        stubber.add_client_error("create_stack", service_error_code="ValidationError", service_message="bad template")
        stacks = CfnStacks(client)
    else:
        stacks = FakeStacks(rejects="bad template")
    with pytest.raises(StackRejected, match="bad template"):
        stacks.create("host", "https://b.s3.us-east-1.amazonaws.com/host.yaml", {})


def test_adapter_reports_nothing_to_update_as_unchanged(stubbed: Callable[[str], tuple[Any, Stubber]]) -> None:
    client, stubber = stubbed("cloudformation")
    stubber.add_client_error(
        "update_stack", service_error_code="ValidationError", service_message="No updates are to be performed."
    )
    assert CfnStacks(client).update("host", "https://b.s3.us-east-1.amazonaws.com/host.yaml", {}) is False
