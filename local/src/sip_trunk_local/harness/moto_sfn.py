"""Run the real ASL in moto's Step Functions executor with the real Lambda handlers, in-process.

- Lambda: `LambdaSimpleBackend.invoke` is replaced by a dispatcher to `functions/<name>/app.py` by the
  function name at the end of the ARN; an exception becomes `x-amz-function-error: Unhandled` with
  `{errorType, errorMessage}`, exactly what `Retry`/`Catch` `ErrorEquals` match on AWS.
- Time: Wait states and Retry back-offs are recorded, not slept, and advance a fake clock that the
  workflows read (`sip_trunk.workflows.clock`), so deadlines behave as in production in milliseconds.

The dispatcher itself is the product's (`sip_trunk_local.executor.Dispatcher`, which local mode uses too);
this module adds the fake clock, the test substitutions and a tiny SIP responder.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sip_trunk_local import executor
from sip_trunk_local.controlplane import asl_document, find_project_root

ROOT = find_project_root(Path(__file__).parent)
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
    return executor.load_handlers(FUNCTIONS)


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
    return json.dumps(asl_document(text))


FakeContext = executor.LambdaContextStub


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


Invocation = executor.Invocation


class Harness(executor.Dispatcher):
    """The product's dispatcher (sip_trunk_local.executor) with a fake clock that waits advance."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        super().__init__(load_handlers(), pacer=lambda kind, seconds: self.clock.advance(seconds))

    @contextmanager
    def installed(self, monkeypatch: Any = None) -> Iterator[Harness]:
        with super().installed(self.clock.now):
            yield self


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
    """Answers SIP OPTIONS over TCP (or TLS, with a server context) on 127.0.0.1 with 200 OK while
    `answering()` is true; otherwise it closes the connection without a response (a dead host, as the probe
    sees it)."""

    def __init__(self, answering: Callable[[], bool] = lambda: True, *, tls: ssl.SSLContext | None = None) -> None:
        self.answering = answering
        self.tls = tls
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
        conn.settimeout(2)
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:  # ssl.SSLError included: a client that refused the certificate
                conn.close()
                return
        with conn:
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
