"""Run the real ASL in moto's Step Functions executor with the real Lambda handlers, in-process.

- Lambda: `LambdaSimpleBackend.invoke` is replaced by a dispatcher to `functions/<name>/app.py` by the
  function name at the end of the ARN; an exception becomes `x-amz-function-error: Unhandled` with
  `{errorType, errorMessage}`, exactly what `Retry`/`Catch` `ErrorEquals` match on AWS.
- Time: Wait states and Retry back-offs are recorded, not slept, and advance a fake clock that the
  workflows read (`sip_trunk.workflows.clock`), so deadlines behave as in production in milliseconds.
"""

from __future__ import annotations

import importlib.util
import json
import re
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS = ROOT / "functions"
STATEMACHINES = ROOT / "statemachines"
REGION = "us-east-1"
ACCOUNT = "123456789012"

Handler = Callable[[dict[str, Any], Any], Any]


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def load_handlers() -> dict[str, Handler]:
    """Every `functions/<name>/app.py` handler, imported under a unique module name."""
    handlers: dict[str, Handler] = {}
    for app in sorted(FUNCTIONS.glob("*/app.py")):
        name = app.parent.name
        spec = importlib.util.spec_from_file_location(f"function_{name}", app)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handlers[name] = module.handler
    return handlers


def substitutions(extra: dict[str, str]) -> dict[str, str]:
    """`${<Pascal>FunctionArn}` for every function (CONTRACTS.md), plus the other substitutions."""
    subs = {f"{pascal(p.parent.name)}FunctionArn": function_arn(p.parent.name) for p in FUNCTIONS.glob("*/app.py")}
    subs.update(extra)
    return subs


def render_definition(path: Path, subs: dict[str, str]) -> str:
    """The ASL as JSON with `${Name}` replaced, failing on any substitution that is not provided."""
    text = path.read_text()
    missing = sorted(set(re.findall(r"\$\{([A-Za-z0-9]+)\}", text)) - set(subs))
    if missing:
        raise AssertionError(f"{path.name}: no value for substitutions {missing}")
    text = re.sub(r"\$\{([A-Za-z0-9]+)\}", lambda m: subs[m.group(1)], text)
    return json.dumps(yaml.safe_load(text))


@dataclass
class FakeContext:
    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 256
    log_group_name: str = "/aws/lambda/test"
    log_stream_name: str = "test"

    @property
    def invoked_function_arn(self) -> str:
        return function_arn(self.function_name)

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


class FakeClock:
    """Starts at the real time; only recorded waits move it forward (plus real elapsed time)."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.lock = threading.Lock()

    def now(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        with self.lock:
            self.offset += seconds


@dataclass
class Invocation:
    function: str
    event: dict[str, Any]
    error: str | None
    result: Any


class Harness:
    """Patches moto for one test; see the module docstring."""

    def __init__(self) -> None:
        self.handlers = load_handlers()
        self.clock = FakeClock()
        self.waits: list[float] = []
        self.retry_sleeps: list[float] = []
        self.client_sleeps: list[float] = []
        self.invocations: list[Invocation] = []
        self.before: list[Callable[[str, dict[str, Any]], None]] = []
        self.after: list[Callable[[str, dict[str, Any], Any], None]] = []
        self.lock = threading.Lock()

    def calls(self, function: str) -> list[Invocation]:
        return [i for i in self.invocations if i.function == function]

    # --- the patched hooks -----------------------------------------------------------------
    def invoke(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        name = function_name.rsplit(":", 1)[-1]
        event = json.loads(body) if body else {}
        for hook in self.before:
            hook(name, event)
        try:
            result = self.handlers[name](event, FakeContext(name))
        except Exception as exc:
            self._record(Invocation(name, event, type(exc).__name__, None))
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(
                {
                    "errorType": type(exc).__name__,
                    "errorMessage": str(exc),
                    "stackTrace": traceback.format_exception(exc)[-3:],
                }
            ).encode()
        self._record(Invocation(name, event, None, result))
        for hook in self.after:
            hook(name, event, result)
        return json.dumps(result).encode()

    def _record(self, invocation: Invocation) -> None:
        with self.lock:
            self.invocations.append(invocation)

    def wait(self, seconds: float) -> None:
        with self.lock:
            self.waits.append(seconds)
        self.clock.advance(seconds)

    def retry_sleep(self, seconds: float) -> None:
        with self.lock:
            self.retry_sleeps.append(seconds)
        self.clock.advance(seconds)

    def client_sleep(self, seconds: float) -> None:
        with self.lock:
            self.client_sleeps.append(seconds)
        self.clock.advance(seconds)

    @contextmanager
    def installed(self, monkeypatch: Any) -> Iterator[Harness]:
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
        from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction
        from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
        from sip_trunk.workflows import clock

        harness = self

        def invoke(backend: Any, function_name: str, qualifier: Any, body: Any, headers: Any, resp: Any) -> bytes:
            return harness.invoke(function_name, body, resp)

        def wait_interval(function: Any, env: Any, wait_seconds: float) -> None:
            harness.wait(wait_seconds)

        class _Time:
            @staticmethod
            def sleep(seconds: float) -> None:
                harness.retry_sleep(seconds)

            time = staticmethod(time.time)

        monkeypatch.setattr(LambdaSimpleBackend, "invoke", invoke)
        cached = staticmethod(_cached_parse)
        _cached_parse.__wrapped_original__ = AmazonStateLanguageParser.parse  # type: ignore[attr-defined]
        monkeypatch.setattr(AmazonStateLanguageParser, "parse", cached)
        monkeypatch.setattr(WaitFunction, "_wait_interval", wait_interval)
        monkeypatch.setattr(retrier_decl, "time", _Time)
        clock.set_source(self.clock.now)
        clock.set_sleeper(self.client_sleep)
        try:
            yield self
        finally:
            clock.set_source(None)
            clock.set_sleeper(None)


_PARSED: dict[str, Any] = {}


def _original_parse(definition: str) -> Any:
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser

    original = getattr(AmazonStateLanguageParser.parse, "__wrapped_original__", None)
    return (original or AmazonStateLanguageParser.parse)(definition)


def _cached_parse(definition: str) -> Any:
    """moto parses the ASL with ANTLR on create and on every execution (~0.3 s each); the parsed program
    holds no execution state (that lives in the Environment), so one parse per definition is enough."""
    if definition not in _PARSED:
        _PARSED[definition] = _original_parse(definition)
    return _PARSED[definition]


def create_state_machine(sfn: Any, name: str, path: Path, subs: dict[str, str]) -> str:
    definition = render_definition(path, subs)
    role = f"arn:aws:iam::{ACCOUNT}:role/{name}-role"
    return str(sfn.create_state_machine(name=name, definition=definition, roleArn=role)["stateMachineArn"])


def start(sfn: Any, arn: str, payload: Any = None, name: str | None = None) -> str:
    # moto leaves `$$.Execution.Name` empty when no name is given (AWS generates one): always name it.
    response = sfn.start_execution(
        stateMachineArn=arn,
        name=name or f"test-{uuid.uuid4().hex[:12]}",
        input=json.dumps(payload if payload is not None else {}),
    )
    return str(response["executionArn"])


def wait_done(sfn: Any, execution_arn: str, timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        described: dict[str, Any] = sfn.describe_execution(executionArn=execution_arn)
        if described["status"] != "RUNNING":
            return described
        if time.monotonic() > deadline:
            raise AssertionError(f"{execution_arn} still RUNNING after {timeout_s}s")
        time.sleep(0.005)


def run(sfn: Any, arn: str, payload: Any = None, name: str | None = None) -> dict[str, Any]:
    return wait_done(sfn, start(sfn, arn, payload, name))


def states_entered(sfn: Any, execution_arn: str) -> list[str]:
    events = sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]


# --- a tiny SIP responder ---------------------------------------------------------------------


class SipResponder:
    """Answers SIP OPTIONS over TCP on 127.0.0.1 with 200 OK while `answering()` is true; otherwise it
    closes the connection without a response (a dead host, as the probe sees it)."""

    def __init__(self, answering: Callable[[], bool] = lambda: True) -> None:
        self.answering = answering
        self.requests = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="sip-responder", daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        self._sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
            except OSError:
                return
            self.requests += 1
            if not self.answering():
                return
            head = data.split(b"\r\n\r\n", 1)[0].decode()
            lines = head.split("\r\n")[1:]
            keep = [line for line in lines if line.split(":", 1)[0].lower() in {"via", "from", "to", "call-id", "cseq"}]
            to = [line for line in keep if line.lower().startswith("to:")]
            keep = [line if line not in to else f"{line};tag=responder" for line in keep]
            response = "\r\n".join(["SIP/2.0 200 OK", *keep, "Server: test-responder", "Content-Length: 0", "", ""])
            conn.sendall(response.encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()
