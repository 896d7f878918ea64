"""The rendered asterisk.conf makes Asterisk relay media at real-time priority.

A relayed packet waits for the CPU behind every other runnable process on its core: the benchmarks
(docs/PERFORMANCE.md, media delay) measured the added delay's p99 in the tens to hundreds of milliseconds on a busy
host with normal scheduling, and about 1 ms with ``highpriority = yes`` (Asterisk's threads SCHED_RR). Here the real
Asterisk 22 boots with the ``[options]`` of the product's rendered asterisk.conf, and every one of its threads runs
SCHED_RR.

Negative control: the same rendered config with the ``highpriority`` line removed boots with every thread
SCHED_OTHER, so the test fails without the option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.asterisk import AsteriskInstance
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.rtp import rtp_range
from support.sipp import free_port

pytestmark = pytest.mark.asterisk

GATEWAY_IP = "127.0.1.1"
SCHED_OTHER, SCHED_RR = 0, 2


@dataclass
class WithOptions(AsteriskInstance):
    """The harness writes its own asterisk.conf (directories under the instance); this one also carries the
    rendered ``[options]`` (runuser/rungroup aside: the harness runs Asterisk as root inside its root)."""

    options: str = ""

    def _asterisk_conf(self) -> str:
        return super()._asterisk_conf() + self.options


def rendered_options(text: str) -> str:
    section, lines = "", []
    for raw in text.splitlines():
        line = raw.split(";", 1)[0].strip()
        if line.startswith("["):
            section = line.strip("[]()!")
        elif section == "options" and "=" in line and not line.startswith(("runuser", "rungroup")):
            lines.append(line + "\n")
    return "".join(lines)


def thread_policies(pid: int) -> set[int]:
    policies = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        policies.add(int(fields[38]))
    return policies


def asterisk_pid(inst: AsteriskInstance) -> int:
    assert inst.process is not None
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if comm == "asterisk" and _descends(ppid, inst.process.pid):
                return int(entry.name)
    raise AssertionError("no asterisk process under the instance")


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def _boot(asterisk_root: Path, tmp_path: Path, name: str, options: str) -> set[int]:
    settings, secrets = load_example("minimal")
    settings = merge(
        settings,
        {
            "network": loopback_network(GATEWAY_IP, free_port(GATEWAY_IP), rtp_range(), tls_port=free_port(GATEWAY_IP)),
            "carriers": [ip_carrier("127.0.1.5", 5999, [settings["elevenlabs"]["phone_number"]])],
        },
    )
    rendered = render_gateway(settings, secrets, tmp_path / name)
    inst = WithOptions(asterisk_root, name, rendered.asterisk_dir, options=options)
    try:
        inst.start()
        return thread_policies(asterisk_pid(inst))
    finally:
        inst.stop()


def test_asterisk_runs_every_thread_real_time(asterisk_root: Path, tmp_path: Path) -> None:
    settings, secrets = load_example("minimal")
    conf = render_gateway(settings, secrets, tmp_path / "conf").file("asterisk.conf")
    options = rendered_options(conf)
    assert re.search(r"^highpriority = yes$", options, re.MULTILINE), options
    assert _boot(asterisk_root, tmp_path, "prio-rendered", options) == {SCHED_RR}
    # negative control: the option removed, the same config runs every thread at normal priority
    without = re.sub(r"^highpriority = yes\n", "", options, flags=re.MULTILINE)
    assert _boot(asterisk_root, tmp_path, "prio-control", without) == {SCHED_OTHER}
