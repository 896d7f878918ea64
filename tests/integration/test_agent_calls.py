"""Call records to S3 (for Athena) and CloudWatch Logs (EMF per route), and an outage that loses nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from moto import mock_aws
from sip_trunk.agent import calls
from sip_trunk.agent.__main__ import main
from sip_trunk.agent.config import AgentConfig
from sip_trunk.callrecords import S3_PREFIX

pytestmark = pytest.mark.integration

REGION = "us-east-1"
GROUP = "/teststack/asterisk"
BUCKET = "teststack-backups"


def record(n: int, *, lost: int = 0, answered: bool = True) -> dict[str, Any]:
    """A record shaped like the ones the real Asterisk writes (tests/asterisk/test_call_records.py)."""

    def leg(endpoint: str, rx_lost: int) -> dict[str, Any]:
        return {
            "call_id": f"gw-1796303919.{n}", "channel": f"PJSIP/{endpoint}-0000000{n}", "endpoint": endpoint,
            "sip_call_id": f"{n}@198.51.100.7", "codec": "ulaw", "hangup_cause": 16,
            "rx": {"packets": 600, "lost": rx_lost, "jitter_s": 0.0005, "mes": 88.08 if not rx_lost else 70.0},
            "tx": {"packets": 236, "lost": 0, "jitter_s": 0.000125, "mes": 88.07},
            "rtt_s": 0.0007,
        }  # fmt: skip

    return {
        "v": 1, "call_id": f"gw-1796303919.{n}", "start": "2026-12-03T13:18:39Z",
        "setup_ms": 1796303919179 + n, "answer_ms": 1796303919192 + n if answered else None,
        "end_ms": 1796303932206 + n, "pdd_ms": 13 if answered else None, "entry": "carrier", "caller": "+15551230000",
        "called": "+14155550100", "route": "agent", "target": "+14155550100", "carrier": "carrier",
        "disposition": "ANSWER" if answered else "NOANSWER", "hangup_by": "PJSIP/carrier-00000000",
        "caller_leg": leg("carrier", 0), "callee_leg": leg("elevenlabs", lost) if answered else None,
    }  # fmt: skip


@pytest.fixture
def logs() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("logs", region_name=REGION)
        client.create_log_group(logGroupName=GROUP)
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        yield client


@pytest.fixture
def s3(logs: Any) -> Any:
    return boto3.client("s3", region_name=REGION)


@pytest.fixture
def config(tmp_path: Path) -> AgentConfig:
    spool = tmp_path / "calls"
    spool.mkdir()
    return AgentConfig(
        stack="teststack",
        region=REGION,
        call_records_dir=spool,
        asterisk_log_group=GROUP,
        backup_bucket=BUCKET,
        instance_id="i-0abc",
    )


class FlakyLogs:
    """The moto client; while ``down`` every call fails as if CloudWatch Logs were unreachable."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.down = inner, False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)

        def call(**kwargs: Any) -> Any:
            if self.down:
                raise EndpointConnectionError(endpoint_url=f"https://logs.{REGION}.amazonaws.com")
            return target(**kwargs)

        return call


def spool_lines(config: AgentConfig, day: str, lines: list[str]) -> None:
    with (config.call_records_dir / f"calls-{day}.jsonl").open("a") as out:
        out.write("".join(line + "\n" for line in lines))


def delivered(logs: Any) -> list[dict[str, Any]]:
    events = logs.get_log_events(logGroupName=GROUP, logStreamName="calls-i-0abc", startFromHead=True)["events"]
    return [json.loads(e["message"]) for e in events]


def in_s3(s3: Any) -> dict[str, list[dict[str, Any]]]:
    """Every object under the call records' prefix: key -> its records."""
    out = {}
    for item in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{S3_PREFIX}/").get("Contents", []):
        body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read().decode()
        out[item["Key"]] = [json.loads(line) for line in body.splitlines()]
    return out


def no_sleep(_: float) -> None:
    return None


def test_an_outage_loses_nothing_and_delivery_deletes_the_spool(logs: Any, s3: Any, config: AgentConfig) -> None:
    # Given two days of records in the spool, one of them with loss on the agent leg
    spool_lines(config, "20261202", [json.dumps(record(1)), json.dumps(record(2, lost=30))])
    spool_lines(config, "20261203", [json.dumps(record(3, answered=False))])
    flaky = FlakyLogs(logs)
    flaky.down = True
    # When CloudWatch Logs is unreachable, the run fails and every record stays on disk
    with pytest.raises(calls.CallRecordsUnavailable):
        calls.ship_call_records(config, flaky, s3, sleep=no_sleep)
    on_disk = sorted(p.name.split(".")[0] for p in config.call_records_dir.iterdir())
    assert on_disk == ["calls-20261202", "calls-20261203"]
    assert all(p.name.endswith(".shipping") for p in config.call_records_dir.iterdir())
    # and Asterisk keeps appending to a fresh day file meanwhile
    spool_lines(config, "20261203", [json.dumps(record(4))])
    # When it is back, everything is delivered once and the spool is empty
    flaky.down = False
    result = calls.ship_call_records(config, flaky, s3, sleep=no_sleep)
    assert result == {"shipped": 4, "files": 3, "pending": 0}
    assert list(config.call_records_dir.iterdir()) == []
    events = delivered(logs)
    assert sorted(e["call_id"] for e in events) == [f"gw-1796303919.{n}" for n in (1, 2, 3, 4)]
    # Then each event is the record plus EMF metrics by stack and route
    lossy = next(e for e in events if e["call_id"].endswith(".2"))
    emf = lossy["_aws"]["CloudWatchMetrics"][0]
    assert emf["Namespace"] == calls.NAMESPACE
    assert emf["Dimensions"] == [["Stack", "Route"]]
    assert {m["Name"] for m in emf["Metrics"]} == {"Calls", "Answered", "PostDialDelay", "Loss", "Jitter", "MES"}
    assert (lossy["Stack"], lossy["Route"], lossy["Calls"], lossy["Answered"]) == ("teststack", "agent", 1.0, 1.0)
    assert lossy["Loss"] == pytest.approx(100 * 30 / 630)
    assert lossy["MES"] == pytest.approx(70.0)
    assert lossy["Jitter"] == pytest.approx(0.5)
    assert lossy["callee_leg"]["rx"]["lost"] == 30  # the record itself travels unchanged
    unanswered = next(e for e in events if e["call_id"].endswith(".3"))
    assert unanswered["Answered"] == 0.0
    assert "PostDialDelay" not in unanswered
    # and S3 holds each record once, one object per shipped file, under its UTC day's partition
    objects = in_s3(s3)
    assert sorted(k.rsplit("/", 2)[1] for k in objects) == ["dt=2026-12-02", "dt=2026-12-03", "dt=2026-12-03"]
    assert all(k.split("/")[-1].startswith("i-0abc-") and k.endswith(".jsonl") for k in objects)
    stored = [r for records in objects.values() for r in records]
    assert sorted(r["call_id"] for r in stored) == [f"gw-1796303919.{n}" for n in (1, 2, 3, 4)]
    assert next(r for r in stored if r["call_id"].endswith(".2")) == record(2, lost=30)  # the record, unchanged


def test_a_broken_line_is_set_aside_not_retried(logs: Any, s3: Any, config: AgentConfig) -> None:
    # Given a day file whose middle line is not a record (a torn write, or tampering)
    spool_lines(config, "20261203", [json.dumps(record(1)), '{"v":1,"call_id":', json.dumps(record(2))])
    # When the records are shipped
    result = calls.ship_call_records(config, logs, s3, sleep=no_sleep)
    # Then the two records are delivered and the broken line waits in rejected.jsonl for an operator
    assert result["shipped"] == 2
    assert [p.name for p in config.call_records_dir.iterdir()] == [calls.REJECTED]
    assert (config.call_records_dir / calls.REJECTED).read_text() == '{"v":1,"call_id":\n'
    assert [e["call_id"] for e in delivered(logs)] == ["gw-1796303919.1", "gw-1796303919.2"]
    assert [[r["call_id"] for r in rs] for rs in in_s3(s3).values()] == [["gw-1796303919.1", "gw-1796303919.2"]]


def test_last_calls_lists_the_newest_records(config: AgentConfig) -> None:
    spool_lines(config, "20261202", [json.dumps(record(n)) for n in range(5)])
    assert [r["call_id"] for r in calls.last_calls(config.call_records_dir, 2)] == [
        "gw-1796303919.3",
        "gw-1796303919.4",
    ]


def test_the_calls_command_prints_the_last_calls(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # Given a host whose spool holds three records
    spool = tmp_path / "calls"
    spool.mkdir()
    (spool / "calls-20261203.jsonl").write_text("".join(json.dumps(record(n)) + "\n" for n in range(3)))
    agent_env = tmp_path / "agent.env"
    agent_env.write_text(f"SIP_TRUNK_STACK=s\nSIP_TRUNK_CALL_RECORDS_DIR={spool}\nAWS_REGION={REGION}\n")
    # When an operator asks for the last two
    code = main(["calls", "--count", "2"], agent_env_file=agent_env, role_env_file=tmp_path / "role.env")
    # Then one JSON answer lists them, newest last
    assert code == 0
    answer = json.loads(capsys.readouterr().out)
    assert [c["call_id"] for c in answer["calls"]] == ["gw-1796303919.1", "gw-1796303919.2"]
