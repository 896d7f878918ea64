"""A fixed CPU calibration loop: the same work on every machine, so CPU figures can be read in its units.

The work: deflate (zlib level 6) one fixed 256 KiB buffer of pseudo-random bytes (a linear congruential sequence,
so every machine compresses the same data) ``ROUNDS`` times: plain integer C code, no vector or crypto
instructions. Run in a child pinned to the CPUs given, it reports the loop's CPU seconds (the core's speed) and
its wall seconds (wall / CPU > 1 when other work shared the core). ``per_call_in_loops`` turns Asterisk's share
of a core per call into calibration loops per call-second, a figure that moves with the software rather than the
core's speed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zlib

from bench.common import REPO

ROUNDS = 20
SIZE = 256 * 1024


def _data() -> bytes:
    out = bytearray(SIZE)
    x = 12345
    for i in range(SIZE):
        x = (1103515245 * x + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0x3F  # 64 symbols: compressible, like audio more than noise
    return bytes(out)


def loop() -> dict[str, float]:
    data = _data()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(ROUNDS):
        zlib.compress(data, 6)
    return {"cpu_s": round(time.process_time() - cpu0, 4), "wall_s": round(time.perf_counter() - wall0, 4)}


def measure(cpus: str | None = None, repeats: int = 3) -> dict[str, float | int | str | None]:
    """The loop in a child process (pinned to ``cpus``), ``repeats`` times: the fastest CPU time and its wall."""
    cmd = [sys.executable, "-m", "bench.calibrate"]
    if cpus is not None:
        cmd = ["taskset", "-c", cpus, *cmd]
    runs = []
    for _ in range(repeats):
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
        runs.append(json.loads(out))
    best = min(runs, key=lambda r: r["cpu_s"])
    return {
        "cpus": cpus,
        "rounds": ROUNDS,
        "loop_cpu_s": best["cpu_s"],
        "loop_wall_s": best["wall_s"],
        "wall_over_cpu": round(best["wall_s"] / best["cpu_s"], 3) if best["cpu_s"] else None,
        "repeats": repeats,
    }


def per_call_in_loops(cpu_pct_per_call: float | None, loop_cpu_s: float | None) -> float | None:
    """Asterisk's percent of one core per call → calibration loops per call-second (core-seconds / loop)."""
    if cpu_pct_per_call is None or not loop_cpu_s:
        return None
    return round(cpu_pct_per_call / 100 / loop_cpu_s, 6)


if __name__ == "__main__":
    print(json.dumps(loop()))
