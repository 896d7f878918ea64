"""``watch-peer``: the standby probes the primary with SIP OPTIONS and starts the Failover state machine.

One lost probe is not an outage: only ``failures`` consecutive probes without a final SIP response (any status
code counts as alive) start an execution. The execution name is derived from the target and the time the
failure streak began, so a retry within one outage is idempotent (``ExecutionAlreadyExists`` is success), and
the watcher does not trigger again until the peer has answered once more.

By default every probe goes over one kept TCP/TLS connection (`OptionsSession`, ADR-31): a new connection per
probe every second or so makes the primary's Asterisk shut down callers' fresh connections (see there).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sip_trunk.sip import OptionsSession, ProbeResult, ProbeTarget, Transport

log = logging.getLogger(__name__)

Prober = Callable[[ProbeTarget, float], ProbeResult]


@dataclass
class WatchState:
    probes: int = 0
    consecutive_failures: int = 0
    streak_started_at: float | None = None
    triggered: bool = False
    executions: list[str] = field(default_factory=list)
    history: list[bool] = field(default_factory=list)


def execution_name(target: ProbeTarget, streak_started_at: float) -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", target.host)
    return f"peer-down-{host}-{target.effective_port}-{int(streak_started_at)}"[:80]


def watch_peer(
    target: ProbeTarget,
    *,
    interval_s: float,
    failures: int,
    timeout_s: float,
    sfn: Any,
    state_machine_arn: str | None,
    instance_id: str,
    max_probes: int | None = None,
    prober: Prober | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> WatchState:
    """Probe ``target`` every ``interval_s`` until ``max_probes`` (forever by default).

    Without ``prober`` the probes share one kept connection (self-signed peers accepted: the standby checks
    liveness, not identity), closed when the watcher returns or raises.
    """
    if failures < 1:
        raise ValueError("--failures must be at least 1")
    session: OptionsSession | None = None
    if prober is None:
        session = OptionsSession(target, verify=False)
        prober = _session_prober(session)
    try:
        state = WatchState()
        while max_probes is None or state.probes < max_probes:
            started = time.monotonic()
            result = prober(target, timeout_s)
            state.probes += 1
            alive = result.reachable
            state.history.append(alive)
            if alive:
                if state.consecutive_failures:
                    log.info("peer %s answers again (%s)", target.host, result.status_code)
                state.consecutive_failures, state.streak_started_at, state.triggered = 0, None, False
            else:
                if state.consecutive_failures == 0:
                    state.streak_started_at = clock()
                state.consecutive_failures += 1
                log.warning(
                    "peer %s: probe failed (%s/%s): %s %s",
                    target.host,
                    state.consecutive_failures,
                    failures,
                    result.error,
                    result.detail,
                )
                if state.consecutive_failures >= failures and not state.triggered:
                    name = execution_name(target, state.streak_started_at or clock())
                    state.triggered = True
                    if _start(sfn, state_machine_arn, name, target, state, instance_id):
                        state.executions.append(name)
            if max_probes is not None and state.probes >= max_probes:
                break
            sleep(max(0.0, interval_s - (time.monotonic() - started)))
    finally:
        if session is not None:
            session.close()
    return state


def _session_prober(session: OptionsSession) -> Prober:
    def probe(_target: ProbeTarget, timeout_s: float) -> ProbeResult:
        return session.probe(timeout_s)

    return probe


def _start(sfn: Any, arn: str | None, name: str, target: ProbeTarget, state: WatchState, instance_id: str) -> bool:
    if not arn:
        log.error("peer down but no failover state machine configured (--failover-state-machine-arn)")
        return False
    payload = {
        "source": "watch-peer",
        "reporter_instance_id": instance_id,
        "target": {"host": target.host, "port": target.effective_port, "transport": str(target.transport)},
        "consecutive_failures": state.consecutive_failures,
        "streak_started_at": state.streak_started_at,
    }
    try:
        sfn.start_execution(stateMachineArn=arn, name=name, input=json.dumps(payload, sort_keys=True))
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") != "ExecutionAlreadyExists":
            raise
    log.error("peer %s down after %s probes: started failover %s", target.host, state.consecutive_failures, name)
    return True


def parse_target(value: str, transport: str, port: int | None) -> ProbeTarget:
    return ProbeTarget(host=value, port=port, transport=Transport(transport))
