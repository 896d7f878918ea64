"""``python -m bench.capture OUT SECONDS``: capture RTP-sized frames on loopback with kernel timestamps.

An ``AF_PACKET`` socket bound to ``lo`` with a classic BPF filter in the kernel that keeps only the **outgoing**
copy of each frame (loopback shows every frame twice: sent and received), IPv4 total length 200 (20 ms of G.711
or G.722: RTCP and SIP never pass) and UDP, truncated to the first 64 bytes (headers and the payload's marker).
Each frame's timestamp is the kernel's (``SO_TIMESTAMPNS``: stamped when the sender's frame reached the device).
Prints ``ready`` once the socket is bound, keeps the frames the kernel stamped within SECONDS from then (a
starved reader drains its 1 GiB buffer afterwards, so the window is complete however late it reads), writes
``<q H>`` records (timestamp ns, length) each followed by the frame to OUT, and prints one JSON line: packets,
kernel drops, CPU seconds used, seconds it took to read them."""

from __future__ import annotations

import ctypes
import json
import socket
import struct
import sys
import time
from pathlib import Path

from bench.media_delay import RECORD

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
SOL_PACKET = 263
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4
SNAPLEN = 64
SKF_AD_PKTTYPE = 0xFFFFF000 + 4


def bpf_program(ip_length: int = 200, snaplen: int = SNAPLEN) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k): outgoing frames, IPv4 total length ``ip_length``, UDP; keep ``snaplen`` bytes."""
    ld_b, ld_h, jeq, ret = 0x30, 0x28, 0x15, 0x06
    return [
        (ld_b, 0, 0, SKF_AD_PKTTYPE),
        (jeq, 0, 5, PACKET_OUTGOING),
        (ld_h, 0, 0, 14 + 2),
        (jeq, 0, 3, ip_length),
        (ld_b, 0, 0, 14 + 9),
        (jeq, 0, 1, 17),
        (ret, 0, 0, snaplen),
        (ret, 0, 0, 0),
    ]


def open_socket() -> tuple[socket.socket, ctypes.Array[ctypes.c_char]]:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    prog = bpf_program()
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1024 * 1024 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.bind(("lo", 0))
    return sock, buf


def capture(out: Path, seconds: float) -> dict[str, float | int]:
    sock, _keep = open_socket()
    sock.settimeout(0.2)
    print("ready", flush=True)
    chunks: list[bytes] = []
    cpu0 = time.process_time()
    window_end_ns = time.time_ns() + int(seconds * 1e9)  # kernel timestamps are CLOCK_REALTIME
    give_up = time.monotonic() + 20 * seconds + 10
    count = late = 0
    pack = RECORD.pack
    while time.monotonic() < give_up:
        try:
            frame, anc, _flags, _addr = sock.recvmsg(SNAPLEN, 64)
        except TimeoutError:
            if time.time_ns() > window_end_ns:
                break
            continue
        t_ns = 0
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", data[:16])
                t_ns = sec * 1_000_000_000 + nsec
        if t_ns > window_end_ns:
            late += 1
            if late > 1000:  # well past the window: the buffer is drained up to it
                break
            continue
        chunks.append(pack(t_ns, len(frame)) + frame)
        count += 1
    read_s = round(time.monotonic() - (give_up - 20 * seconds - 10), 3)
    stats = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    _packets, drops = struct.unpack("II", stats)
    sock.close()
    out.write_bytes(b"".join(chunks))
    cpu = time.process_time() - cpu0
    return {"packets": count, "kernel_drops": drops, "cpu_s": round(cpu, 3), "seconds": seconds, "read_s": read_s}


def main(argv: list[str]) -> int:
    out, seconds = Path(argv[0]), float(argv[1])
    print(json.dumps(capture(out, seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
