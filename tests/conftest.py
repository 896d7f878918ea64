"""Session-wide: the permission proof (tests/support/iam_proof.py, docs/TESTING.md).

Every AWS call a Lambda function, a state machine, the host agent or the operator CLI makes during any test
is recorded with its principal; when the test ends, each call is evaluated against that principal's policies
from template.yaml / stacks/host.yaml, and a call AWS would deny fails the test with the statement it needs.
The terminal summary reports how many calls were evaluated per principal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.iam_proof import Proof, Recorder, iter_counts, unique
from support.moto_server import moto_server

_RECORDER = Recorder()
_PROOF = Proof()
_LATE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    _RECORDER.install()


def pytest_unconfigure(config: pytest.Config) -> None:
    _RECORDER.uninstall()


@pytest.fixture
def iam_recorder() -> Recorder:
    """The session's recorder (planted-defect controls read the calls their test made)."""
    return _RECORDER


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server on loopback for the tests of one module (its state is shared by them)."""
    with moto_server() as url:
        yield url


_EXPECTED: list[str] = []


@pytest.fixture
def iam_denied() -> Callable[[str], None]:
    """`iam_denied("FailoverMoveEipFunctionRole may not ec2:AssociateAddress")`: the test shows a call AWS
    refuses; the proof then requires a denial starting with that text (and fails the test without one)."""
    return _EXPECTED.append


@pytest.fixture(autouse=True)
def _permission_proof() -> Iterator[None]:
    _EXPECTED.clear()
    yield
    denials = unique(_PROOF.check(_RECORDER.take()))
    unmet = [e for e in _EXPECTED if not any(d.startswith(e) for d in denials)]
    denials = [d for d in denials if not any(d.startswith(e) for e in _EXPECTED)]
    if unmet:
        pytest.fail("the proof did not deny, as the test expects: " + "; ".join(unmet), pytrace=False)
    if denials:
        pytest.fail("AWS would deny these calls:\n" + "\n".join(denials), pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Calls made after the last test's teardown (module- and session-scoped fixtures tearing down).
    _LATE.extend(unique(_PROOF.check(_RECORDER.take())))
    if _LATE and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _PROOF.evaluated and not _LATE:
        return
    terminalreporter.section("permission proof")
    total = sum(_PROOF.evaluated.values())
    terminalreporter.write_line(f"AWS calls evaluated against their principal's policies: {total}")
    terminalreporter.write_line(
        f"overhead: {_RECORDER.seconds:.2f} s recording, {_PROOF.seconds:.2f} s loading policies and evaluating"
    )
    for line in iter_counts(_PROOF.evaluated):
        terminalreporter.write_line(f"  {line}")
    for denial in _LATE:
        terminalreporter.write_line(f"DENIED (after the last test): {denial}", red=True)
