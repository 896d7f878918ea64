"""The flood rate the gateway absorbs before a legitimate call is affected, with and without fail2ban's ban.

The capacity topology (bench/topology.py): the carrier's calls carry G.711 both ways through the product's
rendered gateway to the echoing agent. With ``calls`` of them up, a stranger (``STRANGER_IP``, no credentials)
sends unauthenticated INVITEs (tests/asterisk/scenarios/uac_noauth.xml, a new TCP connection per INVITE, the way a
scanner arrives) at a ramped rate for a fixed time, stopping by itself. A level passes when no legitimate call
fails and their end-to-end RTP loss over the flood stays below ``LOSS_LIMIT_PCT``; the rate is ramped
(bench/ramp.py) to the first failing level with one refinement. Each level runs on a fresh gateway.

**With the ban**: the same ramp while the stranger is banned. The product's jail bans with fail2ban's
``iptables-allports`` banaction (fail2ban-jail.local.j2; protocol tcp, the stock default); its ban is a chain
jumped to from INPUT for TCP holding ``-s <ip> -j <blocktype>``, blocktype read from the machine's
/etc/fail2ban/action.d/iptables.conf. The bench inserts exactly those rules for the stranger (a chain of its own
name) instead of having fail2ban ban it: the jail's ``ignoreip`` holds 127.0.0.0/8, so on this loopback topology
fail2ban would never ban the stranger (tests/asterisk/test_fail2ban.py proves the real ban in namespaces).

The offered rate is sipp's ``-r``; the achieved one is sipp's own count of calls created per second while it was
creating them (its ``-trace_stat`` rows): where it falls short the generator (sharing the machine's cores) saturated
first, not the gateway.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sip_trunk_local.asterisk_runner import AsteriskInstance
from sip_trunk_local.rtp import RtpCounter, iptables, reserve_rtp_range
from sip_trunk_local.sipp import Sipp, SippResult, free_port

from bench.audio import write_audio
from bench.capacity import Cli, asterisk_pid, start_gateway
from bench.common import REPO, CpuWindow, MediaCounter, loadavg
from bench.ramp import Ramp
from bench.topology import GATEWAY_IP, Agent, start_carrier, start_echo_agent
from bench.variants import RENDERED

STRANGER_IP = "127.0.1.7"
LOSS_LIMIT_PCT = 1.0
SATURATED = 0.9  # achieved below this share of the offered rate: the flood fell short of the offer
GENERATOR_BUSY_PCT = 80.0  # the flood generator's CPU (% of one core) from which it, not the gateway, limits it
IOQUEUE_FULL = "ioqueue->free_list"  # pjproject's assert when its I/O queue has no handle left for a connection
SETTLE_S = 2.0
BANACTION = "iptables-allports"
IPTABLES_ACTION = Path("/etc/fail2ban/action.d/iptables.conf")
DEFAULT_BLOCKTYPE = "REJECT --reject-with icmp-port-unreachable"
STATES = ("unbanned", "banned")
FLOOD_SCENARIO = REPO / "tests" / "asterisk" / "scenarios" / "uac_noauth.xml"  # tests/asterisk/test_flood.py's


@dataclass(frozen=True)
class FloodPlan:
    calls: int
    flood_s: float
    ramp: Ramp
    call_rate: float = 10.0  # legitimate calls placed per second

    @property
    def hold_ms(self) -> int:
        return int(1000 * (self.calls / self.call_rate + SETTLE_S + self.flood_s + 8))


FULL = FloodPlan(calls=20, flood_s=5.0, ramp=Ramp(start=200, step=400, top=2600))
QUICK = FloodPlan(calls=10, flood_s=2.0, ramp=Ramp(start=200, step=400, top=600))


# ------------------------------------------------------------------------------------------ pure parts
def level_passed(failed_calls: int | None, loss_pct: float | None, limit_pct: float = LOSS_LIMIT_PCT) -> bool:
    """A level passes when no legitimate call failed and their RTP loss was measured and below ``limit_pct``."""
    return failed_calls == 0 and loss_pct is not None and loss_pct < limit_pct


def achieved_rate(stat_csv: str) -> float | None:
    """sipp's own rate while it was creating calls, from its ``-trace_stat`` rows (one a second):
    ``TotalCallCreated`` over the time since ``StartTime`` at the last row still short of the final count (at the
    first row with the final count when every call was created within one period). Not ``CallRate(C)`` at the end:
    that also counts the seconds spent waiting for the last answers after the flood stopped."""
    rows = [r for r in csv.reader(stat_csv.splitlines(), delimiter=";") if r]
    if len(rows) < 2:
        return None
    header = [h.strip() for h in rows[0]]
    try:
        start_i, now_i, created_i = (
            header.index("StartTime"),
            header.index("CurrentTime"),
            header.index("TotalCallCreated"),
        )
        samples = [(_epoch(r[now_i]) - _epoch(r[start_i]), int(r[created_i])) for r in rows[1:]]
    except (ValueError, IndexError):
        return None
    final = samples[-1][1]
    if final == 0:
        return 0.0
    short = [(t, n) for t, n in samples if 0 < n < final and t > 0]
    t, n = short[-1] if short else next((t, n) for t, n in samples if n == final)
    return round(n / t, 1) if t > 0 else None


def _epoch(stamp: str) -> float:
    """The epoch seconds sipp writes last in each time field (``date<TAB>time<TAB>epoch``)."""
    return float(stamp.split()[-1])


def saturated(offered: float, achieved: float | None) -> bool:
    return achieved is not None and achieved < SATURATED * offered


def limited_by(offered: float, achieved: float | None, generator_cpu_pct: float | None) -> str | None:
    """What held the flood below its offer: the generator when it was busy on its core, else the gateway (sipp,
    idle, waited on the gateway's answers and connections). ``None`` when the offer was achieved."""
    if not saturated(offered, achieved):
        return None
    if generator_cpu_pct is not None and generator_cpu_pct >= GENERATOR_BUSY_PCT:
        return f"the generator ({generator_cpu_pct:g} % of a core)"
    return f"the gateway (the generator idle at {generator_cpu_pct} % of a core waited on its connections)"


def log_errors(messages_log: str) -> dict[str, Any]:
    """Asterisk's ERROR lines during a level: how many, how many say pjproject's I/O queue was full, a sample."""
    errors = [line for line in messages_log.splitlines() if re.search(r"\bERROR\[", line)]
    sample = list(dict.fromkeys(re.sub(r"^\[[^]]*\] ERROR\[\d+\]", "ERROR", line)[:160] for line in errors))[:3]
    return {"errors": len(errors), "ioqueue_full": sum(IOQUEUE_FULL in line for line in errors), "sample": sample}


def loss_pct(received: int, sent: int) -> float | None:
    return round(100 * (1 - received / sent), 3) if sent else None


def ban_rules(source: str, chain: str, blocktype: str = DEFAULT_BLOCKTYPE) -> list[list[str]]:
    """The iptables commands ``iptables-allports`` (protocol tcp) runs to start the jail and ban ``source``."""
    return [
        ["-N", chain],
        ["-A", chain, "-j", "RETURN"],
        ["-I", "INPUT", "-p", "tcp", "-j", chain],
        ["-I", chain, "1", "-s", source, "-j", *blocktype.split()],
    ]


def unban_rules(chain: str) -> list[list[str]]:
    return [["-D", "INPUT", "-p", "tcp", "-j", chain], ["-F", chain], ["-X", chain]]


def blocktype(action_conf: str) -> str:
    """``blocktype`` of fail2ban's iptables.conf (its [Init] default), or the stock default when absent."""
    found = re.search(r"^blocktype\s*=\s*(.+?)\s*$", action_conf, re.MULTILINE)
    return found.group(1) if found else DEFAULT_BLOCKTYPE


def state_summary(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ramp's history, the highest passing offered rate (0 when none passed) with its achieved rate, and
    what stopped the ramp."""
    history = [(int(lv["offered_rate"]), bool(lv["ok"])) for lv in levels]
    best = Ramp.found(history)
    top = next((lv for lv in levels if lv["offered_rate"] == best and lv["ok"]), None)
    failed = [lv for lv in levels if not lv["ok"]]
    first_fail = min(failed, key=lambda lv: lv["offered_rate"]) if failed else None
    if first_fail is None:
        stopped = f"no level failed up to {max((r for r, _ in history), default=0)} INVITE/s offered"
    else:
        why = []
        if first_fail.get("failed_calls"):
            why.append(f"{first_fail['failed_calls']} legitimate calls failed")
        if not first_fail.get("failed_calls") or (first_fail.get("loss_pct") or 0) >= LOSS_LIMIT_PCT:
            why.append(f"RTP loss {first_fail.get('loss_pct')} %")
        stopped = f"first failure at {first_fail['offered_rate']} INVITE/s offered: {', '.join(why)}"
    if top is not None and top.get("generator_saturated"):
        stopped += f"; at {best} offered the flood reached {top.get('achieved_rate')}/s"
        if top.get("limited_by"):
            stopped += f", held back by {top['limited_by']}"
    return {
        "history": history,
        "highest_passing_rate": best,
        "highest_passing_achieved_rate": top.get("achieved_rate") if top else None,
        "stopped": stopped,
    }


def summarize(states: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {name: state_summary(levels) for name, levels in states.items()}
    return {
        "by_state": out,
        "highest_passing_rate": out.get("unbanned", {}).get("highest_passing_rate"),
        "highest_passing_rate_banned": out.get("banned", {}).get("highest_passing_rate"),
    }


# ------------------------------------------------------------------------------------------ the ban
@dataclass
class Ban:
    """The stranger banned as the product's banaction bans it, in the host's filter table, for one level."""

    source: str
    chain: str = field(default_factory=lambda: f"f2b-flood-{os.getpid()}")
    installed: bool = False

    def __enter__(self) -> Ban:
        kind = blocktype(IPTABLES_ACTION.read_text()) if IPTABLES_ACTION.exists() else DEFAULT_BLOCKTYPE
        self.installed = True
        for rule in ban_rules(self.source, self.chain, kind):
            iptables(*rule)
        return self

    def __exit__(self, *_: object) -> None:
        if self.installed:
            for rule in unban_rules(self.chain):
                with contextlib.suppress(Exception):
                    iptables(*rule)


# ------------------------------------------------------------------------------------------ a level
def _flood(workdir: Path, sip_port: int, rate: int, flood_s: float) -> Sipp:
    calls = max(1, int(rate * flood_s))
    return Sipp(
        FLOOD_SCENARIO,
        workdir / "flood",
        remote=f"{GATEWAY_IP}:{sip_port}",
        transport="tn",
        local_ip=STRANGER_IP,
        service="100",
        keys={"from_user": "100"},
        calls=calls,
        rate=rate,
        limit=calls,
        max_socket=min(16000, 2 * calls + 64),
        global_timeout_s=flood_s + 20,
        extra_args=["-recv_timeout", "5000"],
        trace_messages=False,
    ).start()


def run_level(
    root: Path, workdir: Path, plan: FloodPlan, rate: int, *, banned: bool, log: Callable[[str], None] = print
) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    audio = write_audio(workdir / "audio")["ulaw"]
    gw_range = reserve_rtp_range(max(200, 4 * plan.calls + 100))
    uac_range = reserve_rtp_range(2 * plan.calls + 100)
    sip_port = free_port(GATEWAY_IP)
    out: dict[str, Any] = {"offered_rate": rate, "banned": banned, "calls": plan.calls, "flood_s": plan.flood_s}
    agent: Agent | None = None
    gw: AsteriskInstance | None = None
    uac = flood = None
    counters: dict[str, RtpCounter] = {}
    load_before = loadavg()
    try:
        agent, agent_port = start_echo_agent(workdir, plan.calls, "ulaw")
        name = f"bench-flood-{'ban' if banned else 'open'}-{rate}"
        gw, e164 = start_gateway(
            root, workdir, name, RENDERED, sip_port=sip_port, rtp=gw_range.ports, agent_port=agent_port
        )
        apid = asterisk_pid(gw)
        counters = {
            "carrier": MediaCounter((uac_range.low, uac_range.high)).install(),
            "gateway": MediaCounter(gw_range.ports).install(),
        }
        uac = start_carrier(
            workdir,
            sip_port=sip_port,
            e164=e164,
            calls=plan.calls,
            rate=plan.call_rate,
            hold_ms=plan.hold_ms,
            timeout_s=plan.hold_ms / 1000 + 60,
            audio=audio,
            media_port=uac_range.low,
        )
        cli = Cli(gw)
        deadline = time.monotonic() + plan.calls / plan.call_rate + 10
        up = 0
        while (up := cli.calls(up)) < plan.calls and time.monotonic() < deadline:
            time.sleep(0.25)
        time.sleep(SETTLE_S)
        with Ban(STRANGER_IP) if banned else contextlib.nullcontext():
            assert uac.process is not None
            before = {k: c.counts() for k, c in counters.items()}
            flood = _flood(workdir, sip_port, rate, plan.flood_s)
            assert flood.process is not None
            window = CpuWindow(
                {"asterisk": [apid], "flood": [flood.process.pid], "carrier": [uac.process.pid], "agent": agent.pids()}
            ).start()
            min_up, end = up, time.monotonic() + plan.flood_s
            while time.monotonic() < end and flood.running:
                min_up = min(min_up, cli.calls(min_up))
                time.sleep(0.5)
            cpu = window.stop()
            after = {k: c.counts() for k, c in counters.items()}
            flood_result: SippResult = flood.wait(timeout=30)
        result = uac.wait(timeout=plan.hold_ms / 1000 + 60)
        d = {k: (after[k].from_range - before[k].from_range, after[k].to_range - before[k].to_range) for k in after}
        from_carrier, to_carrier = d["carrier"]
        gw_sent, gw_recv = d["gateway"]
        achieved = achieved_rate(flood.file("stat.csv").read_text() if flood.file("stat.csv").exists() else "")
        failed = plan.calls - (result.successful or 0)
        loss = loss_pct(to_carrier, from_carrier)
        out.update(
            {
                "achieved_rate": achieved,
                "generator_saturated": saturated(rate, achieved),
                "limited_by": limited_by(rate, achieved, cpu.get("flood")),
                "flood_challenged": flood_result.successful,
                "flood_failed": flood_result.failed,
                "calls_up_before": up,
                "calls_up_min_during": min_up,
                "failed_calls": failed,
                "loss_pct": loss,
                "gateway_loss_pct": loss_pct(gw_sent, gw_recv),
                "packets": {
                    "from_carrier": from_carrier,
                    "to_carrier": to_carrier,
                    "gateway_received": gw_recv,
                    "gateway_sent": gw_sent,
                },
                "cpu_pct": cpu,
                "cli_timeouts": cli.timeouts,
                "ok": level_passed(failed, loss),
            }
        )
    finally:
        for proc in (flood, uac):
            if proc is not None:
                proc.kill()
        if agent is not None:
            with contextlib.suppress(Exception):
                agent.stop()
        for c in counters.values():
            c.remove()
        for r in (gw_range, uac_range, *(agent.ranges if agent else [])):
            r.release()
        if gw is not None:
            out["gateway_log"] = log_errors(gw.log_text("messages"))
            gw.stop()
            shutil.copytree(gw.log_dir, workdir / "gateway-logs", dirs_exist_ok=True)
    out["loadavg_before"] = load_before
    cpu_out = out.get("cpu_pct", {})
    log(
        f"  {'banned  ' if banned else 'unbanned'} {rate:>5} INVITE/s offered, {out.get('achieved_rate')} achieved "
        f"({out.get('flood_challenged')} challenged): {out.get('failed_calls')} calls failed, loss "
        f"{out.get('loss_pct')} %, Asterisk {cpu_out.get('asterisk')} %, flood {cpu_out.get('flood')} %, machine "
        f"{cpu_out.get('machine')} %, gateway log {out.get('gateway_log')} -> {'ok' if out.get('ok') else 'FAIL'}"
    )
    return out


def run(root: Path, workdir: Path, *, quick: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    states: dict[str, list[dict[str, Any]]] = {}
    for state in STATES:
        levels: list[dict[str, Any]] = []
        history: list[tuple[int, bool]] = []
        while (rate := plan.ramp.next_level(history)) is not None:
            level = run_level(root, workdir / f"{state}-{rate}", plan, rate, banned=state == "banned", log=log)
            levels.append(level)
            history.append((rate, bool(level["ok"])))
        states[state] = levels
    return {
        "method": (
            f"{plan.calls} G.711 calls up (RTP both ways through the rendered gateway), unauthenticated INVITEs "
            f"from a stranger for {plan.flood_s:g} s per level, a new TCP connection each; pass = 0 legitimate "
            f"calls failed and end-to-end RTP loss < {LOSS_LIMIT_PCT:g} % over the flood; banned = the "
            f"{BANACTION} ban rules inserted for the stranger"
        ),
        "plan": {
            "calls": plan.calls,
            "flood_s": plan.flood_s,
            "ramp": [plan.ramp.start, plan.ramp.step, plan.ramp.top],
        },
        "loss_limit_pct": LOSS_LIMIT_PCT,
        "levels": states,
        **summarize(states),
    }
