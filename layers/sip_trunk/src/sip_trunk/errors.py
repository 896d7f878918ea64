"""Typed failures of the workflow steps.

A Lambda function that raises reports the exception's class name as its `errorType`, and the state
machines match those names in `Retry`/`Catch` `ErrorEquals`. Renaming a class here is therefore a
change to `statemachines/*.asl.yaml` too.

- `RetryableError`: the world has not caught up yet (a verification not passed yet, a lock held by another
  execution). A `Retry` tries again until its deadline. Waiting for a stack or a Run Command is not an
  error: those steps return `ready`/`done: false` and the state machine polls with a Wait/Choice loop.
- `AwsThrottled` (retryable) and `StackRejected`, `AddressRefused`, `HostUnreachable` (fatal) are raised by
  the adapters (`sip_trunk.aws`): they translate the AWS error codes the workflows act on into these, and
  let every other error (access denied, validation of a call this code got wrong, ...) pass unchanged, so it
  fails the step under its own name instead of being mistaken for a state of the world.
- `FatalError`: retrying cannot help (invalid settings, a failed stack, a deadline passed). The state
  machine's `Catch` restores the previous configuration and notifies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sip_trunk.limits import Limit


class WorkflowError(Exception):
    """Root of every failure a workflow step raises on purpose."""


class RetryableError(WorkflowError):
    """Try again later; the same input can succeed."""


class FatalError(WorkflowError):
    """Stop; a human or a new input is needed."""


# --- retryable ------------------------------------------------------------------------------


class TrunkNotVerified(RetryableError):
    """A verification check has not passed yet (version not reported, SIP not answering, ...)."""


class LockHeld(RetryableError):
    """Another execution holds the failover lock."""


class AwsThrottled(RetryableError):
    """An AWS API kept throttling the call after the SDK's own retries; the state machine retries the step."""


# --- fatal ----------------------------------------------------------------------------------


class SettingsInvalid(FatalError):
    """The settings document or one of its secrets is invalid or missing."""


class StackFailed(FatalError):
    """The host stack ended in a failed or rolled-back state, or could not be created."""


class StackTimedOut(FatalError):
    """The host stack did not become ready before the deadline."""


class ApplyFailed(FatalError):
    """The host agent could not apply the configuration (or did not finish before the deadline)."""


class VerificationTimedOut(FatalError):
    """The trunk did not pass verification before the deadline."""


class BackupFailed(FatalError):
    """The host agent's backup failed or did not finish in time (the config snapshot may still be saved)."""


class HostNotFound(FatalError):
    """The deployment names no running host to act on."""


class PrimaryStillHealthy(FatalError):
    """The primary answers SIP: the alarm was a false alarm and failover must not move anything."""


class StandbyNotReady(FatalError):
    """The standby is not running the desired version, so failing over to it would not help."""


class AddressMoveFailed(FatalError):
    """The Elastic IP could not be associated with the standby."""


# --- raised by the adapters -------------------------------------------------------------------


class StackRejected(FatalError):
    """CloudFormation refused a create or update (invalid template or parameters, a state that cannot be
    updated); the workflow reports it as `StackFailed`."""


class AddressRefused(FatalError):
    """EC2 refused to associate the Elastic IP (the instance is not running or unknown, the allocation is
    unknown)."""


class HostUnreachable(FatalError):
    """Run Command cannot reach the instance (it is not running, or its SSM agent is not registered)."""


RETRYABLE_ERRORS: tuple[str, ...] = (
    TrunkNotVerified.__name__,
    LockHeld.__name__,
    AwsThrottled.__name__,
)
"""Class names the state machines retry (kept next to the classes so a test can compare with the ASL)."""


class AwsLimitExceeded(FatalError, ValueError):
    """A name or value the code was about to send is over a documented AWS limit (`limit`, from
    `sip_trunk.limits`); raised before the request, so nothing was sent."""

    def __init__(self, limit: Limit, detail: str) -> None:
        self.limit = limit
        super().__init__(f"{detail}: over the AWS limit {limit.name} ({limit.value} {limit.unit}; {limit.doc})")
