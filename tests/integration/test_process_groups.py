"""A SIGKILLed Asterisk's group counts as gone only when its last member is: the leader can be reaped while
Asterisk (a member under ``unshare --fork``) still holds its ports, and a start right after then fails."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from sip_trunk_local.asterisk_runner import group_members, wait_group_gone

pytestmark = pytest.mark.integration


@pytest.fixture
def group() -> Iterator[subprocess.Popen[bytes]]:
    """A leader and a background member in a new process group (both sleep)."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_a_group_is_not_gone_while_a_member_outlives_its_leader(group: subprocess.Popen[bytes]) -> None:
    assert wait_for_members(group.pid, 2)
    # When only the leader dies (and is reaped)
    group.kill()
    group.wait(timeout=10)
    # Then the member keeps the group alive
    assert len(group_members(group.pid)) == 1
    assert not wait_group_gone(group.pid, 0.3)
    # And once the whole group is killed it is gone
    os.killpg(group.pid, signal.SIGKILL)
    assert wait_group_gone(group.pid, 10)
    assert group_members(group.pid) == []


def wait_for_members(pgid: int, count: int) -> bool:
    for _ in range(200):
        if len(group_members(pgid)) >= count:
            return True
        time.sleep(0.02)
    return False
