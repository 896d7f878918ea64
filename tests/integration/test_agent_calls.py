"""Call records to S3 (for Athena) and CloudWatch Logs (EMF per route), and an outage that loses nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
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


class Faulty:
    """A moto client behind a switch: while ``down`` every call fails as if the service were unreachable, and
    ``fail(op, exc)`` makes the next call of ``op`` raise ``exc``. Every call is noted in ``journal``."""

    def __init__(self, inner: Any, journal: list[str] | None = None) -> None:
        self.inner, self.down = inner, False
        self.journal = [] if journal is None else journal
        self.pending: dict[str, list[Exception]] = {}
        self.calls: dict[str, int] = {}
        self.wrappers: dict[str, Callable[[Callable[..., Any], dict[str, Any]], Any]] = {}

    def wrap(self, operation: str, wrapper: Callable[[Callable[..., Any], dict[str, Any]], Any]) -> None:
        """Route ``operation`` through ``wrapper(real_call, kwargs)``: to fail the n-th call, or doctor an answer."""
        self.wrappers[operation] = wrapper

    def fail(self, operation: str, exc: Exception, times: int = 1) -> None:
        self.pending.setdefault(operation, []).extend([exc] * times)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        service = self.inner.meta.service_model.service_name

        def call(**kwargs: Any) -> Any:
            self.journal.append(f"{service}.{name}")
            if self.down:
                raise EndpointConnectionError(endpoint_url=f"https://{service}.{REGION}.amazonaws.com")
            if self.pending.get(name):
                raise self.pending[name].pop(0)
            self.calls[name] = self.calls.get(name, 0) + 1
            if name in self.wrappers:
                return self.wrappers[name](target, kwargs)
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
    flaky = Faulty(logs)
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
    assert result == {"shipped": 4, "files": 3, "pending": 0, "refused_by_logs": 0}
    assert list(config.call_records_dir.iterdir()) == []
    events = delivered(logs)
    assert sorted(e["call_id"] for e in events) == [f"gw-1796303919.{n}" for n in (1, 2, 3, 4)]
    # Then each event is the record plus EMF metrics by stack and route
    lossy = next(e for e in events if e["call_id"].endswith(".2"))
    emf = lossy["_aws"]["CloudWatchMetrics"][0]
    assert emf["Namespace"] == calls.NAMESPACE
    assert emf["Dimensions"] == [["Stack", "Route"]]
    rollup = lossy["_aws"]["CloudWatchMetrics"][1]  # the one stack-wide metric, for the alarm
    assert (rollup["Dimensions"], [m["Name"] for m in rollup["Metrics"]]) == ([["Stack"]], ["MediaProblem"])
    names = {"Calls", "Answered", "PostDialDelay", "Loss", "Jitter", "MES", "MediaProblem"}
    assert {m["Name"] for m in emf["Metrics"]} == names
    assert (lossy["media"], lossy["MediaProblem"]) == ("ok", 0.0)
    assert (lossy["Stack"], lossy["Route"], lossy["Calls"], lossy["Answered"]) == ("teststack", "agent", 1.0, 1.0)
    assert lossy["Loss"] == pytest.approx(100 * 30 / 630)
    assert lossy["MES"] == pytest.approx(70.0)
    assert lossy["Jitter"] == pytest.approx(0.5)
    assert lossy["callee_leg"]["rx"]["lost"] == 30  # the record itself travels unchanged
    unanswered = next(e for e in events if e["call_id"].endswith(".3"))
    assert unanswered["Answered"] == 0.0
    assert "PostDialDelay" not in unanswered
    assert unanswered["media"] is None
    assert "MediaProblem" not in unanswered  # nothing to judge: no sample either way
    # and S3 holds each record once, one object per shipped file, under its UTC day's partition
    objects = in_s3(s3)
    assert sorted(k.rsplit("/", 2)[1] for k in objects) == ["dt=2026-12-02", "dt=2026-12-03", "dt=2026-12-03"]
    assert all(k.split("/")[-1].startswith("i-0abc-") and k.endswith(".jsonl") for k in objects)
    stored = [r for records in objects.values() for r in records]
    assert sorted(r["call_id"] for r in stored) == [f"gw-1796303919.{n}" for n in (1, 2, 3, 4)]
    # the record unchanged, plus the media verdict and (none here) the agent's BYE headers
    shipped = {**record(2, lost=30), "media": "ok", "conversation_id": None, "agent_headers": {}}
    assert next(r for r in stored if r["call_id"].endswith(".2")) == shipped


def test_a_broken_line_is_set_aside_not_retried(logs: Any, s3: Any, config: AgentConfig) -> None:
    # Given a day file whose middle line is not a record (a torn write, or tampering)
    spool_lines(config, "20261203", [json.dumps(record(1)), '{"v":1,"call_id":', json.dumps(record(2))])
    # When the records are shipped, the first attempt failing after the file was read
    faulty_logs = Faulty(logs)
    faulty_logs.fail("put_log_events", EndpointConnectionError(endpoint_url="https://logs"))
    with pytest.raises(calls.CallRecordsUnavailable):
        calls.ship_call_records(config, faulty_logs, s3, sleep=no_sleep)
    result = calls.ship_call_records(config, faulty_logs, s3, sleep=no_sleep)
    # Then the two records are delivered and the broken line waits in rejected.jsonl (once) for an operator
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


def s3_error(code: str) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": 503}}
    return ClientError(response, "PutObject")


def test_an_s3_outage_loses_nothing_and_the_next_run_ships_each_record_once(
    logs: Any, s3: Any, config: AgentConfig
) -> None:
    # Given records of two days, and S3 answering 503 SlowDown, then unreachable
    spool_lines(config, "20261202", [json.dumps(record(1)), json.dumps(record(2))])
    spool_lines(config, "20261203", [json.dumps(record(3))])
    faulty_s3 = Faulty(s3)
    faulty_s3.fail("put_object", s3_error("SlowDown"))
    # When ship-calls runs, it fails and keeps every record on disk; nothing reached the log stream either
    with pytest.raises(calls.CallRecordsUnavailable, match="SlowDown"):
        calls.ship_call_records(config, logs, faulty_s3, sleep=no_sleep)
    faulty_s3.down = True
    with pytest.raises(calls.CallRecordsUnavailable, match="EndpointConnectionError"):
        calls.ship_call_records(config, logs, faulty_s3, sleep=no_sleep)
    assert in_s3(s3) == {}
    assert delivered(logs) == []
    claimed = sorted(p.name for p in config.call_records_dir.glob("calls-*"))
    assert len(claimed) == 2
    assert all(n.endswith(calls.SHIPPING) for n in claimed)
    # When S3 is back, the next run delivers each record exactly once to each destination and empties the spool
    faulty_s3.down = False
    result = calls.ship_call_records(config, logs, faulty_s3, sleep=no_sleep)
    assert result["shipped"] == 3
    assert list(config.call_records_dir.iterdir()) == []
    stored = [r["call_id"] for records in in_s3(s3).values() for r in records]
    assert sorted(stored) == [f"gw-1796303919.{n}" for n in (1, 2, 3)]
    assert sorted(e["call_id"] for e in delivered(logs)) == [f"gw-1796303919.{n}" for n in (1, 2, 3)]


def test_a_log_outage_mid_file_resumes_where_it_stopped(logs: Any, s3: Any, config: AgentConfig) -> None:
    # Given one file of five records, shipped two events per PutLogEvents call
    spool_lines(config, "20261203", [json.dumps(record(n)) for n in range(5)])
    faulty_s3, faulty_logs = Faulty(s3), Faulty(logs)
    # When CloudWatch Logs accepts the first batch and then fails

    def second_call_fails(real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        if faulty_logs.calls["put_log_events"] == 2:
            raise EndpointConnectionError(endpoint_url=f"https://logs.{REGION}.amazonaws.com")
        return real(**kwargs)

    faulty_logs.wrap("put_log_events", second_call_fails)
    with pytest.raises(calls.CallRecordsUnavailable):
        calls.ship_call_records(config, faulty_logs, faulty_s3, sleep=no_sleep, batch_size=2)
    # Then S3 has the file's records, the stream the first two, and the file is still on disk
    assert faulty_s3.calls == {"put_object": 1}
    assert len(delivered(logs)) == 2
    assert len(list(config.call_records_dir.glob(f"calls-*{calls.SHIPPING}"))) == 1
    # When the next run succeeds
    result = calls.ship_call_records(config, faulty_logs, faulty_s3, sleep=no_sleep, batch_size=2)
    # Then it neither writes the object again nor sends an event twice, and the spool is empty
    assert result["shipped"] == 5
    assert faulty_s3.calls == {"put_object": 1}
    assert [e["call_id"] for e in delivered(logs)] == [f"gw-1796303919.{n}" for n in range(5)]
    assert list(config.call_records_dir.iterdir()) == []


def test_a_crash_after_s3_wrote_the_object_rewrites_it_in_place(logs: Any, s3: Any, config: AgentConfig) -> None:
    # Given a run that wrote the object but died before it could note it (progress reset, as after a crash)
    spool_lines(config, "20261203", [json.dumps(record(1)), json.dumps(record(2))])
    faulty_logs = Faulty(logs)
    faulty_logs.fail("put_log_events", EndpointConnectionError(endpoint_url="https://logs"))
    with pytest.raises(calls.CallRecordsUnavailable):
        calls.ship_call_records(config, faulty_logs, s3, sleep=no_sleep)
    for marker in config.call_records_dir.glob(f".calls-*{calls.PROGRESS}"):
        marker.unlink()
    # When the next run ships the file again
    calls.ship_call_records(config, faulty_logs, s3, sleep=no_sleep)
    # Then S3 still holds one object with each record once (the key is the claimed file's)
    objects = in_s3(s3)
    assert [[r["call_id"] for r in rs] for rs in objects.values()] == [["gw-1796303919.1", "gw-1796303919.2"]]


def test_records_are_fsynced_before_anything_is_sent(
    logs: Any, s3: Any, config: AgentConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a day file as Asterisk leaves it (appended, not fsync'd)
    spool_lines(config, "20261203", [json.dumps(record(1))])
    journal: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        journal.append(f"fsync {os.readlink(f'/proc/self/fd/{fd}')}")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    # When it is shipped
    calls.ship_call_records(config, Faulty(logs, journal), Faulty(s3, journal), sleep=no_sleep)
    # Then the claimed file and the directory (the rename) were on disk before the first AWS call
    first_aws = next(i for i, e in enumerate(journal) if not e.startswith("fsync"))
    synced = {e.removeprefix("fsync ") for e in journal[:first_aws]}
    spool = str(config.call_records_dir.resolve())
    assert spool in synced
    assert any(p.startswith(f"{spool}/calls-20261203.jsonl.") and p.endswith(calls.SHIPPING) for p in synced)


def test_records_logs_refuse_as_too_old_are_kept_in_s3_not_retried(logs: Any, s3: Any, config: AgentConfig) -> None:
    # Given a file holding a record CloudWatch Logs refuses (older than its 14 days: an outage that long)
    spool_lines(config, "20261203", [json.dumps(record(1)), json.dumps(record(2))])
    faulty_logs = Faulty(logs)

    def first_too_old(real: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        answer = dict(real(**kwargs))
        answer["rejectedLogEventsInfo"] = {"tooOldLogEventEndIndex": 0}  # what AWS answers for the first event
        return answer

    faulty_logs.wrap("put_log_events", first_too_old)
    # When it is shipped
    result = calls.ship_call_records(config, faulty_logs, s3, sleep=no_sleep)
    # Then the refusal is counted, the records are in S3, and the file is done (a retry would be refused again)
    assert result["refused_by_logs"] == 1
    assert sum(len(rs) for rs in in_s3(s3).values()) == 2
    assert list(config.call_records_dir.iterdir()) == []


def test_a_progress_marker_left_by_a_crash_after_the_delete_is_cleaned_up(
    logs: Any, s3: Any, config: AgentConfig
) -> None:
    stale = config.call_records_dir / f".calls-20261203.jsonl.1{calls.SHIPPING}{calls.PROGRESS}"
    stale.write_text('{"s3": true, "logs_sent": 1}')
    spool_lines(config, "20261203", [json.dumps(record(1))])
    calls.ship_call_records(config, logs, s3, sleep=no_sleep)
    assert list(config.call_records_dir.iterdir()) == []
    assert [e["call_id"] for e in delivered(logs)] == ["gw-1796303919.1"]


def hep_bye(sip_call_id: str, *headers: str) -> bytes:
    """A HEP v3 copy of a BYE, as Asterisk's res_hep_pjsip sends it (the SIP message in chunk 0x000f)."""
    import struct

    sip = "\r\n".join(["BYE sip:gw@10.0.0.10 SIP/2.0", f"Call-ID: {sip_call_id}", *headers, "", ""]).encode()
    chunk = struct.pack("!HHH", 0, 0x000F, 6 + len(sip)) + sip
    return b"HEP3" + struct.pack("!H", 6 + len(chunk)) + chunk


def test_the_agents_bye_headers_are_shipped_with_the_agents_leg(logs: Any, s3: Any, config: AgentConfig) -> None:
    import socket

    # Given two answered calls spooled, and the bye-headers service given Asterisk's copies of the BYEs that ended
    # their agent legs: the first with the conversation id and a custom header, the second with a hostile id
    spool_lines(config, "20261203", [json.dumps(record(1)), json.dumps(record(2))])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(0.1)
        first = hep_bye("1@198.51.100.7", "X-Conversation-ID: conv_7Hk2", "X-Call-Outcome: resolved")
        tx.sendto(first, rx.getsockname())
        tx.sendto(hep_bye("2@198.51.100.7", 'X-Conversation-ID: bad"id'), rx.getsockname())
        # both datagrams are queued on the loopback socket: two reads, one timeout, then stop
        stops = iter([False, False, False, True])
        kept = calls.serve_bye_headers(config.call_records_dir, rx, stop=lambda: next(stops))
    # When the records are shipped
    calls.ship_call_records(config, logs, s3, settle_s=0, sleep=no_sleep)
    # Then the first call's record carries the conversation id and the other header, in S3 and in the log event
    (objects,) = in_s3(s3).values()
    by_id = {r["call_id"]: r for r in objects}
    events = {e["call_id"]: e for e in delivered(logs)}
    for source in (by_id, events):
        first, second = source["gw-1796303919.1"], source["gw-1796303919.2"]
        assert (first["conversation_id"], first["agent_headers"]) == ("conv_7Hk2", {"x-call-outcome": "resolved"})
        # and the second has none: its BYE's only header was refused
        assert (second["conversation_id"], second["agent_headers"]) == (None, {})
    assert kept == 1


def test_bye_headers_older_than_yesterday_are_dropped_once_nothing_is_left_to_ship(
    logs: Any, s3: Any, config: AgentConfig
) -> None:
    spool = config.call_records_dir
    now = 1796303932.0  # 2026-12-03
    for day in ("20261130", "20261202", "20261203"):
        (spool / f"agent-headers-{day}.jsonl").write_text("")
    calls.ship_call_records(config, logs, s3, settle_s=0, sleep=no_sleep, clock=lambda: now)
    assert sorted(p.name for p in spool.glob("agent-headers-*")) == [
        "agent-headers-20261202.jsonl",
        "agent-headers-20261203.jsonl",
    ]
