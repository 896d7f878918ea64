"""What a split brain would look like, watched continuously during the failover drills, and the checks on it.

- :class:`AddressSampler` samples, every ``period_s`` on a thread of its own: the router's live NAT rules (which
  private addresses the Elastic IP is translated to: the data path, not anybody's bookkeeping), EC2's association
  of the address (moto), and whether SIP OPTIONS to the address from the outside gets an answer.
- :class:`LockLedger` sits on the dispatcher that runs the Failover functions and records, with the time, every
  lock acquired and released and every MoveAddress with its outcome, per execution.
- The checks are pure functions of those records (unit-tested with hand-made records, each with its violation):
  never two hosts behind the address; EC2 and the router agree but for a move in flight; every change of the
  address is a MoveAddress of an execution that held the lock; never two executions hold the lock at once; at
  most one execution moves the address per outage.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOCK_FUNCTION = "failover_lock"
MOVE_FUNCTION = "failover_move_eip"
AGREE_WITHIN_S = 1.0
"""EC2's association and the router may differ this long (the move being applied), no longer."""
MOVE_SLACK_S = 0.5
"""A change seen by the sampler is attributed to a MoveAddress that ended at most this long before it (the
sample after the move)."""


@dataclass(frozen=True)
class Sample:
    t: float
    targets: tuple[str, ...]
    """The instances the router translates the address to (its live DNAT rules)."""
    associated: str | None
    """The instance EC2 associates the address with."""
    answers: bool | None
    """SIP OPTIONS from the outside got a final response (None: not probed in this sample)."""


@dataclass(frozen=True)
class LedgerEntry:
    t: float
    execution: str
    what: str  # acquired | release | move-start | moved | not-moved | lock-held
    instance_id: str | None = None


def dnat_targets(nat_rules: str, public_ip: str) -> list[str]:
    """Private addresses ``iptables -t nat -S`` output translates ``public_ip`` to."""
    out = []
    for line in nat_rules.splitlines():
        if f"-d {public_ip}/32" in line and "DNAT" in line:
            found = re.search(r"--to-destination (\d+\.\d+\.\d+\.\d+)", line)
            if found:
                out.append(found.group(1))
    return out


@dataclass
class AddressSampler:
    """Samples the Elastic IP's data path, EC2's association and SIP answers until :meth:`stop`."""

    router_netns: str
    public_ip: str
    instances: Callable[[], Mapping[str, str]]
    """private address → instance id (hosts come and go)."""
    associated: Callable[[], str | None]
    probe: Callable[[], bool | None] | None = None
    period_s: float = 0.1
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def nat_rules(self) -> str:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.router_netns, "iptables", "-w", "5", "-t", "nat", "-S", "EIP_PRE"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"iptables -t nat -S EIP_PRE in {self.router_netns}: {proc.stderr.strip()}")
        return proc.stdout

    def sample(self) -> Sample:
        by_ip = self.instances()
        targets = tuple(by_ip.get(ip, ip) for ip in dnat_targets(self.nat_rules(), self.public_ip))
        associated = self.associated()
        answers = self.probe() if self.probe is not None else None
        return Sample(time.time(), targets, associated, answers)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.samples.append(self.sample())
            except Exception as exc:  # a sample that could not be taken is reported, and sampling goes on
                self.errors.append(f"{type(exc).__name__}: {exc}"[:300])
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - started)))

    def start(self) -> AddressSampler:
        self._thread = threading.Thread(target=self._run, name="address-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return list(self.samples)

    def since(self, t: float) -> list[Sample]:
        return [s for s in list(self.samples) if s.t >= t]


@dataclass
class KeptProber:
    """SIP OPTIONS to ``host:port`` over TCP every ``period_s`` from network namespace ``netns``, over one kept
    connection (`sip_trunk.sip.OptionsSession`, opened again after a failure): a new connection per probe at this
    rate would itself make Asterisk 22 close callers' fresh connections (ADR-31). :attr:`latest` is the last
    verdict, :attr:`connections` how many connections it opened (one per host that served it, plus retries
    while nothing answered)."""

    netns: str
    host: str
    port: int
    period_s: float = 0.2
    timeout_s: float = 0.3
    latest: bool | None = None
    connections: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        from sip_trunk.sip import OptionsSession, ProbeTarget, Transport

        session = OptionsSession(ProbeTarget(self.host, self.port, Transport.TCP), verify=False)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self.latest = bool(session.probe(self.timeout_s).reachable)
                self.connections = session.connections
                self._stop.wait(max(0.0, self.period_s - (time.monotonic() - started)))
        finally:
            session.close()

    def start(self) -> KeptProber:
        from sip_trunk_local.netns import run_in_namespace

        self._thread = threading.Thread(
            target=run_in_namespace, args=(self.netns, self._loop), name="kept-prober", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class LockLedger:
    """Dispatcher hooks (``before``/``after``) recording the Failover lock and moves, per execution.

    ``barrier``: the first ``barrier`` lock acquisitions wait for each other (up to ``barrier_timeout_s``), so
    two executions started by one outage reach AcquireLock together, the interleaving the lock exists for."""

    entries: list[LedgerEntry] = field(default_factory=list)
    barrier: int = 0
    barrier_timeout_s: float = 15.0
    _arrived: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def _add(self, execution: str, what: str, instance_id: str | None = None) -> None:
        with self._cond:
            self.entries.append(LedgerEntry(time.time(), execution, what, instance_id))

    def before(self, function: str, event: dict[str, Any]) -> None:
        execution = str((event.get("execution") or {}).get("name", "?"))
        if function == LOCK_FUNCTION and event.get("action") == "release":
            self._add(execution, "release")
        elif function == LOCK_FUNCTION and event.get("action") == "acquire":
            self._wait_for_peers()
        elif function == MOVE_FUNCTION:
            self._add(execution, "move-start", str((event.get("plan") or {}).get("to_instance_id")))

    def after(self, function: str, event: dict[str, Any], result: Any) -> None:
        execution = str((event.get("execution") or {}).get("name", "?"))
        if not isinstance(result, dict):
            return
        if function == LOCK_FUNCTION and event.get("action") == "acquire" and result.get("held"):
            self._add(execution, "acquired")
        elif function == MOVE_FUNCTION:
            self._add(execution, "moved" if result.get("moved") else "not-moved", result.get("instance_id"))

    def _wait_for_peers(self) -> None:
        with self._cond:
            if self._arrived >= self.barrier:
                return
            self._arrived += 1
            self._cond.notify_all()
            deadline = time.monotonic() + self.barrier_timeout_s
            while self._arrived < self.barrier and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))

    def arm(self, count: int) -> None:
        """Make the next ``count`` acquisitions meet (0: no barrier)."""
        with self._cond:
            self.barrier, self._arrived = count, 0

    @contextlib.contextmanager
    def installed(self, dispatcher: Any) -> Iterator[LockLedger]:
        dispatcher.before.append(self.before)
        dispatcher.after.append(self.after)
        try:
            yield self
        finally:
            dispatcher.before.remove(self.before)
            dispatcher.after.remove(self.after)

    def since(self, t: float) -> list[LedgerEntry]:
        with self._cond:
            return [e for e in self.entries if e.t >= t]


# --- the checks ----------------------------------------------------------------------------------------------


def holding_intervals(entries: Sequence[LedgerEntry], until: float) -> list[tuple[str, float, float]]:
    """(execution, from, to): from its lock acquired to its release (``until`` if it never released)."""
    out: list[tuple[str, float, float]] = []
    held: dict[str, float] = {}
    for e in sorted(entries, key=lambda e: e.t):
        if e.what == "acquired" and e.execution not in held:
            held[e.execution] = e.t
        elif e.what == "release" and e.execution in held:
            out.append((e.execution, held.pop(e.execution), e.t))
    out += [(execution, start, until) for execution, start in held.items()]
    return sorted(out, key=lambda i: i[1])


def check_lock(entries: Sequence[LedgerEntry], until: float) -> list[str]:
    """Never two executions hold the lock at the same time."""
    problems = []
    intervals = holding_intervals(entries, until)
    for i, (a, a0, a1) in enumerate(intervals):
        for b, b0, b1 in intervals[i + 1 :]:
            if b0 < a1 and a0 < b1:
                problems.append(f"two Failover executions held the lock at once: {a} and {b}")
    return problems


def check_one_move(entries: Sequence[LedgerEntry]) -> list[str]:
    """At most one execution moves the address (per outage: the entries of one drill run)."""
    movers = sorted({e.execution for e in entries if e.what == "moved"})
    return [f"{len(movers)} Failover executions moved the address: {', '.join(movers)}"] if len(movers) > 1 else []


def check_single_holder(samples: Sequence[Sample]) -> list[str]:
    """Never two hosts behind the address."""
    return [
        f"at {s.t:.3f} the address was translated to {len(s.targets)} hosts: {', '.join(s.targets)}"
        for s in samples
        if len(s.targets) > 1
    ]


def check_agreement(samples: Sequence[Sample], within_s: float = AGREE_WITHIN_S) -> list[str]:
    """EC2's association and the router's translation differ only while a move is applied."""
    problems = []
    since: float | None = None
    for s in samples:
        target = s.targets[0] if len(s.targets) == 1 else None
        if target == s.associated or (not s.targets and s.associated is None):
            since = None
            continue
        since = s.t if since is None else since
        if s.t - since > within_s:
            problems.append(f"from {since:.3f} EC2 associated the address with {s.associated} but the router sent "
                            f"it to {', '.join(s.targets) or 'nobody'} for over {within_s:g} s")  # fmt: skip
            since = None
    return problems


def check_moves_attributed(
    samples: Sequence[Sample], entries: Sequence[LedgerEntry], slack_s: float = MOVE_SLACK_S
) -> list[str]:
    """Every change of the host behind the address is a MoveAddress, by an execution holding the lock, to it."""
    problems = []
    until = max([s.t for s in samples] + [e.t for e in entries] + [0.0])
    intervals = holding_intervals(entries, until)
    starts = {(e.execution, e.instance_id): e.t for e in entries if e.what == "move-start"}
    moves = [e for e in entries if e.what == "moved"]
    for before, after in itertools.pairwise(samples):
        if before.targets == after.targets or not after.targets:
            continue
        target = after.targets[0]
        found = False
        for move in moves:
            began = starts.get((move.execution, move.instance_id), move.t)
            if move.instance_id != target or not (began - slack_s <= after.t and before.t <= move.t + slack_s):
                continue
            held = any(x == move.execution and start <= began and move.t <= end for x, start, end in intervals)
            if not held:
                problems.append(f"{move.execution} moved the address to {target} without holding the lock")
            found = True
        if not found:
            was = ", ".join(before.targets) or "nobody"
            problems.append(
                f"between {before.t:.3f} and {after.t:.3f} the address went from {was} to {target} without a "
                "Failover execution moving it"
            )
    return problems


def check_all(samples: Sequence[Sample], entries: Sequence[LedgerEntry]) -> list[str]:
    until = max([s.t for s in samples] + [e.t for e in entries] + [0.0])
    return [
        *check_single_holder(samples),
        *check_agreement(samples),
        *check_moves_attributed(samples, entries),
        *check_lock(entries, until),
        *check_one_move(entries),
    ]


def check_roles(
    boot_role: str | None, table: Mapping[str, str | None], instance_id: str, role_env: Mapping[str, str]
) -> list[str]:
    """A host that came back took the role the state table gives it, at boot and in ``role.env``."""
    expected = "primary" if table.get("primary") == instance_id else "standby"
    problems = []
    if boot_role is not None and boot_role != expected:
        problems.append(f"{instance_id} booted {boot_role} while the state table names {table.get('primary')} primary")
    if role_env.get("SIP_TRUNK_ROLE") != expected:
        problems.append(f"{instance_id}'s role.env says {role_env.get('SIP_TRUNK_ROLE')}, the state table {expected}")
    return problems
