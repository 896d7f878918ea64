"""The delay and jitter the gateway adds to every media packet, per direction (the pure part).

Method. Packets are captured on loopback with an ``AF_PACKET`` socket (bench/capture.py) and kernel timestamps
(``SO_TIMESTAMPNS``), keeping only the **outgoing** copy of each frame: the kernel stamps it when the sender's
``sendto`` hands the frame to the loopback device. A packet entering the gateway is stamped when the carrier (or the
agent's echo) sends it, the same audio leaving the gateway when Asterisk sends it; the difference is the gateway's
whole share — the kernel's delivery to Asterisk's socket, Asterisk's wake-up, its relay, its ``sendto``.

Asterisk rewrites SSRC, sequence numbers and timestamps when it relays, so packets are matched by a **marker in the
payload**: the carrier's audio carries each frame's index in its first two bytes (``marked_audio``), unique within
the loop (7 s), which the G.711 relay (``native_rtp``) and the echo pass through untouched. Several calls play the
same loop at different phases, so each outgoing flow is first paired with the incoming flow whose packets precede
it most often (``pair_flows``), then packets are matched within the pair (``match``).

Control. The agent's echo (one sipp ``-rtp_echo``, no gateway) is a relay measured by the same capture in the same
run: gateway → echo → gateway. Its delay is what the method plus a minimal user-space relay on this machine, under
this load, report; the gateway's figures are read next to it.

Jitter: RFC 3550 interarrival jitter of each flow (``J += (|D| - J) / 16``, RTP clock 8 kHz), computed at the tap
for the stream entering the gateway and for the same call's stream leaving it; added jitter = out - in."""

from __future__ import annotations

import bisect
import statistics
import struct
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

Endpoint = tuple[str, int]
Flow = tuple[Endpoint, Endpoint]

LINK_HEADER = 14  # loopback frames carry an all-zero Ethernet header
RECORD = struct.Struct("<qH")  # capture record: timestamp ns, frame length; then the frame bytes
MARK_MAGIC = 0xD5  # first payload byte of a marked frame (u-law: a quiet sample)
RTP_CLOCK_HZ = 8000
NS_PER_MS = 1_000_000
MAX_DELAY_NS = 2000 * NS_PER_MS  # a relayed packet later than this counts as unmatched (the loop is 7 s long)
CURVE_PERMILLE = (100, 250, 500, 750, 900, 950, 990, 995, 999)  # the distribution kept for the plots


@dataclass(frozen=True)
class Packet:
    t_ns: int
    src: Endpoint
    dst: Endpoint
    seq: int
    ts: int
    ssrc: int
    mark: int | None

    @property
    def flow(self) -> Flow:
        return (self.src, self.dst)


def parse_frame(t_ns: int, frame: bytes) -> Packet | None:
    """An RTP packet from a loopback frame (Ethernet + IPv4 + UDP + RTP), or ``None`` for anything else."""
    ip = frame[LINK_HEADER:]
    if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    ihl = (ip[0] & 0x0F) * 4
    udp = ip[ihl:]
    if len(udp) < 8 + 12:
        return None
    rtp = udp[8:]
    if rtp[0] >> 6 != 2:
        return None
    header = 12 + 4 * (rtp[0] & 0x0F)
    payload = rtp[header:]
    src = (".".join(str(b) for b in ip[12:16]), struct.unpack(">H", udp[0:2])[0])
    dst = (".".join(str(b) for b in ip[16:20]), struct.unpack(">H", udp[2:4])[0])
    seq, ts, ssrc = struct.unpack(">HII", rtp[2:12])
    mark = struct.unpack(">H", payload[1:3])[0] if len(payload) >= 3 and payload[0] == MARK_MAGIC else None
    return Packet(t_ns, src, dst, seq, ts, ssrc, mark)


def read_records(data: bytes) -> list[Packet]:
    """The packets of a capture file written by bench/capture.py."""
    out: list[Packet] = []
    pos = 0
    while pos + RECORD.size <= len(data):
        t_ns, length = RECORD.unpack_from(data, pos)
        pos += RECORD.size
        pkt = parse_frame(t_ns, data[pos : pos + length])
        pos += length
        if pkt is not None:
            out.append(pkt)
    return out


def marked_audio(audio: bytes, frame: int = 160) -> bytes:
    """``audio`` with each ``frame``-byte packet's first three bytes replaced by the magic and its index."""
    frames = len(audio) // frame
    if frames > 0xFFFF:
        raise ValueError("too many frames to index in two bytes")
    out = bytearray(audio[: frames * frame])
    for k in range(frames):
        out[k * frame : k * frame + 3] = bytes([MARK_MAGIC]) + struct.pack(">H", k)
    return bytes(out)


def _in_index(ins: Sequence[Packet]) -> dict[Flow, dict[int, list[int]]]:
    """Incoming packets' times per flow and marker, sorted."""
    index: dict[Flow, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for p in ins:
        if p.mark is not None:
            index[p.flow][p.mark].append(p.t_ns)
    for marks in index.values():
        for times in marks.values():
            times.sort()
    return index


def _delays(outs: Sequence[Packet], marks: dict[int, list[int]], max_delay_ns: int) -> tuple[list[int], int]:
    """Each outgoing packet's delay after the latest incoming packet with its marker (at most ``max_delay_ns``
    before, each incoming packet used once); and how many found none."""
    used: set[int] = set()
    delays: list[int] = []
    missing = 0
    for o in sorted(outs, key=lambda p: p.t_ns):
        times = marks.get(o.mark, []) if o.mark is not None else []
        i = bisect.bisect_right(times, o.t_ns) - 1
        if i < 0 or o.t_ns - times[i] > max_delay_ns or times[i] in used:
            missing += 1
            continue
        used.add(times[i])
        delays.append(o.t_ns - times[i])
    return delays, missing


def _iqr(values: list[int]) -> float:
    if len(values) < 4:
        return float("inf")
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def pair_flows(ins: Sequence[Packet], outs: Sequence[Packet], max_delay_ns: int) -> dict[Flow, Flow]:
    """Out flow -> the in flow it relays.

    Candidates: every in flow that sent an outgoing packet's marker at most ``max_delay_ns`` before it, for at least
    80 % of the most frequent candidate's count. Two calls whose loops run almost in phase are both candidates and
    give the same typical delay, but only the right one gives a **steady** delay: the wrong one adds the two calls'
    independent send-time jitter. So each candidate pair is scored by the interquartile range of its delays (then
    its median), and flows are paired one to one, best score first."""
    entries: dict[int, list[tuple[int, Flow]]] = defaultdict(list)
    for p in ins:
        if p.mark is not None:
            entries[p.mark].append((p.t_ns, p.flow))
    by_mark: dict[int, tuple[list[int], list[Flow]]] = {}
    for mark, lst in entries.items():
        lst.sort()
        by_mark[mark] = ([t for t, _ in lst], [f for _, f in lst])
    votes: dict[Flow, Counter[Flow]] = defaultdict(Counter)
    out_by_flow: dict[Flow, list[Packet]] = defaultdict(list)
    for o in outs:
        out_by_flow[o.flow].append(o)
        if o.mark is None or o.mark not in by_mark:
            continue
        times, flows = by_mark[o.mark]
        i = bisect.bisect_right(times, o.t_ns) - 1
        seen: set[Flow] = set()
        while i >= 0 and o.t_ns - times[i] <= max_delay_ns:
            if flows[i] not in seen:
                seen.add(flows[i])
                votes[o.flow][flows[i]] += 1
            i -= 1
    index = _in_index(ins)
    scored: list[tuple[float, float, Flow, Flow]] = []
    for fout, counter in votes.items():
        top = max(counter.values())
        for fin, n in counter.items():
            if n < 0.8 * top:
                continue
            delays, _missing = _delays(out_by_flow[fout], index[fin], max_delay_ns)
            median = statistics.median(delays) if delays else float("inf")
            scored.append((_iqr(delays), median, fout, fin))
    pairs: dict[Flow, Flow] = {}
    used: set[Flow] = set()
    for _iqr_ns, _median, fout, fin in sorted(scored):
        if fout in pairs or fin in used:
            continue
        pairs[fout] = fin
        used.add(fin)
    return pairs


@dataclass(frozen=True)
class Matched:
    flow_in: Flow
    flow_out: Flow
    delays_ns: list[int]
    unmatched_out: int


def match(ins: Sequence[Packet], outs: Sequence[Packet], max_delay_ns: int = MAX_DELAY_NS) -> list[Matched]:
    """Per paired flow, each outgoing packet's delay after the incoming packet with its marker (the latest one at
    most ``max_delay_ns`` before it, each incoming packet used once)."""
    pairs = pair_flows(ins, outs, max_delay_ns)
    index = _in_index(ins)
    out_by_flow: dict[Flow, list[Packet]] = defaultdict(list)
    for o in outs:
        out_by_flow[o.flow].append(o)
    result: list[Matched] = []
    for fout, fin in sorted(pairs.items()):
        delays, missing = _delays(out_by_flow[fout], index[fin], max_delay_ns)
        result.append(Matched(fin, fout, delays, missing))
    return result


def rfc3550_jitter(packets: Iterable[Packet], clock_hz: int = RTP_CLOCK_HZ) -> float | None:
    """RFC 3550 §6.4.1 interarrival jitter of one stream, in milliseconds, over packets in arrival order
    (``D = (R_j - R_i) - (S_j - S_i)``, ``J += (|D| - J) / 16``); RTP timestamps wrap at 2**32."""
    ordered = sorted(packets, key=lambda p: p.t_ns)
    if len(ordered) < 2:
        return None
    jitter = 0.0
    prev = ordered[0]
    for p in ordered[1:]:
        transit_units = (p.t_ns - prev.t_ns) * clock_hz / 1e9
        ts_units = ((p.ts - prev.ts + 2**31) % 2**32) - 2**31
        d = transit_units - ts_units
        jitter += (abs(d) - jitter) / 16
        prev = p
    return jitter * 1000 / clock_hz


def quantiles_ms(values_ns: Sequence[int]) -> dict[str, Any]:
    """p50/p99/p99.9/max of delays in milliseconds (inclusive method; ``None`` when empty)."""
    if not values_ns:
        return {"packets": 0, "p50": None, "p99": None, "p99_9": None, "max": None, "curve": []}
    ordered = sorted(values_ns)
    q = [float(ordered[0])] * 999 if len(ordered) == 1 else statistics.quantiles(ordered, n=1000, method="inclusive")
    ms = NS_PER_MS
    return {
        "packets": len(ordered),
        "p50": round(q[499] / ms, 4),
        "p99": round(q[989] / ms, 4),
        "p99_9": round(q[998] / ms, 4),
        "max": round(ordered[-1] / ms, 4),
        "curve": [[f / 1000, round(q[f - 1] / ms, 4)] for f in CURVE_PERMILLE],
    }


def hop(packets: Sequence[Packet], src_ip: str, dst_ip: str) -> list[Packet]:
    return [p for p in packets if p.src[0] == src_ip and p.dst[0] == dst_ip]


def relay_figures(ins: Sequence[Packet], outs: Sequence[Packet]) -> dict[str, object]:
    """Added delay (all matched packets) and added jitter (per call: out flow's jitter - in flow's)."""
    matched = match(ins, outs)
    delays = [d for m in matched for d in m.delays_ns]
    in_flows: dict[Flow, list[Packet]] = defaultdict(list)
    out_flows: dict[Flow, list[Packet]] = defaultdict(list)
    for p in ins:
        in_flows[p.flow].append(p)
    for p in outs:
        out_flows[p.flow].append(p)
    j_in: list[float] = []
    j_out: list[float] = []
    added: list[float] = []
    for m in matched:
        a, b = rfc3550_jitter(in_flows[m.flow_in]), rfc3550_jitter(out_flows[m.flow_out])
        if a is not None and b is not None:
            j_in.append(a)
            j_out.append(b)
            added.append(b - a)

    def q(vals: list[float]) -> dict[str, float | None]:
        if not vals:
            return {"median": None, "p99": None, "max": None}
        s = sorted(vals)
        p99 = statistics.quantiles(s, n=100, method="inclusive")[98] if len(s) > 1 else s[0]
        return {"median": round(statistics.median(s), 4), "p99": round(p99, 4), "max": round(s[-1], 4)}

    return {
        "calls_paired": len(matched),
        "packets_in": len(ins),
        "packets_out": len(outs),
        "unmatched_out": sum(m.unmatched_out for m in matched),
        "unmatched_pct": round(100 * sum(m.unmatched_out for m in matched) / len(outs), 3) if outs else None,
        "delay_ms": quantiles_ms(delays),
        "jitter_in_ms": q(j_in),
        "jitter_out_ms": q(j_out),
        "added_jitter_ms": q(added),
    }


def analyse(packets: Sequence[Packet], *, carrier_ip: str, gateway_ip: str, agent_ip: str) -> dict[str, object]:
    """Per direction through the gateway, and the no-gateway control (the agent's echo), from one capture."""
    c_to_g, g_to_a = hop(packets, carrier_ip, gateway_ip), hop(packets, gateway_ip, agent_ip)
    a_to_g, g_to_c = hop(packets, agent_ip, gateway_ip), hop(packets, gateway_ip, carrier_ip)
    return {
        "to_agent": relay_figures(c_to_g, g_to_a),
        "to_carrier": relay_figures(a_to_g, g_to_c),
        "control_echo": relay_figures(g_to_a, a_to_g),
    }
