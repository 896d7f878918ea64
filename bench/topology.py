"""The two generators every benchmark puts around the gateway, started one way for all of them.

    carrier (sipp UAC, CARRIER_IP)  --TCP SIP, RTP-->  gateway (GATEWAY_IP)  --TCP SIP, RTP-->  "ElevenLabs" (AGENT_IP)

``start_echo_agent``: the far end for media (a signalling UAS answering each call with the port of one of several
sipp ``-rtp_echo`` processes, so no single-threaded echo saturates). ``start_challenge_agent``: the far end for
signalling (a UAS that challenges every INVITE with a digest 401, as ElevenLabs does, then answers at once).
``start_carrier``: the carrier placing ``calls`` calls at ``rate`` per second to the DID, holding each
``hold_ms``; with ``audio`` it streams that G.711 file in a loop for the whole call."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip_trunk_local.rtp import RtpRange, reserve_rtp_range
from sip_trunk_local.sipp import Sipp, free_port, write_injection

from bench.common import SCENARIOS

GATEWAY_IP = "127.0.1.1"
AGENT_IP = "127.0.1.3"
CARRIER_IP = "127.0.1.5"
CALLS_PER_ECHO = 60  # one single-threaded sipp echo saturates from ~200 calls: stay far below
CODECS = {"ulaw": ("0", "PCMU/8000"), "alaw": ("8", "PCMA/8000"), "g722": ("9", "G722/8000")}


def pin(pids: Sequence[int], cpus: str | None) -> None:
    """Pin every thread of each process to ``cpus`` (a taskset list such as ``0`` or ``1``); threads they
    create later inherit it. ``None`` leaves them where the scheduler puts them."""
    if cpus is None:
        return
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], check=True, capture_output=True, timeout=10)


@dataclass
class Agent:
    """The far end: a signalling UAS plus echo processes (the UAS echoes on the first port itself)."""

    uas: Sipp
    echoes: list[Sipp]
    ports: list[int]
    ranges: list[RtpRange]

    def stop(self) -> dict[str, Any]:
        result = self.uas.stop()
        for echo in self.echoes:
            echo.kill()
        return {"answered": result.successful}

    def pids(self) -> list[int]:
        return [p.process.pid for p in (self.uas, *self.echoes) if p.process is not None]


def start_echo_agent(workdir: Path, calls: int, codec: str) -> tuple[Agent, int]:
    """The media far end for ``calls`` calls answering ``codec``; returns it and its SIP port."""
    count = max(1, math.ceil(calls / CALLS_PER_ECHO))
    reserved = reserve_rtp_range(4 * count + 4)
    base = reserved.low
    ports = [base + 4 * i for i in range(count)]  # sipp also echoes on port + 2
    payload, encoding = CODECS[codec]
    rows = [[str(ports[i % count]), payload, encoding] for i in range(max(calls, count))]
    inject = write_injection(workdir / "agent.csv", rows)
    agent_port = free_port(AGENT_IP)
    echoes = []
    for i, port in enumerate(ports[1:], start=1):
        echoes.append(
            Sipp(
                SCENARIOS / "echo_idle.xml",
                workdir / f"echo{i}",
                transport="u1",
                local_ip=AGENT_IP,
                local_port=free_port(AGENT_IP),
                media_port=port,
                rtp_echo=True,
                calls=None,
                trace_messages=False,
            ).start()
        )
    uas = Sipp(
        SCENARIOS / "agent_uas_echo.xml",
        workdir / "agent",
        transport="t1",
        local_ip=AGENT_IP,
        local_port=agent_port,
        media_port=ports[0],
        rtp_echo=True,
        inject=inject,
        calls=None,
        trace_messages=False,
    ).start()
    return Agent(uas=uas, echoes=echoes, ports=ports, ranges=[reserved]), agent_port


def start_challenge_agent(workdir: Path, calls: int, *, timeout_s: float) -> tuple[Sipp, int]:
    """The signalling far end: challenges each INVITE with a digest 401, answers the authenticated one at once,
    traces every message; returns it and its SIP port."""
    agent_port = free_port(AGENT_IP)
    agent = Sipp(
        SCENARIOS / "agent_uas_challenge.xml",
        workdir / "agent",
        transport="t1",
        local_ip=AGENT_IP,
        local_port=agent_port,
        calls=calls,
        extra_args=["-aa"],
        global_timeout_s=timeout_s,
    ).start()
    return agent, agent_port


def carrier_scenario(workdir: Path, audio: Path, payload: str) -> Path:
    text = (SCENARIOS / "carrier_uac_stream.xml").read_text()
    path = workdir / "carrier_uac_stream.xml"
    path.write_text(text.replace("@AUDIO_FILE@", str(audio)).replace("@PAYLOAD@", payload))
    return path


def start_carrier(
    workdir: Path,
    *,
    sip_port: int,
    e164: str,
    calls: int,
    rate: float,
    hold_ms: int,
    timeout_s: float,
    audio: Path | None = None,
    codec: str = "ulaw",
    media_port: int | None = None,
) -> Sipp:
    """The carrier: ``calls`` calls to ``e164`` at ``rate`` per second, at most ``calls`` at once, each held
    ``hold_ms``. With ``audio`` it streams the file in a loop (``codec``, RTP from ``media_port``) and traces
    no messages; without, it places short signalling-only calls and traces every message."""
    common: dict[str, Any] = {
        "remote": f"{GATEWAY_IP}:{sip_port}",
        "transport": "t1",
        "local_ip": CARRIER_IP,
        "service": e164,
        "calls": calls,
        "rate": rate,
        "limit": calls,
        "duration_ms": hold_ms,
        "global_timeout_s": timeout_s,
    }
    if audio is None:
        return Sipp(SCENARIOS / "carrier_uac_short.xml", workdir / "carrier", **common).start()
    payload, encoding = CODECS[codec]
    return Sipp(
        carrier_scenario(workdir, audio, payload),
        workdir / "carrier",
        media_port=media_port,
        keys={"payload": payload, "encoding": encoding},
        trace_messages=False,
        **common,
    ).start()
