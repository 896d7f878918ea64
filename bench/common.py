"""What every benchmark shares: the machine description, process CPU and
memory from /proc, and RTP counters that count media packets only."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip_trunk_local.rtp import RtpCounter

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
SCENARIOS = BENCH / "scenarios"

CLK_TCK = os.sysconf("SC_CLK_TCK")


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def machine(asterisk_version: str | None = None) -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem.group(1)) / 1024 / 1024, 1) if mem else None,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "asterisk_version": asterisk_version,
        "sipp_version": _sipp_version(),
    }


def _os_name() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "unknown"
    m = re.search(r'^PRETTY_NAME="?([^"\n]+)', text, re.MULTILINE)
    return m.group(1) if m else "unknown"


def _sipp_version() -> str | None:
    try:
        out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"SIPp (v[\w.\-]+)", out)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------ /proc
def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (depth first)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for kid in kids.get(stack.pop(), []):
            out.append(kid)
            stack.append(kid)
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def find_child(pid: int, name: str) -> int | None:
    for kid in children(pid):
        if comm(kid) == name:
            return kid
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    m = re.search(r"^VmRSS:\s*(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return round(int(m.group(1)) / 1024, 1) if m else 0.0


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_jiffies() -> dict[str, int]:
    """All-CPU jiffies per kind from the first line of /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return dict(zip(_STAT_FIELDS, parts, strict=True))


@dataclass
class CpuWindow:
    """CPU use of some processes and of the whole machine between :meth:`start` and :meth:`stop`."""

    pids: dict[str, list[int]]
    _t0: float = 0.0
    _cpu0: dict[str, float] | None = None
    _m0: dict[str, int] | None = None

    def _sample(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for label, pids in self.pids.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(OSError):
                    total += cpu_seconds(pid)
            out[label] = total
        return out

    def start(self) -> CpuWindow:
        self._t0, self._cpu0, self._m0 = time.monotonic(), self._sample(), machine_jiffies()
        return self

    def stop(self) -> dict[str, float]:
        """Percent of one core per label; ``machine`` = percent of all cores busy, ``machine_kinds`` = the
        same split by kind (softirq is where loopback packet delivery lands), ``others`` = percent of one
        core used by everything not labelled (other work on the machine, the kernel's softirq included)."""
        elapsed = time.monotonic() - self._t0
        cpu1, m1 = self._sample(), machine_jiffies()
        assert self._cpu0 is not None
        assert self._m0 is not None
        out: dict[str, Any] = {label: round(100 * (cpu1[label] - self._cpu0[label]) / elapsed, 1) for label in cpu1}
        delta = {k: m1[k] - self._m0[k] for k in m1}
        total = sum(delta.values())
        busy = total - delta["idle"] - delta["iowait"]
        cores = os.cpu_count() or 1
        out["machine"] = round(100 * busy / total, 1) if total else 0.0
        out["machine_kinds"] = {k: round(100 * v / total, 1) for k, v in delta.items() if k not in ("idle",) and total}
        labelled = sum(out[label] for label in cpu1)
        out["others"] = round(out["machine"] * cores - labelled, 1)
        out["seconds"] = round(elapsed, 1)
        return out


# ------------------------------------------------------------------------------------------ RTP
class MediaCounter(RtpCounter):
    """:class:`sip_trunk_local.rtp.RtpCounter` restricted to packets of one IP length, so RTCP (and ICMP-less
    probes) never count as audio. 20 ms of G.711 or G.722 = 160 bytes payload = 200 bytes IPv4."""

    ip_length = 200

    def _ipt(self, *args: str) -> str:
        if len(args) > 1 and args[0] == "-A" and args[1] == self.chain:
            args = (*args[:2], "-m", "length", "--length", str(self.ip_length), *args[2:])
        return super()._ipt(*args)
