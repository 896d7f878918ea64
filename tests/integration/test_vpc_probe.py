"""Probes from inside the VPC (ADR-27): `sip_trunk.aws.vpcprobe.VpcProber` resolves the probed public address to the
private address of the instance holding it (moto's EC2) and hands the probe to the in-VPC probe function, whose
real handler (`functions/sip_probe/app.py`) probes a responder on loopback."""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from pydantic import ValidationError
from sip_trunk.aws.vpcprobe import VpcProber, result_from_json, result_to_json
from sip_trunk.sip import ProbeErrorKind, ProbeResult, ProbeTarget, Transport
from sip_trunk_local.harness.moto_sfn import SipResponder

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def probe_handler() -> Any:
    spec = importlib.util.spec_from_file_location("function_sip_probe", ROOT / "functions" / "sip_probe" / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.handler


class LambdaContext:
    function_name = "sip_probe"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:sip_probe"
    aws_request_id = "req-1"


class RecordingLambda:
    """The Lambda API at the boundary: records each Invoke and answers what the function would."""

    def __init__(self, answer: dict[str, Any], error: str | None = None) -> None:
        self.answer, self.error = answer, error
        self.requests: list[dict[str, Any]] = []

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append({**kwargs, "Payload": json.loads(kwargs["Payload"])})
        response: dict[str, Any] = {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(self.answer).encode())}
        if self.error:
            response["FunctionError"] = self.error
        return response


@pytest.fixture
def holder(aws: None) -> tuple[Any, str, str]:
    """An instance in a VPC with the Elastic IP associated: (ec2 client, public IP, private IP)."""
    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnet)["Instances"][0]
    allocation = ec2.allocate_address(Domain="vpc")
    ec2.associate_address(AllocationId=allocation["AllocationId"], InstanceId=instance["InstanceId"])
    return ec2, allocation["PublicIp"], instance["PrivateIpAddress"]


def test_the_elastic_ip_is_probed_on_its_holders_private_address(holder: tuple[Any, str, str]) -> None:
    ec2, public, private = holder
    lam = RecordingLambda({"reachable": True, "status_code": 200, "reason": "OK", "rtt_ms": 1.5, "error": None})
    result = VpcProber("stk-SipProbe", lambda_client=lam, ec2=ec2)(ProbeTarget(public, 5060, Transport.TCP), 2.0)
    assert result.reachable
    assert result.status_code == 200
    assert result.target.host == public, "the caller's report names the address it asked about"
    assert [r["Payload"] for r in lam.requests] == [
        {"host": private, "port": 5060, "transport": "tcp", "timeout_s": 2.0}
    ]
    assert lam.requests[0]["FunctionName"] == "stk-SipProbe"
    assert lam.requests[0]["InvocationType"] == "RequestResponse"


def test_an_address_nothing_holds_is_a_failed_probe_without_an_invoke(holder: tuple[Any, str, str]) -> None:
    ec2, _, _ = holder
    lam = RecordingLambda({})
    result = VpcProber("f", lambda_client=lam, ec2=ec2)(ProbeTarget("192.0.2.77", 5060, Transport.TCP), 1.0)
    assert not result.reachable
    assert result.error is ProbeErrorKind.NETWORK
    assert "no instance holds 192.0.2.77" in result.detail
    assert lam.requests == []


def test_a_failed_probe_function_is_a_failed_probe(holder: tuple[Any, str, str]) -> None:
    ec2, public, _ = holder
    lam = RecordingLambda({"errorType": "ValidationError", "errorMessage": "bad"}, error="Unhandled")
    result = VpcProber("f", lambda_client=lam, ec2=ec2)(ProbeTarget(public, 5060, Transport.TCP), 1.0)
    assert not result.reachable
    assert "probe function failed: ValidationError: bad" in result.detail


def test_the_probe_handler_probes_a_private_address_and_reports_the_verdict() -> None:
    responder = SipResponder()
    handler = probe_handler()
    event = {"host": "127.0.0.1", "port": responder.port, "transport": "tcp", "timeout_s": 2.0}
    answered = handler(event, LambdaContext())
    assert answered["reachable"] is True
    assert answered["status_code"] == 200
    assert responder.requests == 1
    silent = SipResponder(answering=lambda: False)
    dead = handler({**event, "port": silent.port, "timeout_s": 0.5}, LambdaContext())
    assert dead["reachable"] is False
    assert dead["error"] is not None


@pytest.mark.parametrize(
    "event",
    [
        {"host": "198.51.100.7", "port": 5060, "transport": "tcp", "timeout_s": 1},  # public: never probed
        {"host": "10.0.0.10", "port": 0, "transport": "tcp", "timeout_s": 1},
        {"host": "10.0.0.10", "port": 5060, "transport": "tcp", "timeout_s": 60},
        {"host": "10.0.0.10", "port": 5060, "transport": "tcp", "timeout_s": 1, "extra": 1},
    ],
)
def test_the_probe_handler_refuses_anything_but_a_private_target(event: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        probe_handler()(event, LambdaContext())


def test_the_verdict_survives_the_invoke_round_trip() -> None:
    target = ProbeTarget("203.0.113.10", 5060, Transport.UDP)
    result = ProbeResult(target=target, reachable=False, error=ProbeErrorKind.TIMEOUT, detail="no answer", attempts=7)
    back = result_from_json(target, json.loads(json.dumps(result_to_json(result))))
    assert (back.reachable, back.error, back.detail, back.status_code) == (
        False,
        ProbeErrorKind.TIMEOUT,
        "no answer",
        None,
    )
