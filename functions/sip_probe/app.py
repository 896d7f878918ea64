"""SipProbe (in the VPC, no internet): SIP OPTIONS to a host's private address for the functions outside the VPC.

Only private IPv4 targets are accepted: the function exists to reach what the hosts' security group admits from
its own group (ADR-27), never to send probes elsewhere.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from sip_trunk.aws import wiring
from sip_trunk.aws.vpcprobe import ProbeRequest, result_to_json
from sip_trunk.observability import logger
from sip_trunk.sip import ProbeTarget


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    request = ProbeRequest.model_validate(event)
    target = ProbeTarget(host=request.host, port=request.port, transport=request.transport)
    result = wiring.sip_probe(target, request.timeout_s)
    logger.info("probed", extra={"host": request.host, "port": request.port, "reachable": result.reachable})
    return result_to_json(result)
