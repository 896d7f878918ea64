"""The one clock the workflows read, replaceable for tests and local mode.

Deadlines are absolute epoch seconds carried in the state machine's data, so a poll loop can be
resumed by any invocation. Tests swap the source for a fake clock that Wait states advance.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

_source: Callable[[], float] = time.time
_sleeper: Callable[[float], None] = time.sleep


def now() -> float:
    """Seconds since the epoch."""
    return _source()


def set_source(source: Callable[[], float] | None) -> None:
    """Use `source` as the clock (`None` restores the system clock)."""
    global _source
    _source = source or time.time


def sleep(seconds: float) -> None:
    """Back off inside a step (e.g. the ElevenLabs client's retries)."""
    _sleeper(seconds)


def set_sleeper(sleeper: Callable[[float], None] | None) -> None:
    global _sleeper
    _sleeper = sleeper or time.sleep


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def parse_iso(value: str) -> float:
    """Epoch seconds of an ISO 8601 timestamp as Step Functions writes them (`...Z` or `+00:00`)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
