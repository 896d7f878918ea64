"""Soak: tens of thousands of calls through the rendered gateway over a long run, with reloads and config applies
during it, sampling what a leak would grow.

The post-dial topology (bench/post_dial.py) on loopback: a sipp carrier places short calls (INVITE with SDP, 200,
held ``hold_ms``, BYE) at a fixed rate into the product's rendered gateway, which dials the agent at the ElevenLabs
host name; the sipp agent challenges every INVITE with 401 (digest, as ElevenLabs does) and answers. During the run:

- every ``reload_every_s`` a ``core reload`` (what `sip-trunk-agent apply` ends with, and what an operator runs);
- every ``apply_every_s`` a new config version applied by the host agent's real code
  (``sip_trunk.agent.apply.apply_version``: fetch from SSM — moto in-process —, hashes, release directory, symlink
  swap, reload, verify), each version with another dial timeout.

Every ``sample_s`` the Asterisk process's RSS, open descriptors, threads, CPU (share of one core since the previous
sample), active channels and the calls it has processed. The growth per thousand calls is the least-squares slope of
each figure against calls processed, over the samples after the warm-up (the first ``warmup_fraction`` of the run:
pools and caches fill once), with the channels up at each sample held fixed (:func:`growth_per_1000`: calls in flight
cost memory, descriptors and a thread each and come back; what grows with calls done is a leak). The idle figures
after a few priming calls (the gateway's kept TCP connection to the agent exists from then on) and after the last call
has drained say the same without the noise of calls in flight.
Flat means: RSS under ``GOAL_RSS_MIB_PER_1000`` MiB and descriptors under ``GOAL_FDS_PER_1000`` per thousand calls,
and the idle descriptors back to their count before the run.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sip_trunk_local.sipp import Sipp, free_port

from bench.capacity import AGENT_IP, CARRIER_IP, GATEWAY_IP, asterisk_pid, gateway_settings, start_gateway
from bench.common import cpu_seconds, rss_mib
from bench.variants import RENDERED

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
PREFIX = "/bench/soak"
GOAL_RSS_MIB_PER_1000 = 0.1  # 100 bytes per call: a leak of one small allocation per call shows
GOAL_FDS_PER_1000 = 0.5
IDLE_FD_TOLERANCE = 2  # a log file reopened by a reload, a socket in TIME_WAIT handling
PRIMING_CALLS = 10
DRAIN_S = 60.0  # a transaction whose answer was lost ends after Timer F (32 s)


@dataclass(frozen=True)
class SoakPlan:
    duration_s: float
    rate_cps: float
    hold_ms: int
    reload_every_s: float
    apply_every_s: float
    sample_s: float
    warmup_fraction: float = 0.1

    @property
    def calls(self) -> int:
        return int(self.duration_s * self.rate_cps)


FULL = SoakPlan(duration_s=1320, rate_cps=16, hold_ms=1000, reload_every_s=60, apply_every_s=300, sample_s=10)
QUICK = SoakPlan(duration_s=40, rate_cps=10, hold_ms=500, reload_every_s=8, apply_every_s=15, sample_s=2)


def slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of ys against xs (None with fewer than three points or no spread in xs)."""
    n = len(xs)
    if n < 3 or n != len(ys):
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def _residuals(values: Sequence[float], of: Sequence[float]) -> list[float]:
    """``values`` minus their least-squares line on ``of`` (``values`` unchanged when ``of`` does not vary)."""
    b = slope(of, values) or 0.0
    mv, mo = sum(values) / len(values), sum(of) / len(of)
    return [v - (mv + b * (o - mo)) for v, o in zip(values, of, strict=True)]


def growth_per_1000(
    samples: Sequence[dict[str, Any]], key: str, warmup_calls: float, *, given_channels: bool = False
) -> float | None:
    """Growth of ``key`` per thousand calls processed, fitted over the samples past ``warmup_calls``.

    ``given_channels``: the slope with the channels up at each sample held fixed (calls and ``key`` both
    residualised on the channel count first, Frisch-Waugh): what grows with the calls *done*, not with the calls
    *in flight* — a machine that slows down holds more calls up at once, each with its threads, descriptors and
    memory, which is load, not a leak."""
    rows = [s for s in samples if s.get(key) is not None and s["calls_processed"] >= warmup_calls]
    if len(rows) < 3:
        return None
    calls = [float(s["calls_processed"]) for s in rows]
    values = [float(s[key]) for s in rows]
    if given_channels:
        channels = [float(s["channels"]) for s in rows]
        calls, values = _residuals(calls, channels), _residuals(values, channels)
    fitted = slope(calls, values)
    return None if fitted is None else round(fitted * 1000, 5)


def verdict(growth: dict[str, float | None], idle_before: dict[str, Any], idle_after: dict[str, Any]) -> dict[str, Any]:
    """Flat or not, and why (the figures against the goals)."""
    problems = []
    rss, fds = growth.get("rss_mib"), growth.get("fds")
    if rss is None or rss > GOAL_RSS_MIB_PER_1000:
        problems.append(f"RSS grows {rss} MiB per 1000 calls (goal ≤ {GOAL_RSS_MIB_PER_1000})")
    if fds is None or fds > GOAL_FDS_PER_1000:
        problems.append(f"descriptors grow {fds} per 1000 calls (goal ≤ {GOAL_FDS_PER_1000})")
    before, after = idle_before.get("fds"), idle_after.get("fds")
    if before is None or after is None or after - before > IDLE_FD_TOLERANCE:
        problems.append(f"idle descriptors {before} before the run, {after} after it drained")
    if idle_after.get("channels"):
        problems.append(f"{idle_after['channels']} channels left after the run drained")
    return {"flat": not problems, "problems": problems}


def _channels(text: str) -> tuple[int, int, int]:
    """(active channels, active calls, calls processed) from ``core show channels count``."""

    def number(pattern: str) -> int:
        m = re.search(pattern, text)
        return int(m.group(1)) if m else 0

    return number(r"(\d+) active channel"), number(r"(\d+) active call"), number(r"(\d+) calls? processed")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _threads(pid: int) -> int:
    m = re.search(r"^Threads:\s*(\d+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(m.group(1)) if m else 0


class Applier:
    """New config versions for the running gateway, applied by the host agent's code (moto SSM in-process).
    :meth:`prepare` renders and publishes them before the run, so an apply during it is the agent's work only."""

    def __init__(self, gw: Any, workdir: Path, sip_port: int, rtp: tuple[int, int], agent_port: int) -> None:
        from moto import mock_aws

        self.gw, self.workdir = gw, workdir
        self.settings, self.secrets = gateway_settings(sip_port, rtp, agent_port)
        self._mock = mock_aws()
        self._mock.start()
        import boto3

        self.ssm = boto3.client("ssm", region_name="us-east-1")
        self.versions: list[str] = []
        self.count = 0

    def prepare(self, count: int) -> None:
        from sip_trunk import configstore
        from sip_trunk.manifest import MANIFEST_NAME, Manifest
        from sip_trunk_local.harness.gateway import merge, render_gateway

        for index in range(1, count + 1):
            changed = merge(self.settings, {"dialplan": {"dial_timeout_s": 30 + index % 20}})
            rendered = render_gateway(changed, self.secrets, self.workdir / f"gw-v{index}")
            files = dict(rendered.rendered.files)
            files["asterisk/asterisk.conf"] = (self.gw.etc_dir / "asterisk.conf").read_bytes()  # no restart
            files.pop(MANIFEST_NAME)
            files[MANIFEST_NAME] = Manifest.for_files(files).to_json()
            version = Manifest.from_json(files[MANIFEST_NAME]).version
            configstore.publish_config(self.ssm, PREFIX, files, list(rendered.rendered.secret_files), version)
            self.versions.append(version)

    def apply(self) -> dict[str, Any]:
        from sip_trunk.agent.apply import apply_version
        from sip_trunk.agent.config import AgentConfig
        from sip_trunk.agent.runtime import AsteriskCli

        version = self.versions[self.count % len(self.versions)]
        self.count += 1
        config = AgentConfig(
            stack="bench",
            config_prefix=PREFIX,
            config_dir=self.gw.etc_dir,
            releases_dir=self.gw.base / "releases",
            state_dir=self.workdir / "agent-state",
            fail2ban_dir=self.workdir / "fail2ban",
            fail2ban_reload=(),
            asterisk_cmd=("chroot", str(self.gw.root), "/usr/sbin/asterisk"),
            asterisk_conf=self.gw.conf_path,
            reload_timeout_s=15.0,
        )
        started = time.monotonic()
        result = apply_version(config, self.ssm, AsteriskCli(config.asterisk_cmd, config.asterisk_conf), version)
        return {"version": version, "changed": result.get("changed"), "seconds": round(time.monotonic() - started, 2)}

    def close(self) -> None:
        self._mock.stop()


def _sample(gw: Any, pid: int, started: float, cpu_before: tuple[float, float]) -> tuple[dict[str, Any], float]:
    now = time.monotonic()
    cpu = cpu_seconds(pid)
    channels, calls, processed = _channels(gw.rx("core show channels count"))
    t_prev, c_prev = cpu_before
    row = {
        "t_s": round(now - started, 1),
        "rss_mib": rss_mib(pid),
        "fds": _fds(pid),
        "threads": _threads(pid),
        "cpu_pct": round(100 * (cpu - c_prev) / (now - t_prev), 1) if now > t_prev else None,
        "channels": channels,
        "active_calls": calls,
        "calls_processed": processed,
    }
    return row, cpu


def _idle(gw: Any, pid: int) -> dict[str, Any]:
    channels, _, processed = _channels(gw.rx("core show channels count"))
    return {"rss_mib": rss_mib(pid), "fds": _fds(pid), "threads": _threads(pid), "channels": channels,
            "calls_processed": processed}  # fmt: skip


def _drain(gw: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _channels(gw.rx("core show channels count"))[0]:
        time.sleep(0.5)


def run(root: Path, workdir: Path, plan: SoakPlan = FULL, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    from sip_trunk_local.rtp import reserve_rtp_range

    workdir.mkdir(parents=True, exist_ok=True)
    agent_port = free_port(AGENT_IP)
    agent = Sipp(
        SCENARIOS / "agent_uas_challenge.xml", workdir / "agent", transport="t1", local_ip=AGENT_IP,
        local_port=agent_port, calls=None, extra_args=["-aa"], trace_messages=False,
    ).start()  # fmt: skip
    rtp = reserve_rtp_range(max(400, int(8 * plan.rate_cps * (plan.hold_ms / 1000 + 2))))
    gw = carrier = applier = None
    samples: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    try:
        sip_port = free_port(GATEWAY_IP)
        gw, e164 = start_gateway(
            root, workdir, "bench-soak", RENDERED, sip_port=sip_port, rtp=rtp.ports, agent_port=agent_port
        )
        pid = asterisk_pid(gw)
        applier = Applier(gw, workdir, sip_port, rtp.ports, agent_port)
        applier.prepare(int(plan.duration_s // plan.apply_every_s) + 1)
        # a few calls first: the gateway's kept TCP connection to the agent and its first-use allocations are
        # not growth; the idle figures before the run are taken once they have drained
        Sipp(
            SCENARIOS / "carrier_uac_short.xml", workdir / "priming", remote=f"{GATEWAY_IP}:{sip_port}",
            transport="t1", local_ip=CARRIER_IP, service=e164, calls=PRIMING_CALLS, rate=PRIMING_CALLS,
            duration_ms=plan.hold_ms, global_timeout_s=60, trace_messages=False,
        ).start().wait(timeout=90)  # fmt: skip
        _drain(gw, DRAIN_S)
        idle_before = _idle(gw, pid)
        carrier = Sipp(
            SCENARIOS / "carrier_uac_short.xml", workdir / "carrier", remote=f"{GATEWAY_IP}:{sip_port}",
            transport="t1", local_ip=CARRIER_IP, service=e164, calls=plan.calls, rate=plan.rate_cps,
            duration_ms=plan.hold_ms, global_timeout_s=plan.duration_s + 120, trace_messages=False,
        ).start()  # fmt: skip
        started = time.monotonic()
        cpu_mark = (started, cpu_seconds(pid))
        next_sample, next_reload, next_apply = started, started + plan.reload_every_s, started + plan.apply_every_s
        end = started + plan.duration_s
        while time.monotonic() < end and carrier.process is not None and carrier.process.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                row, cpu = _sample(gw, pid, started, cpu_mark)
                cpu_mark = (now, cpu)
                samples.append(row)
                next_sample += plan.sample_s
            if now >= next_apply:
                events.append({"t_s": round(now - started, 1), "kind": "apply", **applier.apply()})
                next_apply += plan.apply_every_s
                next_reload = max(next_reload, time.monotonic() + 1)
            elif now >= next_reload:
                t0 = time.monotonic()
                gw.rx("core reload")
                events.append({"t_s": round(now - started, 1), "kind": "reload",
                               "seconds": round(time.monotonic() - t0, 2)})  # fmt: skip
                next_reload += plan.reload_every_s
            time.sleep(max(0.0, min(next_sample, next_reload, next_apply, end) - time.monotonic()))
        result = carrier.wait(timeout=plan.hold_ms / 1000 + 120)
        _drain(gw, DRAIN_S)
        idle_after = _idle(gw, pid)
        calls_done = idle_after["calls_processed"] - idle_before["calls_processed"]
        warmup = plan.warmup_fraction * max(1, samples[-1]["calls_processed"] if samples else 1)
        growth = {
            key: growth_per_1000(samples, key, warmup, given_channels=key != "channels")
            for key in ("rss_mib", "fds", "threads", "cpu_pct", "channels")
        }
        raw_growth = {key: growth_per_1000(samples, key, warmup) for key in ("rss_mib", "fds", "threads")}
        out: dict[str, Any] = {
            "plan": {**plan.__dict__, "calls_planned": plan.calls},
            "seconds": round(time.monotonic() - started, 1),
            "successful": result.successful,
            "failed": result.failed,
            "calls_processed": calls_done,
            "reloads": sum(1 for e in events if e["kind"] == "reload"),
            "applies": sum(1 for e in events if e["kind"] == "apply"),
            "events": events,
            "idle_before": idle_before,
            "idle_after": idle_after,
            "growth_per_1000_calls": growth,
            "growth_per_1000_calls_raw": raw_growth,
            "warmup_calls": round(warmup),
            "samples": samples,
            "goals": {
                "rss_mib_per_1000": GOAL_RSS_MIB_PER_1000,
                "fds_per_1000": GOAL_FDS_PER_1000,
                "idle_fd_tolerance": IDLE_FD_TOLERANCE,
            },
            **verdict(growth, idle_before, idle_after),
        }
        log(
            f"  soak {out['seconds']} s: {result.successful} ok / {result.failed} failed calls, "
            f"{out['reloads']} reloads, {out['applies']} applies; per 1000 calls RSS {growth['rss_mib']} MiB, "
            f"fds {growth['fds']}, threads {growth['threads']}; idle fds {idle_before['fds']} → {idle_after['fds']}, "
            f"RSS {idle_before['rss_mib']} → {idle_after['rss_mib']} MiB; flat: {out['flat']} {out['problems']}"
        )
        return out
    finally:
        if carrier is not None:
            carrier.kill()
        agent.kill()
        if applier is not None:
            with contextlib.suppress(Exception):
                applier.close()
        if gw is not None:
            gw.stop()
        rtp.release()
