"""How many compile jobs and how much swap the Asterisk build at boot uses (image scripts' lib.sh).

A C/C++ compile job of Asterisk/pjproject peaks near 1 GiB; `make -j$(nproc)` on a 1 GiB t4g.micro (2 vCPUs)
runs out of memory. The functions are run in bash against a fake /proc/meminfo."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

LIB = Path(__file__).resolve().parents[2] / "layers/sip_trunk/src/sip_trunk/agent/host_files/image/scripts/lib.sh"
GIB_KB = 1024 * 1024


def run(function: str, tmp_path: Path, mem_total_kb: int, cpus: int) -> str:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal:       {mem_total_kb} kB\nMemFree:         12345 kB\nSwapTotal:             0 kB\n")
    proc = subprocess.run(
        ["bash", "-c", f'source "{LIB}" && {function}'],
        env={"PATH": "/usr/bin:/bin", "SIP_TRUNK_MEMINFO": str(meminfo), "SIP_TRUNK_NPROC": str(cpus)},
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout.strip()


@pytest.mark.parametrize(
    ("instance", "mem_total_kb", "cpus", "jobs"),
    [
        ("t4g.micro (1 GiB, as the kernel reports it)", 930_000, 2, 1),
        ("t4g.small (2 GiB)", 1_950_000, 2, 2),
        ("t4g.medium (4 GiB)", 3_970_000, 2, 2),
        ("c7g.xlarge (8 GiB, 4 vCPUs)", 7_950_000, 4, 4),
        ("m7g.large (8 GiB, 2 vCPUs)", 7_950_000, 2, 2),
        ("tiny (512 MiB)", 480_000, 2, 1),
    ],
)
def test_build_jobs_are_limited_by_memory_and_cpus(tmp_path, instance, mem_total_kb, cpus, jobs) -> None:
    assert run("build_jobs", tmp_path, mem_total_kb, cpus) == str(jobs), instance


@pytest.mark.parametrize(
    ("mem_total_kb", "swap_mib"),
    [(930_000, 2048), (1_950_000, 0), (3_970_000, 0), (480_000, 2048)],
)
def test_build_swap_only_under_2_gib(tmp_path, mem_total_kb, swap_mib) -> None:
    assert run("build_swap_mib", tmp_path, mem_total_kb, 2) == str(swap_mib)
