"""Local mode needs root (namespaces, mounts) and the Asterisk root file system: ensure both or fail.

Never skip: a CI run must not pass by not testing.
"""

from __future__ import annotations

import os

import pytest
from support.asterisk import DEFAULT_ROOT, AsteriskError, ensure_root, root_problem


@pytest.fixture(scope="session", autouse=True)
def local_mode_ready() -> None:
    if os.geteuid() != 0:
        pytest.fail("local mode needs root (network namespaces, mounts, Asterisk): run as root", pytrace=False)
    try:
        ensure_root(DEFAULT_ROOT)
    except AsteriskError as exc:
        pytest.fail(f"could not prepare the Asterisk root file system:\n{exc}", pytrace=False)
    problem = root_problem(DEFAULT_ROOT)
    if problem:
        pytest.fail(problem, pytrace=False)
