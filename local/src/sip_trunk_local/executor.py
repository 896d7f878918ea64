"""Run the real ASL in moto's Step Functions executor with the real Lambda handlers, in this process.

- Lambda: `LambdaSimpleBackend.invoke` is replaced by a dispatcher to `functions/<dir>/app.py`; an exception
  becomes `x-amz-function-error: Unhandled` with `{errorType, errorMessage}`, exactly what `Retry`/`Catch`
  `ErrorEquals` match on AWS. Each invocation runs with the function's environment (in local mode: the
  Environment of the function as created in moto, plus the account's endpoint).
- Time: Wait states, Retry back-offs and in-step back-offs are recorded with their nominal length and
  handed to a `Pacer` instead of sleeping: tests advance a fake clock, local mode pauses briefly and lets the
  real clock run (the hosts are real, so deadlines stay real).
- Reports: per-state entry/exit times from the execution history, grouped into steps.

Nothing here is imported by the handlers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

Handler = Callable[[dict[str, Any], Any], Any]
Pacer = Callable[[str, float], None]
"""Called instead of sleeping: (kind: wait | retry | client, nominal seconds)."""


def load_handlers(functions_dir: Path) -> dict[str, Handler]:
    """Every `functions/<dir>/app.py` handler by directory name, imported under a unique module name."""
    handlers: dict[str, Handler] = {}
    for app in sorted(functions_dir.glob("*/app.py")):
        name = app.parent.name
        spec = importlib.util.spec_from_file_location(f"function_{name}", app)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {app}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handlers[name] = module.handler
    return handlers


@dataclass
class LambdaContextStub:
    function_name: str
    region: str = "us-east-1"
    account: str = "123456789012"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 256
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{self.region}:{self.account}:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


@dataclass
class Invocation:
    function: str
    event: dict[str, Any]
    error: str | None
    result: Any
    duration_s: float = 0.0


def reset_handler_caches() -> None:
    """Forget what the handlers cached from the environment (configuration, clients, parameter caches)."""
    from aws_lambda_powertools.utilities import parameters
    from aws_lambda_powertools.utilities.parameters import base
    from sip_trunk import observability
    from sip_trunk.aws import wiring

    parameters.clear_caches()  # type: ignore[no-untyped-call]
    getattr(base, "DEFAULT_PROVIDERS").clear()  # noqa: B009 (not exported)
    wiring.reset()
    observability.reset()


class Dispatcher:
    """Patches moto (in this process) to invoke the real handlers and to record time instead of sleeping.

    `resolve(function_name)` maps the name at the end of the invoked ARN to a handler key (a `functions/`
    directory); `environment(function_name)` gives the variables to run it with (None: leave os.environ).
    Handlers read the process environment, so functions whose environments differ must not run at the same
    time; the template gives every function the same environment (Globals), which is what local mode uses.
    """

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        resolve: Callable[[str], str] | None = None,
        environment: Callable[[str], Mapping[str, str] | None] | None = None,
        pacer: Pacer | None = None,
        around: Callable[[str], AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.handlers = dict(handlers)
        self.resolve = resolve or (lambda name: name)
        self.environment = environment or (lambda name: None)
        self.around = around or (lambda name: contextlib.nullcontext())
        """`around(function_name)`: a context the handler runs in (local mode: its role's credentials)."""
        self.pacer = pacer
        self.waits: list[float] = []
        self.retry_sleeps: list[float] = []
        self.client_sleeps: list[float] = []
        self.invocations: list[Invocation] = []
        self.before: list[Callable[[str, dict[str, Any]], None]] = []
        self.after: list[Callable[[str, dict[str, Any], Any], None]] = []
        self.lock = threading.Lock()
        self._invoke_lock = threading.RLock()
        self._env_key: str | None = None
        self._undo: list[Callable[[], None]] = []

    def calls(self, function: str) -> list[Invocation]:
        return [i for i in self.invocations if i.function == function]

    # --- the patched hooks -----------------------------------------------------------------------
    def invoke(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        function = function_name.rsplit(":", 1)[-1]
        self._use_environment(function)
        with self.around(function):
            return self._invoke(function_name, body, response_headers)

    def _invoke(self, function_name: str, body: Any, response_headers: dict[str, str]) -> bytes:
        name = self.resolve(function_name.rsplit(":", 1)[-1])
        event = json.loads(body) if body else {}
        for hook in self.before:
            hook(name, event)
        started = time.monotonic()
        try:
            result = self.handlers[name](event, LambdaContextStub(name))
        except Exception as exc:
            self._record(Invocation(name, event, type(exc).__name__, None, time.monotonic() - started))
            response_headers["x-amz-function-error"] = "Unhandled"
            return json.dumps(
                {
                    "errorType": type(exc).__name__,
                    "errorMessage": str(exc),
                    "stackTrace": traceback.format_exception(exc)[-3:],
                }
            ).encode()
        self._record(Invocation(name, event, None, result, time.monotonic() - started))
        for after in self.after:
            after(name, event, result)
        return json.dumps(result).encode()

    def _use_environment(self, function_name: str) -> None:
        env = self.environment(function_name)
        if env is None:
            return
        # per function, as each Lambda function has its own processes: what one cached (a secret, a parameter)
        # another must fetch with its own role
        key = json.dumps([function_name, dict(env)], sort_keys=True)
        with self._invoke_lock:
            if key == self._env_key:
                return
            os.environ.update(env)
            self._env_key = key
            reset_handler_caches()

    def _record(self, invocation: Invocation) -> None:
        with self.lock:
            self.invocations.append(invocation)

    def wait(self, seconds: float) -> None:
        with self.lock:
            self.waits.append(seconds)
        if self.pacer:
            self.pacer("wait", seconds)

    def retry_sleep(self, seconds: float) -> None:
        with self.lock:
            self.retry_sleeps.append(seconds)
        if self.pacer:
            self.pacer("retry", seconds)

    def client_sleep(self, seconds: float) -> None:
        with self.lock:
            self.client_sleeps.append(seconds)
        if self.pacer:
            self.pacer("client", seconds)

    # --- installing into moto ----------------------------------------------------------------------
    def _patch(self, owner: Any, name: str, value: Any) -> None:
        original = getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self, clock_source: Callable[[], float] | None = None) -> None:
        from moto.awslambda_simple.models import LambdaSimpleBackend
        from moto.stepfunctions.parser.asl.component.common.retry import retrier_decl
        from moto.stepfunctions.parser.asl.component.state.wait.wait_function.wait_function import WaitFunction
        from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
        from sip_trunk.workflows import clock

        dispatcher = self

        def invoke(backend: Any, function_name: str, qualifier: Any, body: Any, headers: Any, resp: Any) -> bytes:
            return dispatcher.invoke(function_name, body, resp)

        def wait_interval(function: Any, env: Any, wait_seconds: float) -> None:
            dispatcher.wait(wait_seconds)

        class _Time:
            @staticmethod
            def sleep(seconds: float) -> None:
                dispatcher.retry_sleep(seconds)

            time = staticmethod(time.time)

        self._patch(LambdaSimpleBackend, "invoke", invoke)
        self._patch(AmazonStateLanguageParser, "parse", staticmethod(_cached_parse(AmazonStateLanguageParser.parse)))
        self._patch(WaitFunction, "_wait_interval", wait_interval)
        self._patch(retrier_decl, "time", _Time)
        clock.set_source(clock_source)
        clock.set_sleeper(self.client_sleep)

        def restore_clock() -> None:
            clock.set_source(None)
            clock.set_sleeper(None)

        self._undo.append(restore_clock)

    def uninstall(self) -> None:
        while self._undo:
            self._undo.pop()()

    @contextmanager
    def installed(self, clock_source: Callable[[], float] | None = None) -> Iterator[Dispatcher]:
        self.install(clock_source)
        try:
            yield self
        finally:
            self.uninstall()


_PARSED: dict[str, Any] = {}


def _cached_parse(original: Callable[[str], Any]) -> Callable[[str], Any]:
    """moto parses the ASL with ANTLR on create and on every execution (~0.3 s each); the parsed program
    holds no execution state (that lives in the Environment), so one parse per definition is enough."""
    original = getattr(original, "__wrapped_original__", original)

    def parse(definition: str) -> Any:
        if definition not in _PARSED:
            _PARSED[definition] = original(definition)
        return _PARSED[definition]

    parse.__wrapped_original__ = original  # type: ignore[attr-defined]
    return parse


def real_time_pacer(scale: float = 0.02, floor_s: float = 0.05, ceiling_s: float = 0.5) -> Pacer:
    """Local mode: a nominal wait of N seconds pauses N*scale (bounded), so poll loops keep polling real
    hosts at a sane rate without the minutes a deployed state machine spends waiting."""

    def pace(kind: str, seconds: float) -> None:
        time.sleep(min(ceiling_s, max(floor_s, seconds * scale)))

    return pace


# --- executions -----------------------------------------------------------------------------------


@dataclass
class StateRun:
    name: str
    entered: float
    exited: float | None

    @property
    def duration_s(self) -> float:
        return round((self.exited or self.entered) - self.entered, 3)


@dataclass
class ExecutionReport:
    arn: str
    status: str
    output: Any
    error: str | None
    cause: str | None
    started: float
    stopped: float
    states: list[StateRun]
    waits_s: list[float] = field(default_factory=list)
    retries_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    """Every failed task of the execution (`error: cause`), retried ones included."""

    @property
    def duration_s(self) -> float:
        return round(self.stopped - self.started, 3)

    def step_durations(self, groups: Mapping[str, str]) -> dict[str, float]:
        """Seconds per step: first entry to last exit of the states that belong to it (poll loops included)."""
        spans: dict[str, list[float]] = {}
        for state in self.states:
            step = groups.get(state.name)
            if step is None:
                continue
            end = state.exited or state.entered
            span = spans.setdefault(step, [state.entered, end])
            span[0], span[1] = min(span[0], state.entered), max(span[1], end)
        return {step: round(end - start, 3) for step, (start, end) in spans.items()}

    def entered(self) -> list[str]:
        return [s.name for s in self.states]


def _stamp(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def history_states(events: list[dict[str, Any]]) -> list[StateRun]:
    runs: list[StateRun] = []
    open_runs: dict[str, StateRun] = {}
    for event in events:
        if "stateEnteredEventDetails" in event:
            run = StateRun(event["stateEnteredEventDetails"]["name"], _stamp(event["timestamp"]), None)
            runs.append(run)
            open_runs[run.name] = run
        elif "stateExitedEventDetails" in event:
            name = event["stateExitedEventDetails"]["name"]
            if name in open_runs:
                open_runs.pop(name).exited = _stamp(event["timestamp"])
    return runs


def history_failures(events: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for event in events:
        for key in ("lambdaFunctionFailedEventDetails", "taskFailedEventDetails"):
            details = event.get(key)
            if details:
                cause = str(details.get("cause", ""))
                with contextlib.suppress(ValueError, TypeError):
                    cause = str(json.loads(cause).get("errorMessage", cause))
                out.append(f"{details.get('error')}: {cause}")
    return out


def run_execution(
    sfn: Any,
    state_machine_arn: str,
    payload: Any = None,
    *,
    name: str | None = None,
    timeout_s: float = 900.0,
    dispatcher: Dispatcher | None = None,
    poll_s: float = 0.05,
) -> ExecutionReport:
    """Start an execution, wait for it to end, and report its states (moto leaves `$$.Execution.Name`
    empty when no name is given, so one is always given)."""
    started = time.time()
    waits_before = len(dispatcher.waits) if dispatcher else 0
    retries_before = len(dispatcher.retry_sleeps) if dispatcher else 0
    arn = str(
        sfn.start_execution(
            stateMachineArn=state_machine_arn,
            name=name or f"local-{uuid.uuid4().hex[:12]}",
            input=json.dumps(payload if payload is not None else {}),
        )["executionArn"]
    )
    deadline = time.monotonic() + timeout_s
    while True:
        described: dict[str, Any] = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            break
        if time.monotonic() > deadline:
            sfn.stop_execution(executionArn=arn, error="LocalTimeout", cause=f"still running after {timeout_s}s")
            described = sfn.describe_execution(executionArn=arn)
            break
        time.sleep(poll_s)
    events: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"executionArn": arn, "maxResults": 1000}
        if token:
            kwargs["nextToken"] = token
        page = sfn.get_execution_history(**kwargs)
        events += page["events"]
        token = page.get("nextToken")
        if not token:
            break
    output = described.get("output")
    return ExecutionReport(
        arn=arn,
        status=str(described["status"]),
        output=json.loads(output) if isinstance(output, str) and output else output,
        error=described.get("error"),
        cause=described.get("cause"),
        started=started,
        stopped=time.time(),
        states=history_states(events),
        failures=history_failures(events),
        waits_s=list(dispatcher.waits[waits_before:]) if dispatcher else [],
        retries_s=list(dispatcher.retry_sleeps[retries_before:]) if dispatcher else [],
    )
