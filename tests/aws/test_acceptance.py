"""Acceptance against a real AWS account: deploy, provision, verify, fail over, tear down.

Opt-in only (marker `aws`, deselected by default). Run it with `make acceptance STACK=<new name>`:
it uses your current AWS credentials, creates billable resources for ~30 minutes to ~2 hours (stock Ubuntu
builds Asterisk on each host at boot) and deletes them.
It prints what it measured (deploy time, provisioning time, failover time).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.aws

ROOT = Path(__file__).resolve().parents[2]


def deploy_parameters() -> dict[str, str]:
    """The stack parameters of the run; also what the waits below are derived from."""
    return {
        "ElevenLabsPhoneNumber": os.environ.get("ACCEPTANCE_PHONE_NUMBER", "+14155550100"),
        "AlarmEmail": os.environ.get("ACCEPTANCE_ALARM_EMAIL") or "acceptance@example.com",
        "HighAvailability": os.environ.get("ACCEPTANCE_HA", "true"),
        "AutoProvision": "false",
        "InstanceType": "t4g.small",
    }


def provision_wait_s() -> int:
    """As long as Provision itself may take for these parameters (template.yaml's deadlines)."""
    from support.deploy import load_template, provision_worst_case_s

    return provision_worst_case_s(load_template(), deploy_parameters())


def failover_wait_s() -> int:
    """The failover lock's lifetime bounds one Failover execution (FAILOVER_LOCK_TTL_S)."""
    from sip_trunk.workflows.config import WorkflowConfig

    return int(WorkflowConfig.model_fields["lock_ttl_s"].default)


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if not value:
        pytest.fail(f"{name} is not set (run through `make acceptance STACK=...`)", pytrace=False)
    return value


def measured(what: str, seconds: float) -> None:
    print(f"MEASURED {what}: {seconds:.1f} s", flush=True)


def wait_execution(sfn: Any, arn: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            return described
        time.sleep(10)
    raise AssertionError(f"{arn} still running after {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def deployed() -> Iterator[dict[str, str]]:
    import boto3

    stack = env("ACCEPTANCE_STACK")
    sam = env("ACCEPTANCE_SAM", "sam")
    started = time.monotonic()
    subprocess.run([sam, "build"], cwd=ROOT, check=True)
    measured("sam build", time.monotonic() - started)
    started = time.monotonic()
    subprocess.run(
        [
            sam, "deploy", "--stack-name", stack, "--resolve-s3", "--no-confirm-changeset",
            "--capabilities", "CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND",
            "--parameter-overrides", *(f"{k}={v}" for k, v in deploy_parameters().items()),
        ],
        cwd=ROOT,
        check=True,
    )  # fmt: skip
    measured("sam deploy (root + network stack)", time.monotonic() - started)
    cfn = boto3.client("cloudformation")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in cfn.describe_stacks(StackName=stack)["Stacks"][0]["Outputs"]}
    try:
        yield {"stack": stack, **outputs}
    finally:
        started = time.monotonic()
        host = f"{stack}-host"
        try:
            cfn.delete_stack(StackName=host)
            cfn.get_waiter("stack_delete_complete").wait(StackName=host)
        finally:
            subprocess.run([sam, "delete", "--stack-name", stack, "--no-prompts"], cwd=ROOT, check=False)
        measured("teardown", time.monotonic() - started)
        print("NOTE retained on purpose: the KMS key, the buckets and the state table (DeletionPolicy Retain)")


def test_provision_verifies_the_trunk(deployed: dict[str, str]) -> None:
    import boto3

    sfn = boto3.client("stepfunctions")
    started = time.monotonic()
    arn = sfn.start_execution(stateMachineArn=deployed["ProvisionStateMachineArn"], input="{}")["executionArn"]
    result = wait_execution(sfn, arn, timeout_s=provision_wait_s())
    measured("provision (launch host, apply config, verify)", time.monotonic() - started)
    assert result["status"] == "SUCCEEDED", result.get("error")
    from sip_trunk.sip import ProbeTarget, Transport, probe_options

    answer = probe_options(ProbeTarget(host=deployed["SipAddress"], port=5060, transport=Transport.TCP), 5.0)
    print(f"OPTIONS over TCP from here: {answer.status_code} {answer.reason} ({answer.error or 'ok'})")
    assert answer.reachable, answer.detail
    if answer.rtt_ms is not None:
        measured("SIP OPTIONS round trip from here", answer.rtt_ms / 1000)


def test_failover_moves_the_address(deployed: dict[str, str]) -> None:
    import boto3

    ec2 = boto3.client("ec2")
    address = ec2.describe_addresses(PublicIps=[deployed["SipAddress"]])["Addresses"][0]
    before = address.get("InstanceId")
    assert before, "the Elastic IP is associated after provisioning"
    sfn = boto3.client("stepfunctions")
    started = time.monotonic()
    ec2.stop_instances(InstanceIds=[before])
    event = {"source": "acceptance", "detail": {"alarmName": f"{deployed['stack']}-host-down-primary"}}
    arn = sfn.start_execution(stateMachineArn=deployed["FailoverStateMachineArn"], input=json.dumps(event))[
        "executionArn"
    ]
    result = wait_execution(sfn, arn, timeout_s=failover_wait_s())
    measured("failover (stop primary → address on standby)", time.monotonic() - started)
    assert result["status"] == "SUCCEEDED", result.get("error")
    after = ec2.describe_addresses(PublicIps=[deployed["SipAddress"]])["Addresses"][0].get("InstanceId")
    assert after
    assert after != before
