"""Run bench/capture.py beside a level (optionally pinned to the generators' CPUs) and analyse its packets."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO
from bench.media_delay import analyse, read_records
from bench.topology import AGENT_IP, CARRIER_IP, GATEWAY_IP


@dataclass
class MediaCapture:
    out: Path
    seconds: float
    cpus: str | None = None
    process: subprocess.Popen[str] | None = field(default=None, init=False)

    def start(self) -> MediaCapture:
        cmd = [sys.executable, "-m", "bench.capture", str(self.out), f"{self.seconds:g}"]
        if self.cpus is not None:
            cmd = ["taskset", "-c", self.cpus, *cmd]
        self.process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()  # the socket is bound once it says so
        if line != "ready":
            self.kill()
            raise RuntimeError(f"capture did not start: {line!r}")
        return self

    def analyse(self) -> dict[str, Any]:
        assert self.process is not None
        assert self.process.stdout is not None
        stats = json.loads(self.process.stdout.readline())
        self.process.wait(timeout=30)
        packets = read_records(self.out.read_bytes())
        self.out.unlink(missing_ok=True)
        figures = analyse(packets, carrier_ip=CARRIER_IP, gateway_ip=GATEWAY_IP, agent_ip=AGENT_IP)
        return {"capture": stats, **figures}

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
