"""`sip-trunk calls` against moto: records shaped by the real dialplan template, shipped to S3 by the real host
agent, listed and shown by the operator CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from rich.console import Console
from sip_trunk import operator_cli
from sip_trunk.agent import calls
from sip_trunk.agent.config import AgentConfig
from sip_trunk.cli import app
from support.callrecord import example_record
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

REGION = "us-east-1"
STACK = "voice"
BUCKET = "voice-backups-0123"
GROUP = "/voice/asterisk"
SECRET_VALUE = "Secret-Value-0123456789"
HOUR_MS = 3_600_000


CONVERSATION = "conv_7Hk2xQ"
TRANSFERRED_TO = "+14155550199"


def a_call(now: float, n: int, ended_ago_h: float, *, one_way: bool = False) -> dict[str, Any]:
    """A record with the shape the rendered dialplan writes, and the values of a 60 s answered call."""
    record = example_record()
    end = int(now * 1000 - ended_ago_h * HOUR_MS)
    setup = end - 61_000
    record.update({
        "call_id": f"gw-{setup // 1000}.{n}", "setup_ms": setup, "answer_ms": setup + 1000, "end_ms": end,
        "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(setup / 1000)), "pdd_ms": 900, "entry": "carrier",
        "caller": f"+1555000{n:04d}", "called": "+14155550100", "route": "agent", "target": "+14155550100",
        "carrier": "carrier", "disposition": "ANSWER", "hangup_by": f"PJSIP/carrier-0000000{n}",
    })  # fmt: skip
    for name in ("caller_leg", "callee_leg"):
        leg = record[name]
        leg.update({"call_id": record["call_id"], "endpoint": name.split("_")[0], "codec": "ulaw", "hangup_cause": 16})
        leg["rx"].update({"packets": 3000, "lost": 0, "jitter_s": 0.002, "mes": 90.1})
        leg["tx"].update({"packets": 3000, "lost": 0, "jitter_s": 0.001, "mes": 89.7})
    record["callee_leg"]["sip_call_id"] = f"agent-leg-{n}@192.0.2.10"
    if one_way:
        record["callee_leg"]["rx"]["packets"] = 0
        record["caller_leg"]["tx"]["packets"] = 0
    return record


def agent_bye(record: dict[str, Any]) -> dict[str, Any]:
    """What the bye-headers service keeps of the agent's BYE that ended this call's agent leg."""
    return {
        "kind": "bye", "sip_call_id": record["callee_leg"]["sip_call_id"], "conversation_id": CONVERSATION,
        "headers": {"x-call-outcome": "transferred"},
    }  # fmt: skip


@pytest.fixture
def recorded() -> list[dict[str, Any]]:
    """Calls that ended 0.5 h to 80 h before the test started (not before the module was collected: a test run
    late in a long session would otherwise see call 1 older than an hour)."""
    now = time.time()
    records = [a_call(now, 1, 0.5), a_call(now, 2, 1.5, one_way=True), a_call(now, 3, 5), a_call(now, 4, 30),
               a_call(now, 5, 80)]  # fmt: skip
    # call 3: the agent transferred the caller to a number, then ended its leg with its conversation id
    records[2]["transfer"] = {"outcome": "completed", "target": TRANSFERRED_TO}
    return records


@pytest.fixture
def stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: list[dict[str, Any]]
) -> Iterator[list[dict[str, Any]]]:
    """A deployed stack whose bucket holds ``recorded``, shipped by the real host agent; yields the records."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(operator_cli, "out", Console(width=300, soft_wrap=True))
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        logs = boto3.client("logs", region_name=REGION)
        logs.create_log_group(logGroupName=GROUP)
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=f"{STACK}/sip/outbound-password", SecretString=SECRET_VALUE
        )
        template = {
            "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {"BackupBucketName": {"Value": BUCKET}},
        }
        boto3.client("cloudformation", region_name=REGION).create_stack(
            StackName=STACK, TemplateBody=json.dumps(template)
        )
        # the host agent ships the records, each spooled in the day file of its end (UTC)
        spool = tmp_path / "calls"
        spool.mkdir()
        for record in recorded:
            day = time.strftime("%Y%m%d", time.gmtime(record["end_ms"] / 1000))
            with (spool / f"calls-{day}.jsonl").open("a") as out:
                out.write(json.dumps(record) + "\n")
        third_ended = recorded[2]["end_ms"] / 1000
        calls.agent_headers_path(spool, third_ended).write_text(json.dumps(agent_bye(recorded[2])) + "\n")
        config = AgentConfig(
            stack=STACK, region=REGION, call_records_dir=spool, asterisk_log_group=GROUP, backup_bucket=BUCKET,
            instance_id="i-0abc",
        )  # fmt: skip
        assert calls.ship_call_records(config, logs, s3, sleep=lambda _: None)["shipped"] == len(recorded)
        yield recorded


def run(*args: str) -> Any:
    return CliRunner().invoke(app, ["calls", *args, "--stack", STACK, "--region", REGION])


def ids(records: list[dict[str, Any]], *ns: int) -> list[str]:
    return [records[n - 1]["call_id"] for n in ns]


def test_lists_recent_calls_newest_first_in_a_table(stack: list[dict[str, Any]]) -> None:
    # When the operator lists the last day's calls
    result = run()
    # Then the table holds the three calls of the last 24 h, newest first, with the media verdict
    assert result.exit_code == 0, result.output
    positions = [result.output.find(call_id) for call_id in ids(stack, 1, 2, 3)]
    assert all(p > 0 for p in positions), result.output
    assert positions == sorted(positions)
    assert stack[3]["call_id"] not in result.output
    assert "3 call(s)" in result.output
    assert "one_way_in" in result.output
    assert "60.0" in result.output  # talk seconds
    third = next(line for line in result.output.splitlines() if stack[2]["call_id"] in line)
    assert CONVERSATION in third
    assert f"completed {TRANSFERRED_TO}" in third
    others = [line for line in result.output.splitlines() if stack[0]["call_id"] in line]
    assert others
    assert CONVERSATION not in others[0]
    assert "completed" not in others[0]
    assert SECRET_VALUE not in result.output


def test_a_conversation_id_finds_its_call_among_older_and_newer_ones(stack: list[dict[str, Any]]) -> None:
    # When the operator looks up the call of one ElevenLabs conversation, with a limit the newer calls would fill
    found = run("--since", "4d", "--limit", "1", "--conversation", CONVERSATION, "--json")
    assert found.exit_code == 0, found.output
    # Then only that call is listed, with what the agent's BYE said
    records = [json.loads(line) for line in found.output.splitlines()]
    assert [r["call_id"] for r in records] == ids(stack, 3)
    assert records[0]["conversation_id"] == CONVERSATION
    assert records[0]["agent_headers"] == {"x-call-outcome": "transferred"}
    assert records[0]["transfer"] == {"outcome": "completed", "target": TRANSFERRED_TO}
    none = run("--since", "4d", "--conversation", "conv_unknown")
    assert none.exit_code == 0, none.output
    assert "0 call(s)" in none.output


def test_since_and_limit_choose_the_calls(stack: list[dict[str, Any]]) -> None:
    listed = run("--since", "4d", "--json")
    assert listed.exit_code == 0, listed.output
    assert [json.loads(line)["call_id"] for line in listed.output.splitlines()] == ids(stack, 1, 2, 3, 4, 5)
    limited = run("--since", "4d", "--limit", "2", "--json")
    assert [json.loads(line)["call_id"] for line in limited.output.splitlines()] == ids(stack, 1, 2)
    recent = run("--since", "1h", "--json")
    assert [json.loads(line)["call_id"] for line in recent.output.splitlines()] == ids(stack, 1)
    since_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2 * 3600))
    assert [json.loads(x)["call_id"] for x in run("--since", since_time, "--json").output.splitlines()] == ids(
        stack, 1, 2
    )


def test_show_prints_one_call_in_full(stack: list[dict[str, Any]]) -> None:
    # When the operator asks for the one-way call, two days after it ended is no matter: the id carries its day
    call_id = stack[1]["call_id"]
    result = CliRunner().invoke(app, ["calls", "show", call_id, "--stack", STACK, "--region", REGION])
    assert result.exit_code == 0, result.output
    # Then the whole record is printed as JSON (every field the dialplan writes, plus the verdict) and per leg
    text = result.output
    document = json.loads(text[: text.index("}\n", text.rindex('"v"')) + 1])
    assert document == {**stack[1], "media": "one_way_in", "conversation_id": None, "agent_headers": {}}
    assert "media per leg and direction" in text
    assert SECRET_VALUE not in text


def test_show_an_unknown_call_fails_cleanly(stack: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(app, ["calls", "show", "gw-1796303919.99", "--stack", STACK, "--region", REGION])
    assert result.exit_code == 1
    assert "no call record with id gw-1796303919.99" in result.output
    assert "Traceback" not in result.output


def test_refusals(stack: list[dict[str, Any]]) -> None:
    assert CliRunner().invoke(app, ["calls"]).exit_code == 2  # no stack
    bad = run("--since", "yesterday")
    assert bad.exit_code == 2
    assert "--since 'yesterday'" in bad.output
    missing = CliRunner().invoke(app, ["calls", "--stack", "nostack", "--region", REGION])
    assert missing.exit_code == 1
    assert "stack nostack does not exist" in missing.output
