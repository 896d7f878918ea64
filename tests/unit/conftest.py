"""Unit-test fixtures: the workflows' clock under the test's control."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sip_trunk.workflows import clock as workflow_clock
from support.fakes import ManualClock


@pytest.fixture
def clock() -> Iterator[ManualClock]:
    manual = ManualClock()
    workflow_clock.set_source(manual.now)
    yield manual
    workflow_clock.set_source(None)
