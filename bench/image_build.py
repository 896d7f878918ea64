"""The host image build's figures, for ``scripts/image-check.sh`` (``make image-check``).

``python -m bench.image_build sample --root DIR --out FILE -- CMD...`` runs CMD (the chrooted ``install-host.sh``)
and samples, every second, the memory of every process whose root directory is DIR (the sum of their PSS and of
their RSS: what the build needs at once, ``make -j`` included) and the machine's load average, since the machine
is shared and the build runs at ``nice -n 19``. Exit status: CMD's.

``python -m bench.image_build summarize ...`` turns install-host.sh's log (its per-step durations), GNU time's
``-v`` report and the samples into the figures ``bench.run --only image`` merges into bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SAMPLE_S = 1.0
STEP_RE = re.compile(r"\[sip-trunk-image\] step ([\w-]+) finished in (\d+) s")
TOTAL_RE = re.compile(r"\[sip-trunk-image\] install-host finished in (\d+) s")


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def _memory_kib(pid: str) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB; (0, 0) when it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    pss = re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE)
    rss = re.search(r"^Rss:\s+(\d+) kB", text, re.MULTILINE)
    return (int(pss.group(1)) if pss else 0, int(rss.group(1)) if rss else 0)


def sample_root(root: Path) -> tuple[int, int, int]:
    """(processes, PSS KiB, RSS KiB) summed over the processes chrooted in ``root``."""
    target = str(root.resolve())
    count = pss = rss = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/root") != target:
                continue
        except OSError:
            continue
        p, r = _memory_kib(entry)
        count += 1
        pss += p
        rss += r
    return count, pss, rss


def sample(root: Path, out: Path, command: list[str]) -> int:
    started = time.monotonic()
    proc = subprocess.Popen(command)
    rows: list[list[float]] = []
    while proc.poll() is None:
        count, pss, rss = sample_root(root)
        rows.append(
            [round(time.monotonic() - started, 1), count, round(pss / 1024, 1), round(rss / 1024, 1), _loadavg()]
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=SAMPLE_S)
    out.write_text(json.dumps({"columns": ["t_s", "processes", "pss_mib", "rss_mib", "load1"], "rows": rows}))
    return proc.returncode


def gnu_time(text: str) -> dict[str, Any]:
    """The fields of ``/usr/bin/time -v`` this report uses."""

    def field(name: str) -> str | None:
        m = re.search(rf"^\s*{re.escape(name)}: (.+)$", text, re.MULTILINE)
        return m.group(1).strip() if m else None

    elapsed = field("Elapsed (wall clock) time (h:mm:ss or m:ss)") or "0:0"
    seconds = 0.0
    for part in elapsed.split(":"):
        seconds = seconds * 60 + float(part)
    return {
        "wall_s": round(seconds, 1),
        "user_s": float(field("User time (seconds)") or 0),
        "system_s": float(field("System time (seconds)") or 0),
        "max_process_rss_mib": round(int(field("Maximum resident set size (kbytes)") or 0) / 1024, 1),
    }


def summarize(log: str, time_report: str, samples: dict[str, Any]) -> dict[str, Any]:
    steps = {name: int(s) for name, s in STEP_RE.findall(log)}
    total = TOTAL_RE.search(log)
    rows = samples["rows"]
    cols = samples["columns"]
    pss = [r[cols.index("pss_mib")] for r in rows]
    rss = [r[cols.index("rss_mib")] for r in rows]
    load = [r[cols.index("load1")] for r in rows]
    busy = [r for r in rows if r[cols.index("processes")] > 0]
    return {
        "steps_s": steps,
        "install_host_s": int(total.group(1)) if total else None,
        "compile_s": steps.get("build-asterisk"),
        "time": gnu_time(time_report),
        "peak_pss_mib": max(pss, default=0.0),
        "peak_rss_mib": max(rss, default=0.0),
        "load1": {
            "min": min(load, default=0.0),
            "mean": round(sum(load) / len(load), 2) if load else 0.0,
            "max": max(load, default=0.0),
        },
        "samples": len(rows),
        "busy_samples": len(busy),
    }


def run() -> dict[str, Any]:
    """``bench.run --only image``: the figures of the cached build for the current scripts and sources (built
    first when missing); the figures file is the last line ``scripts/image-check.sh --build-only`` prints."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/image-check.sh"), "--build-only"],
        stdout=subprocess.PIPE,
        text=True,
        timeout=4 * 3600,
        check=True,
    )
    figures: dict[str, Any] = json.loads(Path(proc.stdout.strip().splitlines()[-1]).read_text())
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.image_build")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--root", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    m = sub.add_parser("summarize")
    m.add_argument("--log", type=Path, required=True)
    m.add_argument("--time", type=Path, required=True)
    m.add_argument("--samples", type=Path, required=True)
    m.add_argument("--version", required=True)
    m.add_argument("--suite", required=True)
    m.add_argument("--key", required=True)
    m.add_argument("--cores", type=int, required=True)
    m.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.command == "sample":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            ap.error("sample needs a command after --")
        return sample(args.root, args.out, cmd)
    figures = summarize(
        args.log.read_text(errors="replace"),
        args.time.read_text(errors="replace"),
        json.loads(args.samples.read_text()),
    )
    figures.update(
        {
            "asterisk_version": args.version,
            "suite": args.suite,
            "key": args.key,
            "cores": args.cores,
            "nice": 19,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
