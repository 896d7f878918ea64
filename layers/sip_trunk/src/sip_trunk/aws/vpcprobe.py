"""SIP probes from inside the VPC: the Elastic IP's holder probed on its private address by the probe function.

With the ElevenLabs static range set, the hosts' security group admits SIP only from ElevenLabs, the allowed
networks, the hosts themselves and the probe function's security group (ADR-27). The functions that probe
(VerifyTrunk, the health check, the failover functions) run outside the VPC, from public AWS addresses no rule
can name, so they hand the probe to the probe function, which runs in the VPC without internet access and
reaches only the hosts' private addresses. The public address to probe is resolved to the private address of
the instance it points at (DescribeAddresses for an Elastic IP, DescribeInstances for an instance's own
public IPv4); an address nothing holds is a failed probe, as an unanswered one is.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sip_trunk.aws.clients import aws_call, client
from sip_trunk.sip import ProbeErrorKind, ProbeResult, ProbeTarget, Transport

PROBE_NETWORKS = tuple(
    ipaddress.IPv4Network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8")
)
"""Where the probe function may send: RFC 1918 (a VPC's private addresses) and loopback. Not `is_private`, which
also admits the documentation ranges and others that are public on a VPC's route to the internet."""


class ProbeRequest(BaseModel):
    """What the probing functions send the probe function: a private target only (it exists to reach the
    hosts' private addresses, never to send probes elsewhere)."""

    model_config = ConfigDict(extra="forbid")

    host: str
    port: int = Field(ge=1, le=65535)
    transport: Transport
    timeout_s: float = Field(gt=0, le=30)

    @field_validator("host")
    @classmethod
    def _private(cls, value: str) -> str:
        address = ipaddress.IPv4Address(value)
        if not any(address in net for net in PROBE_NETWORKS):
            raise ValueError(f"{value} is not a private (RFC 1918) or loopback IPv4 address")
        return value


def result_to_json(result: ProbeResult) -> dict[str, Any]:
    """What the probe function returns: the verdict, not the raw response."""
    return {
        "reachable": result.reachable,
        "status_code": result.status_code,
        "reason": result.reason,
        "rtt_ms": result.rtt_ms,
        "elapsed_ms": result.elapsed_ms,
        "error": None if result.error is None else result.error.value,
        "detail": result.detail,
        "address": result.address,
    }


def result_from_json(target: ProbeTarget, data: dict[str, Any]) -> ProbeResult:
    error = data.get("error")
    return ProbeResult(
        target=target,
        reachable=bool(data.get("reachable")),
        status_code=data.get("status_code"),
        reason=data.get("reason"),
        rtt_ms=data.get("rtt_ms"),
        elapsed_ms=float(data.get("elapsed_ms") or 0.0),
        error=None if error is None else ProbeErrorKind(error),
        detail=str(data.get("detail") or ""),
        address=data.get("address"),
    )


class VpcProber:
    """A `Prober` that probes the private address behind a public one through the in-VPC probe function."""

    def __init__(self, function_name: str, *, lambda_client: Any | None = None, ec2: Any | None = None) -> None:
        self.function_name = function_name
        self._lambda = lambda_client
        self._ec2 = ec2

    @property
    def lambda_client(self) -> Any:
        return self._lambda or client("lambda")

    @property
    def ec2(self) -> Any:
        return self._ec2 or client("ec2")

    def private_address(self, public_ip: str) -> str | None:
        """The private IPv4 address of the interface `public_ip` belongs to (None: nothing holds it)."""
        with aws_call("DescribeAddresses"):
            addresses = self.ec2.describe_addresses(Filters=[{"Name": "public-ip", "Values": [public_ip]}])
        for address in addresses.get("Addresses", []):
            if address.get("PrivateIpAddress"):
                return str(address["PrivateIpAddress"])
        with aws_call("DescribeInstances"):
            pages = self.ec2.get_paginator("describe_instances").paginate(
                Filters=[
                    {"Name": "ip-address", "Values": [public_ip]},
                    {"Name": "instance-state-name", "Values": ["pending", "running"]},
                ]
            )
            for page in pages:
                for reservation in page["Reservations"]:
                    for instance in reservation["Instances"]:
                        if instance.get("PrivateIpAddress"):
                            return str(instance["PrivateIpAddress"])
        return None

    def __call__(self, target: ProbeTarget, timeout_s: float) -> ProbeResult:
        private = self.private_address(target.host)
        if private is None:
            return ProbeResult(
                target=target, reachable=False, error=ProbeErrorKind.NETWORK, detail=f"no instance holds {target.host}"
            )
        request = {
            "host": private,
            "port": target.port,
            "transport": Transport(target.transport).value,
            "timeout_s": timeout_s,
        }
        ProbeRequest.model_validate(request)
        with aws_call("Invoke"):
            response = self.lambda_client.invoke(
                FunctionName=self.function_name, InvocationType="RequestResponse", Payload=json.dumps(request).encode()
            )
        payload = json.loads(response["Payload"].read() or b"{}")
        if response.get("FunctionError"):
            return ProbeResult(
                target=target,
                reachable=False,
                error=ProbeErrorKind.NETWORK,
                detail=f"probe function failed: {payload.get('errorType')}: {payload.get('errorMessage')}",
            )
        return result_from_json(target, payload)
