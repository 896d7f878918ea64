"""G.711 audio for sipp's looping ``rtp_stream``.

sipp ships only ``g711a.pcap`` (A-law, about 7 s). ``rtp_stream`` wants raw payload bytes, so the RTP
payloads are pulled out of the pcap (160 bytes per 20 ms packet) and, for mu-law, converted sample by
sample through 16-bit linear (ITU-T G.711 tables computed here; ``audioop`` is gone in Python 3.13).
"""

from __future__ import annotations

import struct
from pathlib import Path

G711A_PCAP = Path("/usr/share/sip-tester/g711a.pcap")


def rtp_payloads(pcap: Path) -> list[bytes]:
    """RTP payloads of every UDP packet in a classic (libpcap) capture, in order."""
    data = pcap.read_bytes()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    link_len = {1: 14, 113: 16, 0: 4, 101: 0}.get(linktype)
    if link_len is None:
        raise ValueError(f"{pcap}: unsupported link type {linktype}")
    out: list[bytes] = []
    pos = 24
    while pos + 16 <= len(data):
        incl = struct.unpack(endian + "IIII", data[pos : pos + 16])[2]
        frame = data[pos + 16 : pos + 16 + incl]
        pos += 16 + incl
        ip = frame[link_len:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        udp = ip[(ip[0] & 0x0F) * 4 :]
        rtp = udp[8:]
        if len(rtp) < 12 or rtp[0] >> 6 != 2:
            continue
        header = 12 + 4 * (rtp[0] & 0x0F)
        out.append(rtp[header:])
    return out


def _alaw_to_linear(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


_BIAS, _CLIP = 0x84, 32635


def _linear_to_ulaw(sample: int) -> int:
    sign = 0x80 if sample < 0 else 0
    sample = min(abs(sample), _CLIP) + _BIAS
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not sample & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


ALAW_TO_ULAW = bytes(_linear_to_ulaw(_alaw_to_linear(a)) for a in range(256))


def write_audio(out_dir: Path) -> dict[str, Path]:
    """``{"alaw": raw A-law file, "ulaw": raw mu-law file}`` from sipp's pcap (written once)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    alaw = b"".join(rtp_payloads(G711A_PCAP))
    if len(alaw) < 8000:
        raise ValueError(f"{G711A_PCAP}: only {len(alaw)} bytes of audio")
    paths = {"alaw": out_dir / "g711a.raw", "ulaw": out_dir / "g711u.raw"}
    paths["alaw"].write_bytes(alaw)
    paths["ulaw"].write_bytes(alaw.translate(ALAW_TO_ULAW))
    return paths
