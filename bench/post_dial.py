"""Post-dial delay the gateway adds: carrier INVITE in → INVITE out to the agent (and, after the agent's
digest challenge, the authenticated INVITE), and the agent's 200 OK → the 200 OK to the carrier.

The rendered product config (examples/minimal, the capacity topology on loopback), a sipp carrier placing short
calls at a fixed rate, and a sipp agent at the ElevenLabs host name (resolved from the gateway's hosts file, as
every call resolves it) that challenges every INVITE with 401, as ElevenLabs does, then answers at once. Both
sipps trace every message with the time they logged it (one clock: the same machine); the two legs of a call
are joined by the caller number (``+4420<call number>``), which reaches the agent as ``X-CALLER-ID``. The rate
is ramped until a call fails or the top rate is reached.

Method error: sipp stamps a message when its event loop handles it, so each figure carries up to about one
scheduler tick of each sipp (``1 ms scheduler resolution``) on top of the gateway's own time; the figures are the
gateway's time plus that error, never less.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sip_trunk_local.rtp import reserve_rtp_range
from sip_trunk_local.sipp import TracedMessage, free_port, traced_messages

from bench.capacity import start_gateway
from bench.topology import GATEWAY_IP, start_carrier, start_challenge_agent
from bench.variants import RENDERED

FULL_RATES = (5, 10, 20, 40, 80)
QUICK_RATES = (5, 10)
FULL_CALLS = 200
QUICK_CALLS = 30
HOLD_MS = 1000
GOAL_P99_MS = 5.0


@dataclass(frozen=True)
class CallTimes:
    """The gateway's added time on one call, in milliseconds."""

    invite: float  # carrier INVITE sent → agent received the first INVITE
    challenge: float  # agent sent 401 → agent received the authenticated INVITE
    answer: float  # agent sent 200 → carrier received 200
    ringback: float | None  # carrier INVITE sent → carrier received 180 (dead air before ringback)

    @property
    def invite_hop(self) -> float:
        """The INVITE's way through the gateway, its digest challenge included."""
        return self.invite + self.challenge

    @property
    def added(self) -> float:
        return self.invite_hop + self.answer


def _ms(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return (later - earlier).total_seconds() * 1000.0


def _calls(messages: Sequence[TracedMessage]) -> dict[str, list[TracedMessage]]:
    by_call: dict[str, list[TracedMessage]] = {}
    for message in messages:
        found = re.search(r"^Call-ID: *(\S+)", message.text, re.MULTILINE | re.IGNORECASE)
        if found:
            by_call.setdefault(found.group(1), []).append(message)
    return by_call


def _first(messages: Sequence[TracedMessage], received: bool, pattern: str) -> TracedMessage | None:
    regex = re.compile(pattern)
    return next((m for m in messages if m.received is received and regex.match(m.text)), None)


def _caller(text: str, header: str) -> str | None:
    found = re.search(rf"^{header}: *<?sip:(\+?\d+)@|^{header}: *(\+?\d+)\s*$", text, re.MULTILINE | re.IGNORECASE)
    return (found.group(1) or found.group(2)) if found else None


def join_legs(carrier_trace: str, agent_trace: str) -> list[CallTimes]:
    """Per call, the gateway's added times, from the carrier's and the agent's message traces."""
    carrier_by_number: dict[str, list[TracedMessage]] = {}
    for messages in _calls(traced_messages(carrier_trace)).values():
        invite = _first(messages, False, r"INVITE sip:")
        number = _caller(invite.text, "From") if invite else None
        if number:
            carrier_by_number[number] = messages
    times: list[CallTimes] = []
    agent_by_call: dict[str, list[TracedMessage]] = {}
    for messages in _calls(traced_messages(agent_trace)).values():
        invite = _first(messages, True, r"INVITE sip:")
        number = _caller(invite.text, "X-CALLER-ID") if invite else None
        if number:
            agent_by_call.setdefault(number, []).extend(messages)
    for number, agent in agent_by_call.items():
        carrier = carrier_by_number.get(number)
        if carrier is None:
            continue
        invites = [m for m in agent if m.received and m.text.startswith("INVITE sip:")]
        challenge = _first(agent, False, r"SIP/2\.0 401")
        answer = next(
            (m for m in agent if not m.received and m.text.startswith("SIP/2.0 200") and "INVITE" in m.text), None
        )
        sent = _first(carrier, False, r"INVITE sip:")
        answered = next(
            (m for m in carrier if m.received and m.text.startswith("SIP/2.0 200") and "CSeq: 1 INVITE" in m.text), None
        )
        ringing = _first(carrier, True, r"SIP/2\.0 180")
        if len(invites) < 2 or None in (challenge, answer, sent, answered):
            continue
        parts = (
            _ms(invites[0].logged_at, sent.logged_at if sent else None),
            _ms(invites[1].logged_at, challenge.logged_at if challenge else None),
            _ms(answered.logged_at if answered else None, answer.logged_at if answer else None),
        )
        if any(p is None for p in parts):
            continue
        invite_ms, challenge_ms, answer_ms = (float(p) for p in parts if p is not None)
        times.append(
            CallTimes(
                invite_ms,
                challenge_ms,
                answer_ms,
                _ms(ringing.logged_at if ringing else None, sent.logged_at if sent else None),
            )
        )
    return times


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else [ordered[0]] * 99
    return {"p50": round(q[49], 3), "p99": round(q[98], 3), "max": round(ordered[-1], 3)}


def summarize(times: Sequence[CallTimes]) -> dict[str, Any]:
    ringback = [t.ringback for t in times if t.ringback is not None]
    return {
        "calls_measured": len(times),
        "invite_ms": _percentiles([t.invite for t in times]),
        "challenge_ms": _percentiles([t.challenge for t in times]),
        "invite_hop_ms": _percentiles([t.invite_hop for t in times]),
        "answer_ms": _percentiles([t.answer for t in times]),
        "added_ms": _percentiles([t.added for t in times]),
        "ringback_ms": _percentiles(ringback),
    }


def run_rate(root: Path, workdir: Path, rate: float, calls: int, *, log: Callable[[str], None]) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    agent, agent_port = start_challenge_agent(workdir, calls, timeout_s=calls / rate + 60)
    gateway = carrier = None
    try:
        rtp = reserve_rtp_range(max(200, 4 * calls))
        sip_port = free_port(GATEWAY_IP)
        gateway, e164 = start_gateway(
            root, workdir, f"bench-pdd-{rate:g}", RENDERED, sip_port=sip_port, rtp=rtp.ports, agent_port=agent_port
        )
        carrier = start_carrier(
            workdir,
            sip_port=sip_port,
            e164=e164,
            calls=calls,
            rate=rate,
            hold_ms=HOLD_MS,
            timeout_s=calls / rate + 60,
        )
        result = carrier.wait(timeout=calls / rate + 90)
        agent_result = agent.wait(timeout=30)
        times = join_legs(result.messages, agent_result.messages)
        out = {
            "rate_cps": rate,
            "calls": calls,
            "successful": result.successful,
            "failed": result.failed,
            "agent_successful": agent_result.successful,
            **summarize(times),
        }
        log(
            f"  {rate:g} calls/s: {result.successful}/{calls} ok, added p50 {out['added_ms']['p50']} ms, "
            f"p99 {out['added_ms']['p99']} ms (INVITE {out['invite_ms']['p99']}, "
            f"challenge {out['challenge_ms']['p99']}, 200 {out['answer_ms']['p99']}), "
            f"ringback p99 {out['ringback_ms']['p99']} ms"
        )
        rtp.release()
        return out
    finally:
        if carrier is not None:
            carrier.kill()
        agent.kill()
        if gateway is not None:
            gateway.stop()


def run(root: Path, workdir: Path, *, quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    rates = QUICK_RATES if quick else FULL_RATES
    calls = QUICK_CALLS if quick else FULL_CALLS
    levels: list[dict[str, Any]] = []
    for rate in rates:
        level = run_rate(root, workdir / f"rate-{rate}", rate, calls, log=log)
        levels.append(level)
        if level["failed"] or level["successful"] != calls:
            break
    passing = [lvl for lvl in levels if not lvl["failed"] and lvl["successful"] == calls]
    top = passing[-1] if passing else None
    return {
        "method": "sipp message-trace timestamps on both sides of the gateway, one clock; error up to ~1 ms per side",
        "hold_ms": HOLD_MS,
        "levels": levels,
        "highest_passing_rate_cps": top["rate_cps"] if top else None,
        "invite_hop_p99_ms": top["invite_hop_ms"]["p99"] if top else None,
        "answer_hop_p99_ms": top["answer_ms"]["p99"] if top else None,
        "ringback_p99_ms": top["ringback_ms"]["p99"] if top else None,
        "goal_p99_ms_per_hop": GOAL_P99_MS,
    }
