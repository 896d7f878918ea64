"""Capacity of the product's rendered gateway on a real Asterisk 22, in the product topology.

    carrier (sipp UAC, 127.0.1.5, identified by IP)  --TCP SIP, RTP-->  gateway (127.0.1.1, rendered config,
    direct_media=no: Asterisk relays every packet)  --TCP SIP, RTP-->  "ElevenLabs" (sipp UAS at 127.0.1.3 that
    answers each call with the port of one of several sipp -rtp_echo processes)

The gateway resolves ``sip.rtc.elevenlabs.io`` to the UAS through a hosts file private to its mount
namespace (tests/asterisk/standin.py). The carrier streams G.711 mu-law in a loop (sipp's ``rtp_stream``,
audio converted from sipp's A-law pcap by bench/audio.py). RTP is counted on loopback per port range
(carrier ports, gateway range, echo ports), packets of exactly 200 bytes only (RTCP excluded), so the loss
of each hop is known:

    gateway forward  = 1 - to_echo / from_carrier      echo      = 1 - from_echo / to_echo
    gateway return   = 1 - to_carrier / from_echo      end to end = 1 - to_carrier / from_carrier
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sip_trunk_local.asterisk_runner import AsteriskError, AsteriskInstance, hosts_file, use_private_hosts
from sip_trunk_local.harness.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from sip_trunk_local.rtp import reserve_rtp_range
from sip_trunk_local.sipp import Sipp, free_port
from sip_trunk_local.topology import ELEVENLABS_HOST

from bench.audio import write_audio
from bench.capture_run import MediaCapture
from bench.common import CpuWindow, MediaCounter, find_child, loadavg, rss_mib
from bench.media_delay import marked_audio
from bench.topology import (
    AGENT_IP,
    CARRIER_IP,
    CODECS,
    GATEWAY_IP,
    Agent,
    carrier_scenario,
    pin,
    start_carrier,
    start_echo_agent,
)

__all__ = ["AGENT_IP", "CARRIER_IP", "CODECS", "GATEWAY_IP", "carrier_scenario"]


Edit = Callable[[str], str]


@dataclass
class ConfigVariant:
    """The rendered config, optionally post-edited (file name -> text edit) to measure a candidate change.
    ``asterisk_options`` are ``[options]`` lines of asterisk.conf (the harness writes its own file)."""

    name: str
    description: str
    edits: Mapping[str, Edit] = field(default_factory=dict)
    asterisk_options: Mapping[str, str | None] = field(default_factory=dict)
    hand_written: bool = False  # bench/reference/ instead of the renderer: the fixed side-by-side reference
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Settings merged over the bench's before rendering (e.g. ``{"dialplan": {"call_records": False}}``)."""


@dataclass
class GatewayInstance(AsteriskInstance):
    """An :class:`AsteriskInstance` whose asterisk.conf also carries the product's ``[options]``."""

    options: Mapping[str, str] = field(default_factory=dict)

    def _asterisk_conf(self) -> str:
        text = super()._asterisk_conf()
        extra = "".join(f"{k} = {v}\n" for k, v in self.options.items() if not text.count(f"\n{k} = "))
        return text + extra


def product_options(rendered_asterisk_conf: str) -> dict[str, str]:
    """``[options]`` of the rendered asterisk.conf, minus what cannot apply to a chrooted bench instance
    (runuser/rungroup: the harness runs Asterisk as root inside the chroot)."""
    opts: dict[str, str] = {}
    section = ""
    for raw in rendered_asterisk_conf.splitlines():
        line = raw.split(";", 1)[0].strip()
        if line.startswith("["):
            section = line.split("]", 1)[0].lstrip("[")
        elif section == "options" and "=" in line:
            key, value = (x.strip() for x in line.split("=", 1))
            if key not in ("runuser", "rungroup"):
                opts[key] = value
    return opts


def gateway_settings(sip_port: int, rtp: tuple[int, int], agent_port: int) -> tuple[dict[str, Any], dict[str, str]]:
    settings, secrets = load_example("minimal")
    e164 = settings["elevenlabs"]["phone_number"]
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": agent_port},
            "network": loopback_network(GATEWAY_IP, sip_port, rtp, tls_port=free_port(GATEWAY_IP)),
            "carriers": [ip_carrier(CARRIER_IP, free_port(CARRIER_IP), [e164])],
        },
    )
    return settings, secrets


def start_gateway(
    root: Path,
    workdir: Path,
    name: str,
    variant: ConfigVariant,
    *,
    sip_port: int,
    rtp: tuple[int, int],
    agent_port: int,
) -> tuple[AsteriskInstance, str]:
    """Render, post-edit, start; returns the instance and the E.164 the carrier dials. Call records (on in the
    product) go to a spool directory of the instance, so their cost is in every figure of the rendered config."""
    settings, secrets = gateway_settings(sip_port, rtp, agent_port)
    if variant.hand_written:
        return start_reference(root, name, sip_port=sip_port, rtp=rtp, agent_port=agent_port), str(
            settings["elevenlabs"]["phone_number"]
        )
    inst = GatewayInstance(root, name, extra_files={"hosts": hosts_file({ELEVENLABS_HOST: AGENT_IP})})
    spool = f"{inst.chroot_base}/calls"
    settings = merge(merge(settings, {"dialplan": {"call_records_dir": spool}}), dict(variant.settings))
    rendered = render_gateway(settings, secrets, workdir / f"gw-{name}")
    for fname, edit in variant.edits.items():
        path = rendered.asterisk_dir / fname
        path.write_text(edit(path.read_text() if path.exists() else ""))
    options = product_options(rendered.file("asterisk.conf"))
    for key, value in variant.asterisk_options.items():
        if value is None:
            options.pop(key, None)
        else:
            options[key] = value
    inst.config_dir, inst.options = rendered.asterisk_dir, options
    use_private_hosts(inst)
    inst.prepare()
    inst.host_path(spool).mkdir(parents=True, exist_ok=True)
    inst.start(prepare=False)
    return inst, str(settings["elevenlabs"]["phone_number"])


REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def start_reference(root: Path, name: str, *, sip_port: int, rtp: tuple[int, int], agent_port: int) -> AsteriskInstance:
    """The minimal hand-written relay (bench/reference/) in the same topology: same addresses, ports, hosts file."""
    inst = AsteriskInstance(
        root,
        name,
        REFERENCE_DIR,
        variables={
            "GATEWAY_IP": GATEWAY_IP,
            "SIP_PORT": str(sip_port),
            "RTP_START": str(rtp[0]),
            "RTP_END": str(rtp[1]),
            "CARRIER_IP": CARRIER_IP,
            "AGENT_HOST": ELEVENLABS_HOST,
            "AGENT_PORT": str(agent_port),
        },
        extra_files={"hosts": hosts_file({ELEVENLABS_HOST: AGENT_IP})},
    )
    use_private_hosts(inst)
    inst.start()
    return inst


def asterisk_pid(inst: AsteriskInstance) -> int:
    assert inst.pid is not None
    pid = find_child(inst.pid, "asterisk")
    if pid is None:
        raise RuntimeError(f"no asterisk process under {inst.pid}")
    return pid


def scheduling(pid: int) -> dict[str, int]:
    """The process's nice value and scheduling policy (0 = SCHED_OTHER, 2 = SCHED_RR) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return {"nice": int(fields[16]), "policy": int(fields[38]), "rt_priority": int(fields[37])}


def active_calls(inst: AsteriskInstance) -> int:
    m = re.search(r"(\d+) active call", inst.rx("core show channels count"))
    return int(m.group(1)) if m else 0


@dataclass
class Cli:
    """CLI queries during a level: a gateway too starved to answer its CLI in time is a result of the level
    (counted in ``timeouts``), not a broken benchmark."""

    inst: AsteriskInstance
    timeouts: int = 0

    def calls(self, default: int) -> int:
        try:
            return active_calls(self.inst)
        except AsteriskError:
            self.timeouts += 1
            return default

    def bridges(self) -> dict[str, int]:
        try:
            return _bridge_technologies(self.inst)
        except AsteriskError:
            self.timeouts += 1
            return {}


def _bridge_technologies(inst: AsteriskInstance) -> dict[str, int]:
    """How many bridges use each technology (native_rtp = relayed without decoding, simple_bridge = frames)."""
    counts: dict[str, int] = {}
    for line in inst.rx("bridge show all").splitlines():
        m = re.match(r"^[0-9a-f-]{36}\s.*?\s\d+\s+\S+\s+(\S+)\s+\d\d:\d\d:\d\d$", line.strip())
        if m:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def _ratio_loss(received: int, sent: int) -> float | None:
    return round(100 * (1 - received / sent), 3) if sent else None


@dataclass
class LevelPlan:
    calls: int
    call_s: float
    steady_s: float
    rate: float

    @property
    def ramp_s(self) -> float:
        return self.calls / self.rate


def plan(calls: int, *, quick: bool) -> LevelPlan:
    rate = float(min(50, max(10, math.ceil(calls / 10))))
    steady = 6.0 if quick else 20.0
    ramp = calls / rate
    call_s = max(8.0 if quick else 30.0, ramp + 3 + steady + 3)
    return LevelPlan(calls=calls, call_s=call_s, steady_s=steady, rate=rate)


def run_level(
    root: Path,
    workdir: Path,
    lp: LevelPlan,
    variant: ConfigVariant,
    *,
    carrier_codec: str = "ulaw",
    agent_codec: str = "ulaw",
    gateway_cpus: str | None = None,
    generator_cpus: str | None = None,
    capture_s: float | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One level: ``lp.calls`` concurrent calls for ``lp.call_s`` each; measures over the steady window.

    ``gateway_cpus``/``generator_cpus`` pin Asterisk and the generators (sipps, the capture) to those CPUs.
    ``capture_s``: the carrier plays audio marked per frame and the first ``capture_s`` seconds of the steady
    window are captured on loopback for the per-packet delay and jitter (bench/media_delay.py)."""
    workdir.mkdir(parents=True, exist_ok=True)
    audio = write_audio(workdir / "audio")["ulaw" if carrier_codec == "ulaw" else "alaw"]
    if capture_s is not None:
        marked = audio.with_name("marked-" + audio.name)
        marked.write_bytes(marked_audio(audio.read_bytes()))
        audio = marked
    gw_range = reserve_rtp_range(max(200, 4 * lp.calls + 100))
    uac_range = reserve_rtp_range(2 * lp.calls + 100)
    rtp, uac_base = gw_range.ports, uac_range.low
    sip_port = free_port(GATEWAY_IP)
    load_before = loadavg()
    started = time.monotonic()
    counters: dict[str, MediaCounter] = {}
    agent: Agent | None = None
    gw: AsteriskInstance | None = None
    uac: Sipp | None = None
    out: dict[str, Any] = {
        "calls": lp.calls,
        "call_s": lp.call_s,
        "rate_cps": lp.rate,
        "carrier_codec": carrier_codec,
        "agent_codec": agent_codec,
        "config": variant.name,
        "pinning": {"gateway": gateway_cpus, "generators": generator_cpus},
    }
    capture: MediaCapture | None = None
    try:
        agent, agent_port = start_echo_agent(workdir, lp.calls, agent_codec)
        name = f"bench-{variant.name}-{carrier_codec}-{agent_codec}-{lp.calls}"[:40]
        gw, e164 = start_gateway(root, workdir, name, variant, sip_port=sip_port, rtp=rtp, agent_port=agent_port)
        apid = asterisk_pid(gw)
        pin([apid], gateway_cpus)
        pin(agent.pids(), generator_cpus)
        rss_idle = rss_mib(apid)
        out["asterisk_scheduling"] = scheduling(apid)
        counters = {
            "carrier": MediaCounter((uac_base, uac_base + 2 * lp.calls + 99)).install(),
            "gateway": MediaCounter(rtp).install(),
            "echo": MediaCounter((agent.ports[0], agent.ports[-1] + 2)).install(),
        }
        uac = start_carrier(
            workdir,
            sip_port=sip_port,
            e164=e164,
            calls=lp.calls,
            rate=lp.rate,
            hold_ms=int(lp.call_s * 1000),
            timeout_s=lp.call_s + lp.ramp_s + 60,
            audio=audio,
            codec=carrier_codec,
            media_port=uac_base,
        )
        assert uac.process is not None
        pin([uac.process.pid], generator_cpus)
        # ramp: wait for every call (or the end of the ramp plus a margin), then let media settle
        deadline = time.monotonic() + lp.ramp_s + 8
        up = 0
        cli = Cli(gw)
        while time.monotonic() < deadline:
            up = cli.calls(up)
            if up >= lp.calls:
                break
            time.sleep(0.5)
        time.sleep(2)
        assert uac.process is not None
        window = CpuWindow({"asterisk": [apid], "carrier": [uac.process.pid], "agent": agent.pids()})
        before = {k: c.counts() for k, c in counters.items()}
        window.start()
        if capture_s is not None:
            capture = MediaCapture(workdir / "capture.bin", min(capture_s, lp.steady_s), generator_cpus).start()
        bridges = cli.bridges()
        steady_end = time.monotonic() + lp.steady_s
        min_up = up
        while time.monotonic() < steady_end:
            time.sleep(min(2.0, max(0.0, steady_end - time.monotonic())))
            min_up = min(min_up, cli.calls(min_up))
        cpu = window.stop()
        after = {k: c.counts() for k, c in counters.items()}
        if capture is not None:
            out["media_delay"] = capture.analyse()
            capture = None
        rss_loaded = rss_mib(apid)
        d = {k: (after[k].from_range - before[k].from_range, after[k].to_range - before[k].to_range) for k in after}
        from_carrier, to_carrier = d["carrier"]
        from_echo, to_echo = d["echo"]
        gw_sent, gw_recv = d["gateway"]
        result = uac.wait(timeout=lp.call_s + lp.ramp_s + 90)
        answered = agent.stop()["answered"]
        successful = result.successful or 0
        failed = lp.calls - successful
        log_text = gw.log_text("messages")
        out.update(
            {
                "calls_up_at_window_start": up,
                "calls_up_min_in_window": min_up,
                "failed_calls": failed,
                "sipp_failed": result.failed,
                "agent_answered": answered,
                "packets": {
                    "from_carrier": from_carrier,
                    "to_agent": to_echo,
                    "from_agent": from_echo,
                    "to_carrier": to_carrier,
                    "gateway_received": gw_recv,
                    "gateway_sent": gw_sent,
                },
                "loss_pct": {
                    "gateway_forward": _ratio_loss(to_echo, from_carrier),
                    "agent_echo": _ratio_loss(from_echo, to_echo),
                    "gateway_return": _ratio_loss(to_carrier, from_echo),
                    "gateway": _ratio_loss(to_echo + to_carrier, from_carrier + from_echo),
                    "end_to_end": _ratio_loss(to_carrier, from_carrier),
                },
                "expected_pps_each_way": 50 * lp.calls,
                "carrier_pps": round(from_carrier / cpu["seconds"]) if cpu["seconds"] else None,
                "cpu_pct": cpu,
                "asterisk_cpu_pct_per_call": round(cpu["asterisk"] / lp.calls, 3) if lp.calls else None,
                "asterisk_rss_mib": rss_loaded,
                "asterisk_rss_idle_mib": rss_idle,
                "asterisk_rss_mib_per_call": round((rss_loaded - rss_idle) / lp.calls, 3),
                "log_warnings": len(re.findall(r"\b(WARNING|ERROR)\[", log_text)),
                "log_maxload": len(re.findall(r"loadavg", log_text, re.IGNORECASE)),
                "log_sample": [ln for ln in log_text.splitlines() if "WARNING" in ln or "ERROR" in ln][:5],
                "bridges": bridges,
                "cli_timeouts": cli.timeouts,
            }
        )
        e2e = out["loss_pct"]["end_to_end"]
        out["ok"] = failed == 0 and e2e is not None and e2e < 1.0
    finally:
        if capture is not None:
            capture.kill()
        if uac is not None:
            uac.kill()
        if agent is not None:
            with contextlib.suppress(Exception):
                agent.stop()
        for c in counters.values():
            c.remove()
        for r in (gw_range, uac_range, *(agent.ranges if agent else [])):
            r.release()
        if gw is not None:
            gw.stop()
            shutil.copytree(gw.log_dir, workdir / "gateway-logs", dirs_exist_ok=True)
    out["loadavg_before"] = load_before
    out["loadavg_after"] = loadavg()
    out["wall_s"] = round(time.monotonic() - started, 1)
    log(_summary(out))
    return out


def _summary(r: dict[str, Any]) -> str:
    loss = r.get("loss_pct", {})
    cpu = r.get("cpu_pct", {})
    return (
        f"  {r['config']:<10} {r['carrier_codec']}->{r['agent_codec']} {r['calls']:>4} calls: "
        f"failed {r.get('failed_calls')}, loss gw {loss.get('gateway')}% echo {loss.get('agent_echo')}% "
        f"e2e {loss.get('end_to_end')}%, asterisk {cpu.get('asterisk')}% "
        f"({r.get('asterisk_cpu_pct_per_call')}%/call), carrier {cpu.get('carrier')}% agent {cpu.get('agent')}% "
        f"machine {cpu.get('machine')}%, RSS {r.get('asterisk_rss_mib')} MiB, load {r.get('loadavg_before')}"
    )
