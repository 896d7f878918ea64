"""Planted-defect controls of the permission proof (tests/conftest.py, tests/support/iam_proof.py).

Each control runs real product code in moto, takes the calls the session's recorder attributed to the
principal, and evaluates them against that principal's policy with one statement removed: the proof must
deny the call that needs it and name the missing action and resource. The same calls against the
unaltered policy are allowed (the autouse proof fixture evaluates them again when the test ends).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.report import report
from support.iam_proof import HOST, Call, Proof, Recorder, unique
from support.iam_proof import without_statement as without

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "asterisk"
REGION = "us-east-1"
TABLE = "trunk-state"


class FixtureCli:
    """Answers each Asterisk CLI command with the output captured from Asterisk 22 for it."""

    def rx(self, command: str, *, timeout_s: float | None = None) -> str:
        return (FIXTURES / (command.replace(" ", "_") + ".txt")).read_text()


@pytest.fixture
def heartbeat_calls(iam_recorder: Recorder, tmp_path: Path) -> Iterator[list[Call]]:
    """The host agent's real `report` (heartbeat item + metrics) in moto, and the calls it made."""
    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name=REGION)
        dynamodb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        config = AgentConfig(stack="trunk", state_dir=tmp_path, state_table=TABLE, config_dir=tmp_path / "etc")
        cli: Any = FixtureCli()
        report(config, cli, "i-0abc", cloudwatch=boto3.client("cloudwatch", region_name=REGION), dynamodb=dynamodb)
        yield [c for c in iam_recorder.peek() if c.principal == HOST]


def test_the_real_host_policy_allows_the_heartbeat(heartbeat_calls: list[Call]) -> None:
    assert {(c.service, c.operation) for c in heartbeat_calls} == {
        ("dynamodb", "PutItem"),
        ("cloudwatch", "PutMetricData"),
    }
    assert unique(Proof().check(heartbeat_calls)) == []


def test_without_the_heartbeat_statement_the_put_item_is_denied(heartbeat_calls: list[Call]) -> None:
    denials = unique(Proof(without("Heartbeat", HOST)).check(heartbeat_calls))
    assert len(denials) == 1, denials
    assert denials[0].startswith("HostRole may not dynamodb:PutItem on arn:aws:dynamodb:us-east-1:123456789012:table/")
    assert "dynamodb:LeadingKeys=['host#i-0abc']" in denials[0]


def test_without_kms_through_dynamodb_the_heartbeat_is_denied(heartbeat_calls: list[Call]) -> None:
    denials = unique(Proof(without("DecryptStateTableKey", HOST)).check(heartbeat_calls))
    assert len(denials) == 1, denials
    assert denials[0].startswith("HostRole may not kms:Decrypt on arn:aws:kms:")
    assert "kms:ViaService=dynamodb.us-east-1.amazonaws.com" in denials[0]
    assert "is encrypted with the stack key" in denials[0]


def test_without_the_metrics_namespace_statement_put_metric_data_is_denied(heartbeat_calls: list[Call]) -> None:
    denials = unique(Proof(without("HostMetrics", HOST)).check(heartbeat_calls))
    assert denials, "PutMetricData was allowed without HostMetrics"
    assert all(d.startswith("HostRole may not cloudwatch:PutMetricData on *") for d in denials)
    assert all("cloudwatch:namespace=AwsSipTrunk/Host" in d for d in denials)


def test_a_heartbeat_for_another_key_is_denied_by_the_leading_keys_condition(heartbeat_calls: list[Call]) -> None:
    put = next(c for c in heartbeat_calls if c.operation == "PutItem")
    forged = replace(put, params={**put.params, "Item": {**put.params["Item"], "pk": "deployment"}})
    denials = unique(Proof().check([forged]))
    assert len(denials) == 1, denials
    assert "dynamodb:LeadingKeys=['deployment']" in denials[0]


def test_launch_host_needs_pass_role_for_the_host_stack_role(
    world: Any, handlers: dict[str, Any], event: Any, lambda_context: Any, iam_recorder: Recorder
) -> None:
    # Given the real RenderConfig and LaunchHost handlers run in moto
    rendered = handlers["render_config"](event("provision_task_render.json"), lambda_context.fresh())
    launch = event("provision_task_launch.json")
    launch["render"] = rendered
    handlers["launch_host"](launch, lambda_context.fresh())
    calls = [c for c in iam_recorder.peek() if c.principal == "LaunchHostFunctionRole"]
    assert ("cloudformation", "CreateStack") in {(c.service, c.operation) for c in calls}
    # When the role loses its PassRole statement, Then the CreateStack with RoleARN is denied by name
    denials = unique(Proof(without("PassHostStackRole", "LaunchHostFunctionRole")).check(calls))
    assert len(denials) == 1, denials
    assert denials[0].startswith("LaunchHostFunctionRole may not iam:PassRole on arn:aws:iam::123456789012:role/")
    assert "iam:PassedToService=cloudformation.amazonaws.com" in denials[0]
    assert unique(Proof().check(calls)) == []
