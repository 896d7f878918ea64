"""The pure parts of the media-delay benchmark (bench/media_delay.py, bench/capture.py's filter): frames are parsed
into RTP packets with their payload marker, relayed packets are matched to the packets they relay although the
relay rewrote SSRC, sequence numbers and timestamps and several calls play the same marked loop, and RFC 3550
interarrival jitter is computed as the RFC defines it.

Negative controls: ``test_flows_are_paired_by_marker_not_by_time`` fails when the pairing takes the latest incoming
packet with the marker (call phases 1 ms apart and a 3 ms relay: that is the other call's) instead of the candidate
with the steadiest delay;
``test_jitter_of_a_perfectly_paced_stream_is_zero`` and ``test_jitter_follows_rfc3550`` fail with a jitter that
forgets the 1/16 gain or the RTP clock."""

from __future__ import annotations

import random
import struct

import pytest

from bench.capture import PACKET_OUTGOING, bpf_program
from bench.media_delay import (
    MARK_MAGIC,
    NS_PER_MS,
    RECORD,
    Packet,
    analyse,
    marked_audio,
    match,
    pair_flows,
    parse_frame,
    quantiles_ms,
    read_records,
    rfc3550_jitter,
)

pytestmark = pytest.mark.unit

CARRIER, GATEWAY, AGENT = "127.0.1.5", "127.0.1.1", "127.0.1.3"


def frame(src: tuple[str, int], dst: tuple[str, int], seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    rtp = struct.pack(">BBHII", 0x80, 0, seq, ts, ssrc) + payload
    udp = struct.pack(">HHHH", src[1], dst[1], 8 + len(rtp), 0) + rtp
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, _ip(src[0]), _ip(dst[0])) + udp
    return bytes(14) + ip


def _ip(text: str) -> bytes:
    return bytes(int(x) for x in text.split("."))


def pkt(t_ms: float, src: tuple[str, int], dst: tuple[str, int], mark: int, seq: int = 0, ts: int = 0) -> Packet:
    return Packet(int(t_ms * NS_PER_MS), src, dst, seq, ts, 1, mark)


def test_a_frame_parses_into_its_addresses_rtp_fields_and_marker() -> None:
    payload = marked_audio(bytes(range(160)) * 3)[160:320]
    p = parse_frame(42, frame((CARRIER, 4000), (GATEWAY, 20000), 7, 1120, 0xABCD, payload))
    assert p == Packet(42, (CARRIER, 4000), (GATEWAY, 20000), 7, 1120, 0xABCD, 1)


def test_unmarked_payloads_and_non_rtp_frames_are_told_apart() -> None:
    plain = parse_frame(0, frame((CARRIER, 1), (GATEWAY, 2), 0, 0, 0, bytes(160)))
    assert plain is not None
    assert plain.mark is None
    assert parse_frame(0, bytes(14) + b"\x60" + bytes(40)) is None  # IPv6
    assert parse_frame(0, bytes(30)) is None


def test_records_round_trip_through_the_capture_format() -> None:
    f1 = frame((CARRIER, 1), (GATEWAY, 2), 0, 0, 0, marked_audio(bytes(160)))
    data = RECORD.pack(5, len(f1)) + f1 + RECORD.pack(9, len(f1)) + f1
    assert [p.t_ns for p in read_records(data)] == [5, 9]


def test_marked_audio_indexes_every_frame_and_keeps_the_rest() -> None:
    audio = bytes([0x7F]) * 160 * 4 + b"tail"
    out = marked_audio(audio)
    assert len(out) == 640
    for k in range(4):
        assert out[k * 160] == MARK_MAGIC
        assert struct.unpack(">H", out[k * 160 + 1 : k * 160 + 3])[0] == k
        assert out[k * 160 + 3 : (k + 1) * 160] == bytes([0x7F]) * 157


def _calls(
    delay_ms: float, phases_ms: list[float], frames: int = 50, send_jitter_ms: float = 0.0
) -> tuple[list[Packet], list[Packet]]:
    """Several calls playing the same loop (marker k at phase + 20 k ms, each packet sent up to ``send_jitter_ms``
    late, independently per call); the relay adds ``delay_ms`` and rewrites the RTP fields (seq, ts)."""
    rng = random.Random(7)
    ins, outs = [], []
    for c, phase in enumerate(phases_ms):
        for k in range(frames):
            t = phase + 20 * k + rng.uniform(0, send_jitter_ms)
            ins.append(pkt(t, (CARRIER, 4000 + c), (GATEWAY, 20000 + 2 * c), k, seq=k, ts=160 * k))
            outs.append(pkt(t + delay_ms, (GATEWAY, 30000 + 2 * c), (AGENT, 6000), k, seq=900 + k, ts=5000 + 160 * k))
    return ins, outs


def test_flows_are_paired_by_marker_not_by_time() -> None:
    # call 1 starts 1 ms after call 0 and the relay takes 3 ms: the latest incoming packet with the same marker
    # before each of call 0's outgoing packets is call 1's; only the steadiness of the delay tells them apart
    ins, outs = _calls(3.0, [0.0, 1.0, 7.0], send_jitter_ms=2.0)
    pairs = pair_flows(ins, outs, max_delay_ns=200 * NS_PER_MS)
    assert pairs == {
        ((GATEWAY, 30000 + 2 * c), (AGENT, 6000)): ((CARRIER, 4000 + c), (GATEWAY, 20000 + 2 * c)) for c in range(3)
    }


def test_every_relayed_packet_gets_its_own_delay() -> None:
    ins, outs = _calls(0.25, [0.0, 20.0, 40.0])  # phases a whole frame apart: the same marker 20 ms apart
    matched = match(ins, outs)
    assert len(matched) == 3
    assert all(m.unmatched_out == 0 for m in matched)
    assert {d for m in matched for d in m.delays_ns} == {250_000}


def test_a_lost_incoming_packet_leaves_its_relayed_twin_unmatched() -> None:
    ins, outs = _calls(0.5, [0.0])
    matched = match([p for p in ins if p.mark != 10], outs)
    assert matched[0].unmatched_out == 1
    assert len(matched[0].delays_ns) == 49


def test_jitter_of_a_perfectly_paced_stream_is_zero() -> None:
    stream = [pkt(20 * k, (CARRIER, 1), (GATEWAY, 2), k, ts=160 * k) for k in range(100)]
    assert rfc3550_jitter(stream) == pytest.approx(0.0)


def test_jitter_follows_rfc3550() -> None:
    # arrivals alternate 1 ms late / on time: |D| = 1 ms = 8 timestamp units every packet after the first
    stream = [pkt(20 * k + (1 if k % 2 else 0), (CARRIER, 1), (GATEWAY, 2), k, ts=160 * k) for k in range(3)]
    expected = 0.0
    for _ in range(2):
        expected += (8 - expected) / 16
    assert rfc3550_jitter(stream) == pytest.approx(expected / 8)  # in ms
    assert rfc3550_jitter(stream[:1]) is None


def test_jitter_survives_a_timestamp_wrap() -> None:
    base = 2**32 - 320
    stream = [pkt(20 * k, (CARRIER, 1), (GATEWAY, 2), k, ts=(base + 160 * k) % 2**32) for k in range(6)]
    assert rfc3550_jitter(stream) == pytest.approx(0.0)


def test_quantiles_in_milliseconds() -> None:
    q = quantiles_ms([k * 1000 for k in range(1, 1001)])  # 1 µs .. 1 ms
    assert q["packets"] == 1000
    assert q["p50"] == pytest.approx(0.5005, abs=1e-3)
    assert q["p99"] == pytest.approx(0.99, abs=2e-3)
    assert q["max"] == 1.0
    assert quantiles_ms([])["p99"] is None


def test_analyse_reports_both_directions_and_the_echo_control() -> None:
    fwd_in, fwd_out = _calls(0.3, [0.0, 5.0])
    echo = [pkt(p.t_ns / NS_PER_MS + 0.1, (AGENT, 6000), (GATEWAY, p.src[1]), p.mark or 0) for p in fwd_out]
    back = [pkt(p.t_ns / NS_PER_MS + 0.2, (GATEWAY, p.dst[1] - 10000), (CARRIER, 9000), p.mark or 0) for p in echo]
    out = analyse([*fwd_in, *fwd_out, *echo, *back], carrier_ip=CARRIER, gateway_ip=GATEWAY, agent_ip=AGENT)
    assert out["to_agent"]["delay_ms"]["p50"] == pytest.approx(0.3)  # type: ignore[index]
    assert out["control_echo"]["delay_ms"]["p50"] == pytest.approx(0.1)  # type: ignore[index]
    assert out["to_carrier"]["delay_ms"]["p50"] == pytest.approx(0.2)  # type: ignore[index]
    assert out["to_agent"]["calls_paired"] == 2  # type: ignore[index]


def _run_bpf(prog: list[tuple[int, int, int, int]], pkttype: int, data: bytes) -> int:
    """A tiny classic-BPF interpreter for the instructions the capture uses (ld b/h abs, jeq k, ret k)."""
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x30:
            acc = pkttype if k == 0xFFFFF004 else data[k]
        elif code == 0x28:
            acc = struct.unpack(">H", data[k : k + 2])[0]
        elif code == 0x15:
            pc += jt if acc == k else jf
        elif code == 0x06:
            return k
        pc += 1


def test_the_capture_filter_keeps_only_outgoing_200_byte_udp() -> None:
    prog = bpf_program()
    rtp = frame((CARRIER, 1), (GATEWAY, 2), 0, 0, 0, bytes(160))
    assert len(rtp) == 14 + 200
    assert _run_bpf(prog, PACKET_OUTGOING, rtp) == 64
    assert _run_bpf(prog, 0, rtp) == 0  # the received copy of the same frame
    assert _run_bpf(prog, PACKET_OUTGOING, frame((CARRIER, 1), (GATEWAY, 2), 0, 0, 0, bytes(60))) == 0  # RTCP-sized
    tcp = bytearray(rtp)
    tcp[14 + 9] = 6
    assert _run_bpf(prog, PACKET_OUTGOING, bytes(tcp)) == 0
