"""Fixtures for invoking the Lambda handlers directly: a Powertools-compatible LambdaContext, the moto
account (`world`), the handlers imported once the environment is set, and the recorded event shapes."""

from __future__ import annotations

import copy
import json
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from moto import mock_aws
from support.moto_sfn import ACCOUNT, REGION, load_handlers
from support.world import World, build_world

EVENTS = Path(__file__).resolve().parents[1] / "events"


@dataclass(frozen=True)
class FakeLambdaContext:
    """What Powertools reads from the Lambda context (`inject_lambda_context`, idempotency)."""

    function_name: str = "test-function"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 256
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/test-function"
    log_stream_name: str = "2026/01/01/[$LATEST]0123456789abcdef"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000

    def fresh(self) -> FakeLambdaContext:
        """Another invocation of the same function (a Step Functions retry gets a new request id)."""
        return replace(self, aws_request_id=str(uuid.uuid4()))


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


def load_event(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((EVENTS / name).read_text()))


@pytest.fixture
def event() -> Any:
    """`event("provision_task_launch.json")`: a fresh copy of a recorded event."""
    return load_event


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An empty moto account in us-east-1 (the root template created in it needs no default AMIs)."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MOTO_EC2_LOAD_DEFAULT_AMIS": "false",
    }.items():
        monkeypatch.setenv(key, value)
    with mock_aws(config={"lambda": {"use_docker": False}}):
        yield


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    with mock_aws(), build_world(monkeypatch) as world:
        yield world


@pytest.fixture
def handlers(world: World, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The real `functions/*/app.py` handlers, imported after the environment is set (Powertools reads
    the metric namespace and logger options when the objects are created). Events are logged (at INFO),
    so a test capturing the logs sees every invocation's input too."""
    from sip_trunk.observability import metrics

    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")
    monkeypatch.setattr(metrics, "namespace", world.env.get("POWERTOOLS_METRICS_NAMESPACE", "AwsSipTrunkTest"))
    return load_handlers()


class _CurrentStdout:
    """Writes to whatever `sys.stdout` is at the time: pytest replaces its capture between test phases."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


class LogCapture:
    """The Powertools logger's JSON lines (and the standard library records) written during a test."""

    def __init__(self, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
        self.capsys = capsys
        self.caplog = caplog
        self.out = ""

    def read(self) -> str:
        """Everything logged so far: stdout/stderr (Powertools, EMF) plus stdlib records (e.g. the ElevenLabs
        client's retry warnings)."""
        captured = self.capsys.readouterr()
        self.out += captured.out + captured.err
        records = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in self.caplog.records)
        return self.out + "\n" + self.caplog.text + "\n" + records

    def assert_no(self, *values: str) -> None:
        """None of `values` was logged, and something was (so the check is not vacuous)."""
        text = self.read()
        assert self.lines(), "no Powertools log line was captured"
        for value in values:
            assert value not in text

    def lines(self) -> list[dict[str, Any]]:
        """The Powertools log lines (JSON documents with a `level`), EMF documents excluded."""
        self.read()
        out: list[dict[str, Any]] = []
        for line in self.out.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and "level" in doc and "_aws" not in doc:
                out.append(doc)
        return out


@pytest.fixture
def logs(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LogCapture]:
    """The module-level Powertools logger at DEBUG, re-pointed at the captured stdout (its handler's stream is
    bound when the logger is created, before capsys replaces sys.stdout)."""
    from sip_trunk.observability import logger

    monkeypatch.setattr(logger.registered_handler, "stream", _CurrentStdout())
    previous = logger.log_level
    logger.setLevel("DEBUG")
    caplog.set_level("DEBUG", logger="sip_trunk")  # the product's own loggers; botocore's debug dumps are not ours
    try:
        yield LogCapture(capsys, caplog)
    finally:
        logger.setLevel(previous)
