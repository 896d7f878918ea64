"""report: the heartbeat item and metrics, from CLI output captured on a real Asterisk (moto for AWS)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.report import NAMESPACE, report
from sip_trunk.agent.runtime import AsteriskUnavailable
from support.world import create_state_table

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "asterisk"
REGION = "us-east-1"
TABLE = "state"


class FixtureCli:
    """Answers each CLI command with the output captured from Asterisk 22 for it."""

    def __init__(self, up: bool = True) -> None:
        self.up_ = up

    def rx(self, command: str, *, timeout_s: float | None = None) -> str:
        if not self.up_:
            raise AsteriskUnavailable("Unable to connect to remote asterisk")
        return (FIXTURES / (command.replace(" ", "_") + ".txt")).read_text()


@pytest.fixture
def aws() -> Iterator[tuple[Any, Any]]:
    with mock_aws():
        dynamodb = boto3.resource("dynamodb", region_name=REGION)
        create_state_table(dynamodb, TABLE)
        yield boto3.client("cloudwatch", region_name=REGION), dynamodb


def test_heartbeat_item_and_metrics(aws: tuple[Any, Any], tmp_path: Path) -> None:
    cloudwatch, dynamodb = aws
    config = AgentConfig(stack="prod", state_dir=tmp_path, state_table=TABLE, config_dir=tmp_path / "etc")

    status = report(config, FixtureCli(), "i-0abc", cloudwatch=cloudwatch, dynamodb=dynamodb)  # type: ignore[arg-type]

    item = dynamodb.Table(TABLE).get_item(Key={"pk": "host#i-0abc", "sk": "heartbeat"})["Item"]
    assert item["asterisk_up"] is True
    assert item["endpoint_loaded"] is True
    assert item["qualify"] == "Unavail"
    assert item["channels"] == 2
    assert item["calls"] == 2
    assert {e["name"] for e in item["endpoints"]} == {"alice", "elevenlabs"}
    assert [r["status"] for r in item["registrations"]] == ["Unregistered"]
    assert float(next(c for c in item["contacts"] if c["aor"] == "alice")["rtt_ms"]) == pytest.approx(0.422)
    assert item["expires_at"] > item["reported_at"]
    names = {m["MetricName"] for m in cloudwatch.list_metrics(Namespace=NAMESPACE)["Metrics"]}
    assert {
        "AsteriskUp",
        "ActiveCalls",
        "TrunkEndpointLoaded",
        "RegistrationsNotRegistered",
        "QualifyRttMaxMs",
    } <= names
    assert status["metrics"] == 2 * len(names)


def test_asterisk_down_is_reported_not_raised(aws: tuple[Any, Any], tmp_path: Path) -> None:
    cloudwatch, dynamodb = aws
    config = AgentConfig(stack="prod", state_dir=tmp_path, state_table=TABLE, config_dir=tmp_path / "etc")
    (tmp_path / "last-apply.json").write_text('{"version": "v1", "ok": false, "error": "rolled back"}')

    report(config, FixtureCli(up=False), "i-0abc", cloudwatch=cloudwatch, dynamodb=dynamodb)  # type: ignore[arg-type]

    item = dynamodb.Table(TABLE).get_item(Key={"pk": "host#i-0abc", "sk": "heartbeat"})["Item"]
    assert item["asterisk_up"] is False
    assert item["apply_error"] == "rolled back"
    stats = cloudwatch.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="AsteriskUp",
        Dimensions=[{"Name": "Stack", "Value": "prod"}],
        StartTime="2000-01-01T00:00:00Z",
        EndTime="2100-01-01T00:00:00Z",
        Period=60,
        Statistics=["Maximum"],
    )
    assert [d["Maximum"] for d in stats["Datapoints"]] == [0.0]
