"""The hosts' security group, enforced: local hosts get `stacks/network.yaml`'s ingress rules as an iptables
INPUT chain (`sip_trunk_local.firewall`), so a rule that locks out a legitimate sender fails here as on EC2.

With `ElevenLabsStaticCidr` set, SIP TCP is admitted from the ElevenLabs range, the allowed networks, the other
host (the standby's watch-peer probes the primary's private address) and the in-VPC probe function (ADR-27);
the control plane's own address outside the VPC, and any other, is dropped. Planted defects: the same firewall
without the peer rule lets watch-peer start a failover of a healthy primary; without the probe function's rule
the control plane's probe (the health check's `probe_address` through the `VpcProber` and the real probe
function in the VPC) goes unanswered."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from sip_trunk.sip import ProbeResult, ProbeTarget, Transport, probe_options
from sip_trunk_local.asterisk_runner import DEFAULT_ROOT
from sip_trunk_local.firewall import HostFirewall
from sip_trunk_local.hosts import LocalHostManager
from sip_trunk_local.netns import run_in_namespace
from sip_trunk_local.orchestrator import PROBE_SECURITY_GROUP
from sip_trunk_local.topology import CONTROL_PLANE_IP, PROBE_FUNCTION_IP, PUBLIC_IP, STANDIN_IP

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
PRIMARY, STANDBY = "i-0f1e2d3c4b5a60001", "i-0f1e2d3c4b5a60002"
PRIMARY_IP, STANDBY_IP = "10.0.0.10", "10.0.0.11"
STATIC = {"ElevenLabsStaticCidr": "198.51.100.0/24", "AllowedSipCidrs": "198.51.100.50/32"}
BASE = {"RootStackName": "fw", "LogKmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-0000"}
SCANNER_IP = "192.0.2.99"


def firewall(**parameters: str) -> HostFirewall:
    return HostFirewall.from_template(
        REPO / "stacks" / "network.yaml",
        {**BASE, **parameters},
        members={PROBE_SECURITY_GROUP: [PROBE_FUNCTION_IP]},
    )


def probe_from(netns: str, host: str, timeout_s: float = 0.5) -> ProbeResult:
    target = ProbeTarget(host=host, port=5060, transport=Transport.TCP)
    result: ProbeResult = run_in_namespace(netns, lambda: probe_options(target, timeout_s, verify=False))
    return result


@pytest.fixture
def pair(moto_endpoint: str, tmp_path: Path) -> Iterator[tuple[LocalHostManager, Any, str]]:
    """A primary behind the Elastic IP and a standby watching it, both firewalled with the static range set."""
    sfn = boto3.client("stepfunctions", region_name=REGION, endpoint_url=moto_endpoint,
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    definition = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})
    arn = sfn.create_state_machine(
        name=f"failover-{tmp_path.name}"[:80], definition=definition, roleArn="arn:aws:iam::123456789012:role/f"
    )["stateMachineArn"]
    manager = LocalHostManager(
        tmp_path / "run", DEFAULT_ROOT, moto_endpoint, REGION,
        agent_env={"SIP_TRUNK_STACK": "fw", "SIP_TRUNK_FAILOVER_STATE_MACHINE_ARN": arn},
        watch_interval_s=0.3, watch_failures=3, watch_timeout_s=0.3, firewall=firewall(**STATIC),
    )  # fmt: skip
    try:
        manager.start_host(PRIMARY, PRIMARY_IP, "primary")
        manager.map_public_address(PUBLIC_IP, PRIMARY)
        yield manager, sfn, arn
    finally:
        manager.teardown()
        assert manager.leftovers() == {"processes": [], "namespaces": [], "mounts": []}


def _executions(sfn: Any, arn: str) -> list[str]:
    return [e["name"] for e in sfn.list_executions(stateMachineArn=arn)["executions"]]


def _watch_for(manager: LocalHostManager, sfn: Any, arn: str, seconds: float) -> tuple[list[str], str]:
    """Start the standby (its real watch-peer against the primary's private address) and watch for `seconds`."""
    standby = manager.start_host(STANDBY, STANDBY_IP, "standby", peer_address=PRIMARY_IP)
    # (the control plane gives every launched host its role: CheckHostStack's set-role, ADR-12)
    code, out, err = manager.run_command(
        STANDBY, ["sip-trunk-agent", "set-role", "--role", "standby", "--peer-address", PRIMARY_IP]
    )
    assert code == 0, (out, err[-2000:])
    assert manager.status()["hosts"][STANDBY]["watch_peer_running"]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not _executions(sfn, arn):
        time.sleep(0.1)
    log = (standby.base / "watch-peer.log").read_text(errors="replace")
    return _executions(sfn, arn), log


def test_static_range_admits_elevenlabs_the_peer_and_the_probe_function_and_drops_the_rest(
    pair: tuple[LocalHostManager, Any, str],
) -> None:
    manager, sfn, arn = pair
    standin = manager.add_outside("elevenlabs", STANDIN_IP)
    scanner = manager.add_outside("scanner", SCANNER_IP)
    # the carrier (AllowedSipCidrs) and ElevenLabs' range reach the Elastic IP
    assert probe_from(manager.outside_namespace(), PUBLIC_IP).reachable
    assert probe_from(standin, PUBLIC_IP).reachable
    # the in-VPC probe function reaches the primary's private address (VerifyTrunk, health check, failover)
    assert probe_from(manager.probe_function_namespace(), PRIMARY_IP).reachable
    # but nobody else: not a scanner, not the control plane's own public address outside the VPC
    dropped = manager.firewall_drops(PRIMARY)
    assert not probe_from(scanner, PUBLIC_IP).reachable
    assert manager.firewall_drops(PRIMARY) > dropped, "the scanner's SYN was not dropped by the firewall"
    assert not probe_from(manager.control_plane_namespace(), PUBLIC_IP).reachable, CONTROL_PLANE_IP
    # and the standby's watch-peer sees a healthy primary: no failover on a false alarm
    executions, log = _watch_for(manager, sfn, arn, 2.0)
    assert executions == [], log[-2000:]
    assert "probe failed" not in log, log[-2000:]


def test_planted_defect_without_the_peer_rule_watch_peer_fails_over_a_healthy_primary(
    pair: tuple[LocalHostManager, Any, str],
) -> None:
    manager, sfn, arn = pair
    manager.apply_firewalls(firewall(**STATIC).without("SipTcpFromPeerHosts"))
    executions, log = _watch_for(manager, sfn, arn, 10.0)
    assert executions, f"watch-peer never gave up on the unreachable primary:\n{log[-2000:]}"
    assert probe_from(manager.outside_namespace(), PUBLIC_IP).reachable, "the primary itself is healthy"


def test_planted_defect_without_the_probe_functions_rule_the_control_plane_probe_goes_unanswered(
    pair: tuple[LocalHostManager, Any, str],
) -> None:
    manager, _, _ = pair
    assert probe_from(manager.probe_function_namespace(), PRIMARY_IP).reachable
    manager.apply_firewalls(firewall(**STATIC).without("SipTcpFromProbe"))
    assert not probe_from(manager.probe_function_namespace(), PRIMARY_IP).reachable


class VpcLambda:
    """The Lambda service for the in-VPC probe function: Invoke runs its real handler with its interface in the
    VPC (the probe function's namespace, 10.0.0.120)."""

    def __init__(self, netns: str) -> None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("function_sip_probe", REPO / "functions/sip_probe/app.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        self.handler, self.netns = module.handler, netns

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        import io
        from types import SimpleNamespace

        arn = "arn:aws:lambda:us-east-1:123456789012:function:sip_probe"
        context = SimpleNamespace(
            function_name="sip_probe", memory_limit_in_mb=256, aws_request_id="r", invoked_function_arn=arn
        )
        event = json.loads(kwargs["Payload"])
        result = run_in_namespace(self.netns, lambda: self.handler(event, context))
        return {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(result).encode())}


def test_planted_defect_without_the_probe_functions_rule_the_health_checks_probe_fails(
    pair: tuple[LocalHostManager, Any, str],
) -> None:
    """The health check's probe as it runs with the static range: `probe_address` with the `VpcProber`, which
    resolves the Elastic IP to its holder in EC2 (moto) and invokes the real probe function in the VPC."""
    from sip_trunk.aws.vpcprobe import VpcProber
    from sip_trunk.workflows.common import probe_address

    manager, _, _ = pair
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=manager.moto_endpoint,
                       aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    instance = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, SubnetId=subnet,
                                 PrivateIpAddress=PRIMARY_IP)["Instances"][0]  # fmt: skip
    eip = ec2.allocate_address(Domain="vpc")  # moto's address: resolved through EC2, never sent a packet
    ec2.associate_address(AllocationId=eip["AllocationId"], InstanceId=instance["InstanceId"])
    prober = VpcProber("sip-probe", lambda_client=VpcLambda(manager.probe_function_namespace()), ec2=ec2)

    # (the hosts run the image's bootstrap config: Asterisk answers, with a status of its own; the verdict on
    # the status is the workflows' unit tests' business, reaching Asterisk is this one's)
    report = probe_address(prober, eip["PublicIp"], Transport.TCP, 5060, {}, 1.0)
    assert report.reachable, report
    assert report.status_code is not None

    manager.apply_firewalls(firewall(**STATIC).without("SipTcpFromProbe"))
    report = probe_address(prober, eip["PublicIp"], Transport.TCP, 5060, {}, 1.0)
    assert report.probed
    assert not report.reachable, report
    assert not report.answers
    assert report.error is not None
    assert report.error.startswith("timeout"), report
