"""Induced jitter and loss on one hop are what the call record measures for that leg and direction.

This kernel has no ``sch_netem``, so the impairment is made at the source: sipp's ``play_pcap_audio`` replays a
pcap with the pcap's own packet timing, so the carrier's audio (``/usr/share/sip-tester/g711a.pcap``, 236 G.711
A-law packets of 30 ms) is rewritten with each packet's capture time delayed by a seeded random 0-25 ms (RTP
timestamps untouched, order kept: the spacing is 30 ms) and five packets removed (their sequence numbers leave
gaps). The arrival jitter that schedule gives is computed here exactly as Asterisk 22's ``res_rtp_asterisk``
computes it (RFC 3550 A.8, after its 15 ignored packets and one seed packet, skipping a packet that follows a gap),
and the loss is the five packets. Everything else is test_call_records.py's call: carrier → gateway → holder
Asterisk in the test's own namespace.

Tolerance: the record's ``caller_leg.rx.jitter_s`` is within 2 ms + 20 % of the computed jitter (sipp's pacing
and the scheduler add a few hundred microseconds per packet on a loaded machine), and ``caller_leg.rx.lost`` is
exactly 5. The directions that do not carry the carrier's stream (``caller_leg.tx``, ``callee_leg.rx``) lose
nothing and stay under 5 ms of jitter (the holder's own pacing under load). ``callee_leg.tx`` carries the same
stream on toward the agent (the gateway forwards what it receives), so it is printed, not asserted clean.
Negative control: the original pcap, through the same call, measures a jitter below a third of the induced one
and no loss.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from support.asterisk import AsteriskInstance
from test_call_records import PCAP, figures, namespace, one_record, place_call

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk
__all__ = ["namespace"]  # the fixture, imported for the tests below

MAX_DELAY_S = 0.025
DROPPED = (40, 80, 120, 160, 200)  # packet indexes removed: 5 lost
SEED = 20261204
RATE = 8000
IGNORED = 15  # res_rtp_asterisk's RTP_IGNORE_FIRST_PACKETS_COUNT
TOLERANCE_S, TOLERANCE_SHARE = 0.002, 0.20
CLEAN_JITTER_S = 0.005  # the holder Asterisk's own pacing on a loaded 2-core machine reaches a few ms


def _packets(pcap: bytes) -> tuple[bytes, list[tuple[float, bytes]]]:
    header, off, out = pcap[:24], 24, []
    while off < len(pcap):
        sec, usec, incl, _orig = struct.unpack("<IIII", pcap[off : off + 16])
        out.append((sec + usec / 1e6, pcap[off + 16 : off + 16 + incl]))
        off += 16 + incl
    return header, out


def _rtp(frame: bytes) -> tuple[int, int]:
    """(sequence number, timestamp) of an Ethernet/IPv4/UDP/RTP frame."""
    ip_len = (frame[14] & 0x0F) * 4
    seq, ts = struct.unpack("!HI", frame[14 + ip_len + 8 + 2 : 14 + ip_len + 8 + 8])
    return seq, ts


def impaired_pcap(path: Path) -> list[tuple[float, int, int]]:
    """Write the jittered, lossy pcap; return the (send time, seq, ts) of every packet it keeps."""
    header, packets = _packets(PCAP.read_bytes())
    rng = random.Random(SEED)
    start = packets[0][0]
    period = (packets[-1][0] - start) / (len(packets) - 1)  # 30 ms
    kept, body = [], b""
    for n, (_t, frame) in enumerate(packets):
        delay = rng.uniform(0.0, MAX_DELAY_S)
        if n in DROPPED:
            continue
        when = start + n * period + delay
        sec, usec = int(when), round((when - int(when)) * 1e6)
        body += struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame
        kept.append((when, *_rtp(frame)))
    path.write_bytes(header + body)
    return kept


def asterisk_jitter_s(arrivals: list[tuple[float, int, int]]) -> float:
    """The jitter res_rtp_asterisk reports for packets arriving at these times (calc_rxstamp_and_jitter)."""
    jitter = transit_prev = 0.0
    start = 0.0
    prev_seq = None
    for count, (when, seq, ts) in enumerate(arrivals):
        in_sequence = prev_seq is not None and seq == (prev_seq + 1) & 0xFFFF
        prev_seq = seq
        if count < IGNORED:
            continue
        if count == IGNORED:
            start, transit_prev = when, -ts
            continue
        if not in_sequence:
            continue
        transit = int((when - start) * RATE) - ts
        d = abs(transit - transit_prev)
        transit_prev = transit
        jitter += (d - jitter) / 16.0
    return jitter / RATE


@pytest.mark.parametrize("impaired", [True, False], ids=["induced", "negative-control-original-pcap"])
def test_induced_jitter_and_loss_show_on_that_leg_and_direction_only(
    asterisk_factory: AsteriskFactory, tmp_path: Path, namespace: str, impaired: bool
) -> None:
    # Given the carrier's audio replayed with a known jitter and five packets missing (or, the control, as it is)
    pcap = tmp_path / "impaired.pcap"
    arrivals = impaired_pcap(pcap)
    induced = asterisk_jitter_s(arrivals)
    # When the carrier calls the agent through the gateway
    call = place_call(asterisk_factory, tmp_path, namespace, pcap=pcap if impaired else PCAP)
    record = one_record(call)
    caller, callee = record["caller_leg"], record["callee_leg"]
    measured = caller["rx"]["jitter_s"]
    print(f"induced jitter {induced * 1000:.2f} ms, lost {len(DROPPED)}; measured {measured * 1000:.2f} ms, "
          f"lost {caller['rx']['lost']}\n{figures(record)}")  # fmt: skip
    if impaired:
        # Then what the gateway received from the carrier shows the induced jitter within the tolerance, and the loss
        assert abs(measured - induced) <= TOLERANCE_S + TOLERANCE_SHARE * induced, figures(record)
        assert caller["rx"]["lost"] == len(DROPPED), figures(record)
        assert caller["rx"]["packets"] == len(arrivals), figures(record)
    else:
        assert measured < induced / 3, figures(record)
        assert caller["rx"]["lost"] == 0, figures(record)
    # and the directions that do not carry the carrier's stream are clean
    for direction in (caller["tx"], callee["rx"]):
        assert direction["lost"] == 0, figures(record)
        assert direction["jitter_s"] < CLEAN_JITTER_S, figures(record)
