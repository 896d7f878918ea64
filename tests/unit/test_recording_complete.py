"""The agent waits for the recorder to finish a file before it hashes and queues it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from sip_trunk.agent.recordings import wait_until_complete

pytestmark = pytest.mark.unit


def _wav(path: Path, frames: bytes, *, riff_size: int | None) -> None:
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
    data = struct.pack("<4sI", b"data", len(frames)) + frames
    body = b"WAVE" + fmt + data
    size = len(body) if riff_size is None else riff_size
    path.write_bytes(b"RIFF" + struct.pack("<I", size) + body)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def __call__(self) -> float:
        return self.now


def test_a_closed_wav_is_complete_at_once(tmp_path: Path) -> None:
    # Given a WAV whose RIFF header matches its size (the recorder closed it)
    wav = tmp_path / "call.wav"
    _wav(wav, b"\x01\x02" * 800, riff_size=None)
    clock = FakeClock()
    # When / Then: no waiting
    assert wait_until_complete(wav, sleep=clock.sleep, clock=clock)
    assert clock.now == 0.0


def test_an_open_wav_is_waited_for_until_the_recorder_closes_it(tmp_path: Path) -> None:
    # Given a WAV still being written (header size stale, as Asterisk leaves it until close)
    wav = tmp_path / "call.wav"
    _wav(wav, b"\x01\x02" * 800, riff_size=0)
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.now >= 1.0:  # the recorder closes the file after a second
            _wav(wav, b"\x01\x02" * 900, riff_size=None)

    # When
    complete = wait_until_complete(wav, sleep=sleep, clock=clock)
    # Then it waited about a second and saw the finished file
    assert complete
    assert 1.0 <= clock.now < 1.5


def test_a_wav_that_never_completes_times_out(tmp_path: Path) -> None:
    wav = tmp_path / "call.wav"
    _wav(wav, b"\x00" * 100, riff_size=0)
    clock = FakeClock()
    assert not wait_until_complete(wav, timeout_s=5, sleep=clock.sleep, clock=clock)
    assert 5.0 <= clock.now < 5.5


def test_other_formats_are_complete_when_their_size_stops_changing(tmp_path: Path) -> None:
    raw = tmp_path / "call.ulaw"
    raw.write_bytes(b"\xff" * 160)
    clock = FakeClock()
    assert wait_until_complete(raw, sleep=clock.sleep, clock=clock)
    assert clock.now == pytest.approx(0.2)
