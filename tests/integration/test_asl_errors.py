"""`ErrorEquals` in statemachines/*.asl.yaml name real exception classes, and every retryable error a step
can raise is retried (or handled by name) where that step runs. Renaming a class breaks this test."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "layers" / "sip_trunk" / "src" / "sip_trunk" / "workflows"
MACHINES = sorted((ROOT / "statemachines").glob("*.asl.yaml"))

# Task state resource → the workflow function its handler runs (functions/<name>/app.py).
ENTRY = {
    "ValidateSettings": ("provision", "validate_settings"),
    "RenderConfig": ("provision", "render_config"),
    "LaunchHost": ("provision", "launch_host"),
    "CheckHostStack": ("provision", "check_host_stack"),
    "ApplyConfig": ("provision", "apply_config"),
    "CheckApply": ("provision", "check_apply"),
    "VerifyTrunk": ("provision", "verify_trunk"),
    "SyncElevenlabs": ("provision", "sync_elevenlabs"),
    "RecordDeployment": ("provision", "record_deployment"),
    "FailoverConfirm": ("failover", "confirm"),
    "FailoverLock": ("failover", "lock"),
    "FailoverMoveEip": ("failover", "move_address"),
    "FailoverVerify": ("failover", "verify"),
    "FailoverSwapRoles": ("failover", "swap_roles"),
}
# Raised inside the ElevenLabs client (not visible in the workflows' source): which steps call it unguarded.
ELEVENLABS_CALLERS = {"SyncElevenlabs"}
ADAPTER_RETRYABLE = {"AwsThrottled"}
"""Raised by the AWS adapters (`sip_trunk.aws.clients.aws_call`) on any call; every step makes AWS calls."""
NOT_RAISED: set[str] = set()
"""Retryable classes no step raises (none: waiting for a stack or a command is a poll loop, not an error)."""
HANDLED_BY_CATCH_ALL = {("failover.asl.yaml", "MoveAddress", "LockHeld")}
"""MoveAddress re-checks the lock before moving; losing it (another execution took over after this one's
TTL) ends this execution through ReleaseLockAfterFailure and its notification, on purpose."""


def _defined_in(cls: type, module: str) -> bool:
    """In `module` or, for a package such as sip_trunk.elevenlabs, in one of its modules (it re-exports them)."""
    return cls.__module__ == module or cls.__module__.startswith(f"{module}.")


def exception_classes() -> dict[str, type[BaseException]]:
    from sip_trunk import elevenlabs, errors

    found: dict[str, type[BaseException]] = {}
    for module in (errors, elevenlabs):
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, BaseException) and _defined_in(value, module.__name__):
                found[name] = value
    return found


def task_states() -> list[tuple[str, str, dict[str, Any]]]:
    """(machine file, state name, state) for every state, nested branches included."""
    out: list[tuple[str, str, dict[str, Any]]] = []

    def walk(machine: str, states: dict[str, Any]) -> None:
        for name, state in states.items():
            out.append((machine, name, state))
            for branch in state.get("Branches", []):
                walk(machine, branch["States"])
            if "Iterator" in state or "ItemProcessor" in state:
                walk(machine, (state.get("ItemProcessor") or state["Iterator"])["States"])

    for path in MACHINES:
        walk(path.name, yaml.safe_load(path.read_text())["States"])
    return out


def own_errors(names: list[str]) -> list[str]:
    return [n for n in names if not n.startswith(("States.", "Lambda."))]


def test_every_error_equals_names_an_exception_class() -> None:
    classes = exception_classes()
    seen = 0
    for machine, name, state in task_states():
        for rule in [*state.get("Retry", []), *state.get("Catch", [])]:
            for error in own_errors(rule["ErrorEquals"]):
                seen += 1
                assert error in classes, f"{machine}:{name} matches {error}, which no class raises"
    assert seen >= 5


def test_retry_names_only_retryable_classes() -> None:
    from sip_trunk.elevenlabs import ElevenLabsRetryableError
    from sip_trunk.errors import RetryableError

    classes = exception_classes()
    for machine, name, state in task_states():
        for rule in state.get("Retry", []):
            for error in own_errors(rule["ErrorEquals"]):
                assert issubclass(classes[error], RetryableError | ElevenLabsRetryableError), (
                    f"{machine}:{name} retries {error}, a fatal error"
                )


def _module_files(module: str) -> list[Path]:
    """The source files of a workflow module, or of every module of a workflow package."""
    package = WORKFLOWS / module
    return sorted(package.glob("*.py")) if package.is_dir() else [WORKFLOWS / f"{module}.py"]


def raised_by(module: str, entry: str) -> set[str]:
    """Exception class names raised in the code reachable from `entry` (module functions and common.py)."""
    sources = [path for m in (module, "common") for path in _module_files(m)]
    trees = [ast.parse(path.read_text()) for path in sources]
    local = {n.name: n for tree in trees for n in tree.body if isinstance(n, ast.FunctionDef)}
    found: set[str] = set()
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in local:
            return
        seen.add(name)
        for node in ast.walk(local[name]):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                found.add(node.exc.func.id)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                visit(node.func.id)

    visit(entry)
    return found


def test_every_retryable_error_a_step_raises_is_retried_or_handled_there() -> None:
    from sip_trunk.elevenlabs import ElevenLabsRetryableError
    from sip_trunk.errors import RETRYABLE_ERRORS, RetryableError

    classes = exception_classes()
    assert set(RETRYABLE_ERRORS) == {
        n for n, c in classes.items() if issubclass(c, RetryableError) and c is not RetryableError
    }
    client_retryable = {
        n for n, c in classes.items() if issubclass(c, ElevenLabsRetryableError) and c is not ElevenLabsRetryableError
    }
    raised_anywhere: set[str] = set()
    for machine, name, state in task_states():
        match = re.fullmatch(r"\$\{(\w+)FunctionArn\}", str(state.get("Resource", "")))
        if match is None:
            continue
        raised = raised_by(*ENTRY[match[1]]) | ADAPTER_RETRYABLE
        if match[1] in ELEVENLABS_CALLERS:
            raised |= client_retryable
        raised_anywhere |= raised
        retried = {e for rule in state.get("Retry", []) for e in rule["ErrorEquals"]}
        caught = {e for rule in state.get("Catch", []) for e in rule["ErrorEquals"]}
        for error in raised & (set(RETRYABLE_ERRORS) | client_retryable):
            if (machine, name, error) in HANDLED_BY_CATCH_ALL:
                assert "States.ALL" in caught
                continue
            assert error in retried or "States.ALL" in retried or error in caught, (
                f"{machine}:{name} raises {error} but neither retries nor handles it"
            )
    assert set(RETRYABLE_ERRORS) - raised_anywhere == NOT_RAISED, "a retryable class is newly raised or newly unused"


def test_failure_reasons_are_keyed_by_class_names() -> None:
    from sip_trunk.workflows.provision import _REASONS

    classes = exception_classes()
    assert set(_REASONS) <= set(classes), set(_REASONS) - set(classes)
