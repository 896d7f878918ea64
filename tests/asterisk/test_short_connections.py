"""A peer that opens many short TCP connections cannot get a caller's new connection shut down.

Asterisk 22's res_pjsip (``pjsip_transport_management.c``) schedules, for every accepted TCP/TLS connection, a check
Timer B later that shuts the connection down unless it has carried a request. Debian's 22.10.1 (and upstream up to
the 22 branch's head) finds that connection by the transport's name, which pjsip derives from the transport's
memory address and so hands to the next connection: every short connection — a scanner that connects and sends
nothing, a client that opens a new connection per request — leaves a check that later shuts down whichever
connection then holds the name and has not sent its first request yet, a caller between connect and INVITE. The
product's patch (``host_files/image/patches/``, applied by the image build and to the test root's
``res_pjsip.so`` by ``scripts/asterisk-root.sh``) makes the check find only its own connection.

``timer_t1 = 100`` / ``timer_b = 10000`` shorten the check to 10 s (Asterisk scales it with Timer B). A peer opens a
connection every 50 ms, alternately closing it at once and sending one OPTIONS over it first, for longer than one
check period, then goes on while a carrier places calls, each on a new connection (sipp sends its INVITE 0.1 s after
connecting). With the patch every call is answered and nothing is shut down; a connection that then carries no
request is still shut down at Timer B (the check itself still works). Negative control: the same run with Debian's
module as shipped (``unpatched_module_dir``) loses every call (6 of 6 in each of 4 runs; at least half are
required), each shutdown logged at 10 s for a connection that was open for a fraction of a second.

A connection held open without a request is not part of the calls' run: its own shutdown frees a transport whose
address the next caller would take instead of the one the peer's stale checks name, which would hide the defect.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sip_trunk.sip import ProbeTarget, Transport, probe_options
from support.asterisk import AsteriskInstance, unpatched_module_dir
from support.sipp import auth_field, free_media_port, run_sipp, write_injection
from test_harness import MINIMAL, PASSWORD, minimal_variables

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

IDLE_CHECK_S = 10.0
SYSTEM = f"[system]\ntype = system\ntimer_t1 = 100\ntimer_b = {int(IDLE_CHECK_S * 1000)}\n"
CHURN_INTERVAL_S = 0.05
CALLS = 6
PEER_HEAD_START_S = 0.5  # the peer's first checks are due when the first call connects
SHUTDOWN = re.compile(
    r"Shutting down transport 'TCP to 127\.0\.0\.1:(\d+)' since no request was received in (\d+) seconds"
)


@dataclass
class Churn:
    """What the short-connection peer did."""

    silent: int = 0  # connected and closed without sending anything
    options: int = 0  # connected, sent one OPTIONS, read the answer, closed
    answered: int = 0  # ... of which Asterisk answered
    errors: int = 0  # connections that failed (refused, reset, timed out)


@contextmanager
def short_connections(port: int) -> Iterator[Churn]:
    """A peer opening a new TCP connection to ``port`` every ``CHURN_INTERVAL_S`` until the block ends."""
    stop = threading.Event()
    churn = Churn()
    target = ProbeTarget("127.0.0.1", port, Transport.TCP)

    def run() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            if n % 2:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                        churn.silent += 1
                except OSError:
                    churn.errors += 1
            else:
                churn.options += 1
                result = probe_options(target, 1.0, verify=False, from_user="scanner")
                if result.reachable:
                    churn.answered += 1
                else:
                    churn.errors += 1
            stop.wait(CHURN_INTERVAL_S)

    thread = threading.Thread(target=run, name="short-connections", daemon=True)
    thread.start()
    try:
        yield churn
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive(), "the short-connection peer did not stop"


def place_calls(port: int, tmp_path: Path) -> list[bool]:
    """``CALLS`` carrier-like calls, one after another, each on its own new TCP connection (sipp ``-t t1``)."""
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", PASSWORD)]])
    return [
        run_sipp(
            "uac_auth_pcap.xml",
            tmp_path / f"call{i}",
            remote=f"127.0.0.1:{port}",
            transport="t1",
            service="echo",
            inject=users,
            duration_ms=200,
            media_port=free_media_port(),
            timeout=20,
        ).ok
        for i in range(CALLS)
    ]


def shut_down_after_s(port: int) -> float:
    """Open a connection, send nothing, and return how long Asterisk let it live (the idle check at work)."""
    with socket.create_connection(("127.0.0.1", port), timeout=IDLE_CHECK_S + 5.0) as idle:
        opened = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert idle.recv(1) == b"", "Asterisk sent something on a connection that carried no request"
        return time.monotonic() - opened


@pytest.mark.parametrize("patched", [pytest.param(True, id="patched"), pytest.param(False, id="debian-unpatched")])
def test_short_connections_never_close_a_callers_connection(
    asterisk_factory: AsteriskFactory, asterisk_root: Path, tmp_path: Path, patched: bool
) -> None:
    # Given the gateway Asterisk with a 10 s idle check, with the product's res_pjsip (or Debian's as shipped)
    variables = minimal_variables()
    ast = asterisk_factory(
        MINIMAL,
        variables=variables,
        extra_files={"pjsip_extra.conf": SYSTEM},
        modules=None if patched else unpatched_module_dir(asterisk_root),
    )
    port = int(variables["SIP_PORT"])
    with short_connections(port) as churn:
        # When a peer keeps opening short connections for longer than one check period
        time.sleep(IDLE_CHECK_S + PEER_HEAD_START_S)
        # ... and a carrier places calls, each on a new connection, while the peer goes on
        outcomes = place_calls(port, tmp_path)
    shutdowns = [(int(p), int(s)) for p, s in SHUTDOWN.findall(ast.log_text("messages"))]
    failed = outcomes.count(False)
    print(
        f"{'patched' if patched else 'unpatched'}: {failed}/{CALLS} calls failed; {len(shutdowns)} shut down; "
        f"peer {churn}"
    )
    # Then the peer really made short connections of both kinds the whole time
    assert min(churn.silent, churn.options) > IDLE_CHECK_S / CHURN_INTERVAL_S / 4, churn
    if patched:
        # ... and every call was answered, so was every OPTIONS of the peer, and the check shut nothing down
        assert outcomes == [True] * CALLS
        assert churn.answered == churn.options, churn
        assert churn.errors == 0, churn
        assert shutdowns == []
        # ... while it still shuts down a connection that carries no request, at Timer B
        idle_s = shut_down_after_s(port)
        assert IDLE_CHECK_S - 0.5 < idle_s < IDLE_CHECK_S + 3.0, idle_s
        assert len(SHUTDOWN.findall(ast.log_text("messages"))) == 1
    else:
        # ... (negative control) Debian's module shuts callers' fresh connections down before their INVITE
        assert failed >= CALLS // 2, f"only {failed}/{CALLS} calls failed: {outcomes}"
        assert len(shutdowns) >= failed, shutdowns
        assert {s for _, s in shutdowns} == {int(IDLE_CHECK_S)}, shutdowns  # the check runs at Timer B
