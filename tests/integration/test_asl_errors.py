"""The names the state machines match in `Retry`/`Catch` are the errors the handlers can raise.

A failing Lambda function reports its exception's class name as `errorType`, and `ErrorEquals` matches that
name. What a step can raise is found from the live code, not from files: each handler is imported, and the
code it can run is followed the way Python resolves it — the functions and classes its bytecode names (through
their globals, wherever they are defined) and, for every `deps.<port>` it reads, the methods of the adapter
`build_deps` wires into that port. Every exception class that code names is one it can raise. A renamed class,
a new typed error, a step that starts raising a retryable error or an ASL rule for an error nothing raises
fails here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from support.reach import handlers, raisable

pytestmark = pytest.mark.integration

HANDLED_BY_CATCH_ALL = {("failover", "MoveAddress", "LockHeld")}
"""MoveAddress re-checks the lock before moving; losing it (another execution took over after this one's
TTL) ends this execution through ReleaseLockAfterFailure and its notification, on purpose."""
CAUGHT_INSIDE = {"verify_trunk": "ElevenLabsError"}
"""The follower does not model `except`: VerifyTrunk reports any ElevenLabs failure in its result
(SyncElevenLabs is the step that retries and gates on ElevenLabs), so none leaves the function."""
UNCAUGHT_ON_PURPOSE = {("failover", "ReleaseLock")}
"""After a successful move, a lock that cannot be released (after 5 tries) fails the execution so it shows;
the lock's TTL frees it."""


def _machines() -> dict[str, dict[str, Any]]:
    from sip_trunk_local.controlplane import asl_document
    from support.moto_sfn import STATEMACHINES

    return {p.name.removesuffix(".asl.yaml"): asl_document(p.read_text()) for p in STATEMACHINES.glob("*.asl.yaml")}


def task_states() -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(machine, state name, state) for every state, nested branches included."""

    def walk(machine: str, states: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for name, state in states.items():
            yield machine, name, state
            for branch in state.get("Branches", []):
                yield from walk(machine, branch["States"])
            if "Iterator" in state or "ItemProcessor" in state:
                yield from walk(machine, (state.get("ItemProcessor") or state["Iterator"])["States"])

    for machine, definition in sorted(_machines().items()):
        yield from walk(machine, definition["States"])


def lambda_tasks() -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """(machine, state, state, function directory) for every Task that invokes one of our functions."""
    from support.moto_sfn import pascal

    by_arn = {f"${{{pascal(name)}FunctionArn}}": name for name in handlers()}
    for machine, name, state in task_states():
        resource = str(state.get("Resource", ""))
        if re.fullmatch(r"\$\{\w+FunctionArn\}", resource):
            assert resource in by_arn, f"{machine}:{name} invokes {resource}, which is no function"
            yield machine, name, state, by_arn[resource]


def own(names: list[str]) -> set[str]:
    return {n for n in names if not n.startswith(("States.", "Lambda."))}


def typed(errors: frozenset[type[BaseException]]) -> dict[str, type[BaseException]]:
    """The project's own error classes among `errors`, by the name Lambda reports."""
    from sip_trunk.elevenlabs import ElevenLabsError
    from sip_trunk.errors import WorkflowError

    return {e.__name__: e for e in errors if issubclass(e, WorkflowError | ElevenLabsError)}


def retryable(cls: type[BaseException]) -> bool:
    from sip_trunk.elevenlabs import ElevenLabsRetryableError
    from sip_trunk.errors import RetryableError

    return issubclass(cls, RetryableError | ElevenLabsRetryableError)


# --- the properties ---------------------------------------------------------------------------------


def test_the_walk_finds_what_a_step_raises() -> None:
    """The follower itself: errors raised in a step's own code, in the adapters behind its ports (AWS
    throttling) and in the ElevenLabs client it is given, each found; none of another step's."""
    assert {"SettingsInvalid", "TrunkNotVerified", "ElevenLabsRateLimited", "AwsThrottled"} <= set(
        typed(raisable("sync_elevenlabs"))
    )
    assert "LockHeld" in typed(raisable("failover_lock"))
    assert "ElevenLabsRateLimited" not in typed(raisable("failover_lock"))
    assert "StackFailed" not in typed(raisable("failover_lock"))


def test_error_names_are_unique() -> None:
    """Lambda reports only the class name: two typed errors with one name could not be told apart."""
    from sip_trunk.elevenlabs import ElevenLabsError
    from sip_trunk.errors import WorkflowError

    def below(cls: type) -> list[type]:
        return [cls, *(d for sub in cls.__subclasses__() for d in below(sub))]

    names = [c.__name__ for root in (WorkflowError, ElevenLabsError) for c in below(root)]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_error_equals_names_an_error_a_handler_can_raise() -> None:
    raised = {n: c for _, _, _, function in lambda_tasks() for n, c in typed(raisable(function)).items()}
    seen = 0
    for machine, name, state in task_states():
        for rule in [*state.get("Retry", []), *state.get("Catch", [])]:
            for error in own(rule["ErrorEquals"]):
                seen += 1
                assert error in raised, f"{machine}:{name} matches {error}, which no handler raises"
    assert seen >= 15


def test_retry_names_only_retryable_classes() -> None:
    raised = {n: c for _, _, _, function in lambda_tasks() for n, c in typed(raisable(function)).items()}
    for machine, name, state in task_states():
        for rule in state.get("Retry", []):
            for error in own(rule["ErrorEquals"]):
                assert retryable(raised[error]), f"{machine}:{name} retries {error}, a fatal error"


def test_every_error_a_step_raises_is_handled_there() -> None:
    """A retryable error is retried (or handled by name); every other one is caught, so a failed step
    restores the previous configuration and notifies instead of ending the execution bare."""
    for machine, name, state, function in lambda_tasks():
        retried = {e for rule in state.get("Retry", []) for e in rule["ErrorEquals"]}
        caught = {e for rule in state.get("Catch", []) for e in rule["ErrorEquals"]}
        if (machine, name) in UNCAUGHT_ON_PURPOSE:
            assert "States.ALL" in retried
            continue
        for error, cls in typed(raisable(function)).items():
            if function in CAUGHT_INSIDE and CAUGHT_INSIDE[function] in {c.__name__ for c in cls.__mro__}:
                continue
            if not retryable(cls):
                assert error in caught or "States.ALL" in caught, f"{machine}:{name} lets {error} fail the run"
            elif (machine, name, error) in HANDLED_BY_CATCH_ALL:
                assert "States.ALL" in caught
            else:
                assert error in retried or "States.ALL" in retried or error in caught, (
                    f"{machine}:{name} raises {error} but neither retries nor handles it"
                )


def test_every_retryable_class_is_raised_and_listed() -> None:
    from sip_trunk.errors import RETRYABLE_ERRORS, RetryableError

    raised = {n for _, _, _, function in lambda_tasks() for n in typed(raisable(function))}
    workflow_retryable = {c.__name__ for c in RetryableError.__subclasses__()}
    assert set(RETRYABLE_ERRORS) == workflow_retryable
    assert workflow_retryable <= raised, workflow_retryable - raised


def test_failure_reasons_are_keyed_by_class_names() -> None:
    from sip_trunk.workflows.provision import _REASONS

    raised = {n for _, _, _, function in lambda_tasks() for n in typed(raisable(function))}
    assert set(_REASONS) <= raised, set(_REASONS) - raised
