"""The adapters (`sip_trunk.aws`) and the fakes of the unit tests (`support.fakes`) keep one error contract:
an instance EC2 does not know is absent, throttling raises the retryable `AwsThrottled`, a refused target
raises the typed error, and every other AWS error (a denied call) passes as botocore's `ClientError`.

The adapters run over moto for what moto models (unknown instance ids) and over botocore's `Stubber` for
the answers moto never gives (throttling, access denied, an unregistered host)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws
from sip_trunk.aws.cloudformation import CfnStacks
from sip_trunk.aws.ec2 import Ec2Addresses
from sip_trunk.aws.runcommand import SsmCommands
from sip_trunk.aws.ssm import JsonParameterReader, ParameterSecretResolver, SsmSettingsSource
from sip_trunk.errors import AddressRefused, AwsThrottled, HostUnreachable, StackRejected
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
        image = ec2.register_image(Name="host", RootDeviceName="/dev/sda1")["ImageId"]
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


# --- one AWS answer, adapter and fake alike ------------------------------------------------------

INSTANCE = "i-0123456789abcdef0"
ADAPTERS: dict[str, Callable[[Any], Any]] = {"ec2": Ec2Addresses, "ssm": SsmCommands, "cloudformation": CfnStacks}


def _faulty(port: Any, method: str, code: str) -> Any:
    port.faults.fail(method, code)
    return port


@dataclass(frozen=True)
class Contract:
    """One AWS answer, as the adapter gets it from botocore and as the fake gives it, and what both raise."""

    service: str
    operation: str
    code: str
    fake: Callable[[], Any]
    call: Callable[[Any], object]
    raises: type[Exception]
    message: str = ""

    def adapter(self, stubbed: Callable[[str], tuple[Any, Stubber]]) -> Any:
        client, stubber = stubbed(self.service)
        stubber.add_client_error(self.operation, service_error_code=self.code, service_message=self.message)
        return ADAPTERS[self.service](client)


CONTRACTS = {
    "throttled describe raises the retryable error": Contract(
        "ec2", "describe_instances", "RequestLimitExceeded",
        fake=lambda: _faulty(FakeEc2(), "instances", "RequestLimitExceeded"),
        call=lambda addresses: addresses.instances([INSTANCE]), raises=AwsThrottled,
    ),
    "denied describe passes as ClientError": Contract(
        "ec2", "describe_instances", DENIED,
        fake=lambda: _faulty(FakeEc2(), "instances", DENIED),
        call=lambda addresses: addresses.instances([INSTANCE]), raises=ClientError,
    ),
    "associating with an unknown instance is refused": Contract(
        "ec2", "associate_address", "InvalidInstanceID.NotFound",
        fake=FakeEc2,
        call=lambda addresses: addresses.associate("eipalloc-0123456789abcdef0", INSTANCE), raises=AddressRefused,
    ),
    "sending to an unregistered host is host unreachable": Contract(
        "ssm", "send_command", "InvalidInstanceId",
        fake=lambda: FakeCommands(unreachable={INSTANCE}),
        call=lambda commands: commands.send([INSTANCE], ["true"], "test"), raises=HostUnreachable,
    ),
    "throttled send raises the retryable error": Contract(
        "ssm", "send_command", "ThrottlingException",
        fake=lambda: _faulty(FakeCommands(), "send", "ThrottlingException"),
        call=lambda commands: commands.send([INSTANCE], ["true"], "test"), raises=AwsThrottled,
    ),
    "a refused create is stack rejected": Contract(
        "cloudformation", "create_stack", "ValidationError", message="bad template",
        fake=lambda: FakeStacks(rejects="bad template"),
        call=lambda stacks: stacks.create("host", "https://b.s3.us-east-1.amazonaws.com/host.yaml", {}),
        raises=StackRejected,
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", ["adapter", "fake"])
@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_adapter_and_fake_raise_alike(name: str, kind: str, stubbed: Callable[[str], tuple[Any, Stubber]]) -> None:
    contract = CONTRACTS[name]
    port = contract.adapter(stubbed) if kind == "adapter" else contract.fake()
    with pytest.raises(contract.raises) as raised:
        contract.call(port)
    if isinstance(raised.value, ClientError):
        assert raised.value.response["Error"]["Code"] == contract.code
    if contract.message:
        assert contract.message in str(raised.value)


# --- Parameter Store and Secrets Manager reads through Powertools' Parameters utility ---------------------
# The utility wraps every botocore error in its own GetParameterError; the adapters keep the contract above.


@dataclass(frozen=True)
class ReadContract:
    service: str
    operation: str
    code: str
    call: Callable[[Any], object]
    raises: type[Exception]


READS = {
    "throttled settings read raises the retryable error": ReadContract(
        "ssm", "get_parameter", "ThrottlingException",
        call=lambda ssm: SsmSettingsSource("/sip-trunk/s/settings", ssm=ssm).settings_document(), raises=AwsThrottled,
    ),
    "denied settings read passes as ClientError": ReadContract(
        "ssm", "get_parameter", "AccessDeniedException",
        call=lambda ssm: SsmSettingsSource("/sip-trunk/s/settings", ssm=ssm).settings_document(), raises=ClientError,
    ),
    "throttled operator settings read raises the retryable error": ReadContract(
        "ssm", "get_parameter", "ThrottlingException",
        call=lambda ssm: SsmSettingsSource("/x", "/sip-trunk/s/operator-settings", ssm=ssm).operator_document(),
        raises=AwsThrottled,
    ),
    "throttled JSON parameter read raises the retryable error": ReadContract(
        "ssm", "get_parameter", "ThrottlingException",
        call=lambda ssm: JsonParameterReader(ssm=ssm).get_json("/sip-trunk/s/host-parameters"), raises=AwsThrottled,
    ),
    "throttled image parameter read raises the retryable error": ReadContract(
        "ssm", "get_parameter", "ThrottlingException",
        call=lambda ssm: JsonParameterReader(ssm=ssm).get_text("/sip-trunk/s/ami/arm64"), raises=AwsThrottled,
    ),
    "throttled SecureString read raises the retryable error, not a missing secret": ReadContract(
        "ssm", "get_parameter", "ThrottlingException",
        call=lambda ssm: ParameterSecretResolver(ssm=ssm).resolve("ssm:/s/sip/outbound-password"), raises=AwsThrottled,
    ),
    "denied SecureString read passes as ClientError, not a missing secret": ReadContract(
        "ssm", "get_parameter", "AccessDeniedException",
        call=lambda ssm: ParameterSecretResolver(ssm=ssm).resolve("ssm:/s/sip/outbound-password"), raises=ClientError,
    ),
    "a SecureString that does not exist is a missing secret": ReadContract(
        "ssm", "get_parameter", "ParameterNotFound",
        call=lambda ssm: ParameterSecretResolver(ssm=ssm).resolve("ssm:/s/sip/outbound-password"), raises=KeyError,
    ),
    "throttled secret read raises the retryable error, not a missing secret": ReadContract(
        "secretsmanager", "get_secret_value", "ThrottlingException",
        call=lambda sm: ParameterSecretResolver(secrets=sm).resolve("secretsmanager:s/elevenlabs/api-key"),
        raises=AwsThrottled,
    ),
    "a secret that does not exist is a missing secret": ReadContract(
        "secretsmanager", "get_secret_value", "ResourceNotFoundException",
        call=lambda sm: ParameterSecretResolver(secrets=sm).resolve("secretsmanager:s/elevenlabs/api-key"),
        raises=KeyError,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(READS))
def test_parameter_reads_keep_the_error_contract(name: str, stubbed: Callable[[str], tuple[Any, Stubber]]) -> None:
    contract = READS[name]
    client, stubber = stubbed(contract.service)
    stubber.add_client_error(contract.operation, service_error_code=contract.code)
    with pytest.raises(contract.raises) as raised:
        contract.call(client)
    if isinstance(raised.value, ClientError):
        assert raised.value.response["Error"]["Code"] == contract.code


# --- CloudFormation ------------------------------------------------------------------------------


def test_adapter_reports_nothing_to_update_as_unchanged(stubbed: Callable[[str], tuple[Any, Stubber]]) -> None:
    client, stubber = stubbed("cloudformation")
    stubber.add_client_error(
        "update_stack", service_error_code="ValidationError", service_message="No updates are to be performed."
    )
    assert CfnStacks(client).update("host", "https://b.s3.us-east-1.amazonaws.com/host.yaml", {}) is False
