"""Asterisk 22's idle-connection check against callers' new TCP connections, with the standby's watch-peer running.

res_pjsip (``pjsip_transport_management.c``) schedules, for every accepted TCP/TLS connection, a check Timer B
later (``timer_b``, 32 s by default) that shuts the connection down unless it has carried a request. The check
finds its connection by the transport's name, and pjsip names a transport after its memory address, which the
next connection reuses. So a watcher that opens a connection per probe leaves one pending check per probe, each
of which later hits whichever connection then holds the name — a caller that has connected and not yet sent its
INVITE (sipp connects first, then sends): Asterisk logs "Shutting down transport … since no request was
received" and the INVITE meets a closed socket.

``timer_t1 = 100`` / ``timer_b = 10000`` shorten that check to 10 s (Asterisk scales it with Timer B, whose floor
is 64 x T1), so the test waits 10 s instead of 32. The watcher probes every 0.1 s: with a new connection per probe a
pending check fires every 0.1 s and nearly every call is hit, sipp sending its INVITE 0.1 s after connecting (the
rate only sets the odds: at local mode's 0.5 s about one call in three, fewer at production's 1.5 s); the product's
watcher, one kept connection, leaves no check behind, so no call is hit. Calls are placed within one check period of
each other, so checks left by the calls' own (closed) connections cannot fire during the calls.

The product's patched ``res_pjsip.so`` (``test_short_connections.py``) makes any peer's short connections harmless,
so the per-probe negative control runs Debian's module as shipped (``unpatched_module_dir``): the kept connection
is what protects callers of a peer whose Asterisk lacks the patch, and it leaves no check behind either way.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sip_trunk.agent import watch
from sip_trunk.agent.watch import Prober, watch_peer
from sip_trunk.sip import OptionsSession, ProbeResult, ProbeTarget, Transport, probe_options
from support.asterisk import AsteriskInstance, unpatched_module_dir
from support.sipp import auth_field, free_media_port, run_sipp, write_injection
from test_harness import MINIMAL, PASSWORD, minimal_variables

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

IDLE_CHECK_S = 10.0
SYSTEM = f"[system]\ntype = system\ntimer_t1 = 100\ntimer_b = {int(IDLE_CHECK_S * 1000)}\n"
PROBE_INTERVAL_S = 0.1
CALLS = 6
SHUTDOWN = re.compile(r"Shutting down transport 'TCP to [\d.:]+' since no request was received in (\d+) seconds")


class RecordingSession(OptionsSession):
    """watch-peer's own session class, recording what its probes got (the probing itself is the product's)."""

    made: ClassVar[list[RecordingSession]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results: list[ProbeResult] = []
        RecordingSession.made.append(self)

    def probe(self, timeout_s: float) -> ProbeResult:
        result = super().probe(timeout_s)
        self.results.append(result)
        return result


class _Stopped(Exception):
    """Raised from the watcher's sleep to end it (its kept connection is closed on the way out)."""


@contextmanager
def watching(port: int, prober: Prober | None) -> Iterator[None]:
    """Run the agent's watch-peer (``prober=None``: its own default) against Asterisk on ``port`` in a thread."""
    stop = threading.Event()
    box: dict[str, object] = {}

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise _Stopped

    def run() -> None:
        try:
            watch_peer(
                ProbeTarget("127.0.0.1", port, Transport.TCP),
                interval_s=PROBE_INTERVAL_S,
                failures=3,
                timeout_s=1.0,
                sfn=None,
                state_machine_arn=None,
                instance_id="i-standby",
                prober=prober,
                sleep=sleep,
            )
        except _Stopped:
            box["stopped"] = True
        except Exception as exc:  # surfaced in the test thread below
            box["error"] = exc

    thread = threading.Thread(target=run, name="watch-peer", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive(), "watch-peer did not stop"
    assert "error" not in box, box.get("error")
    assert box.get("stopped"), box


def place_calls(port: int, tmp_path: Path) -> list[bool]:
    """``CALLS`` carrier-like calls, one after another, each on its own new TCP connection (sipp ``-t t1``)."""
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", PASSWORD)]])
    outcomes = []
    for i in range(CALLS):
        result = run_sipp(
            "uac_auth_pcap.xml",
            tmp_path / f"call{i}",
            remote=f"127.0.0.1:{port}",
            transport="t1",
            service="echo",
            inject=users,
            duration_ms=200,
            media_port=free_media_port(),
            timeout=20,
        )
        outcomes.append(result.ok)
    return outcomes


def per_probe_connections(target: ProbeTarget, timeout_s: float) -> ProbeResult:
    """The watcher's former prober: a new TCP connection for every probe."""
    return probe_options(target, timeout_s, verify=False)


@pytest.mark.parametrize(
    ("prober", "expect_failures"),
    [pytest.param(per_probe_connections, True, id="per-probe-connections"), pytest.param(None, False, id="kept")],
)
def test_calls_survive_the_idle_check_while_watch_peer_probes(
    asterisk_factory: AsteriskFactory,
    asterisk_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prober: Prober | None,
    expect_failures: bool,
) -> None:
    RecordingSession.made.clear()
    monkeypatch.setattr(watch, "OptionsSession", RecordingSession)
    # Given the gateway Asterisk with a 10 s idle check (Debian's module as shipped when the old prober is shown to
    # break calls), probed by watch-peer every 0.1 s for longer than that
    variables = minimal_variables()
    ast = asterisk_factory(
        MINIMAL,
        variables=variables,
        extra_files={"pjsip_extra.conf": SYSTEM},
        modules=unpatched_module_dir(asterisk_root) if expect_failures else None,
    )
    port = int(variables["SIP_PORT"])
    with watching(port, prober):
        time.sleep(IDLE_CHECK_S + 1.0)
        # When a carrier places calls, each on a new connection, within one idle-check period
        began = time.monotonic()
        outcomes = place_calls(port, tmp_path)
        calls_s = time.monotonic() - began
    shutdowns = SHUTDOWN.findall(ast.log_text("messages"))
    failed = outcomes.count(False)
    print(
        f"prober={'kept' if prober is None else 'per-probe'}: {failed}/{CALLS} calls failed; {len(shutdowns)} shut down"
    )
    assert calls_s < IDLE_CHECK_S, f"the calls took {calls_s:.1f} s: checks of their own connections could fire"
    if expect_failures:
        # Then (negative control) stale checks shut callers' connections down before their INVITE
        assert failed >= CALLS // 2, f"only {failed}/{CALLS} calls failed: {outcomes}"
        assert len(shutdowns) >= failed, shutdowns
        assert set(shutdowns) == {str(int(IDLE_CHECK_S))}, shutdowns  # the check runs at Timer B
    else:
        # Then every call is answered, and the check shut nothing down
        assert outcomes == [True] * CALLS
        assert shutdowns == []
        # ... and watch-peer's own probes, over more than one check period, all went over one connection
        (session,) = RecordingSession.made
        assert session.connections == 1
        assert len(session.results) > (IDLE_CHECK_S + 1.0) / PROBE_INTERVAL_S / 2
        assert all(r.reachable for r in session.results), [r for r in session.results if not r.reachable][:3]
