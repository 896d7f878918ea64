"""Count RTP packets with iptables counters, so tests prove media flowed (both directions).

A :class:`RtpCounter` owns one iptables chain (unique name) in the filter table of the host or of a network
namespace, jumped to from INPUT/OUTPUT/FORWARD for one interface. The chain holds two counting rules that
never decide anything (they RETURN implicitly):

* ``to_range``   UDP packets whose destination port is in the range (media arriving at those ports)
* ``from_range`` UDP packets whose source port is in the range (media sent from those ports)

On loopback every packet passes INPUT exactly once, so only INPUT is hooked there. Elsewhere INPUT
(``-i``), OUTPUT (``-o``) and FORWARD (``-i`` and ``-o``) are hooked, so a router namespace counts what it
forwards. :meth:`remove` deletes exactly the rules and chain it added.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import random
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_COUNTER_IDS = itertools.count(1)


class IptablesError(RuntimeError):
    pass


def iptables(*args: str, netns: str | None = None, table: str = "filter") -> str:
    cmd = ["iptables", "-w", "5", "-t", table, *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise IptablesError(f"{' '.join(cmd)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class RtpCounts:
    to_range: int
    from_range: int

    def __str__(self) -> str:
        return f"to_range={self.to_range} from_range={self.from_range}"


@dataclass
class RtpCounter:
    """Count UDP packets to/from ``ports`` (inclusive range) on ``interface`` (in ``netns``)."""

    ports: tuple[int, int]
    interface: str = "lo"
    netns: str | None = None
    chain: str = field(default="", init=False)
    _hooks: list[tuple[str, ...]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        low, high = self.ports
        if not 0 < low <= high < 65536:
            raise ValueError(f"bad port range {self.ports}")
        # Chain names are limited to 28 characters; pid + counter keep parallel runs apart.
        self.chain = f"RTPC{os.getpid()}_{next(_COUNTER_IDS)}"

    def _ipt(self, *args: str) -> str:
        return iptables(*args, netns=self.netns)

    def install(self) -> RtpCounter:
        low, high = self.ports
        span = f"{low}:{high}"
        self._ipt("-N", self.chain)
        self._ipt("-A", self.chain, "-p", "udp", "--dport", span, "-m", "comment", "--comment", "to_range")
        self._ipt("-A", self.chain, "-p", "udp", "--sport", span, "-m", "comment", "--comment", "from_range")
        if self.interface == "lo":
            hooks = [("INPUT", "-i", "lo")]
        else:
            i = self.interface
            hooks = [("INPUT", "-i", i), ("OUTPUT", "-o", i), ("FORWARD", "-i", i), ("FORWARD", "-o", i)]
        try:
            for hook in hooks:
                self._ipt("-I", *hook, "-j", self.chain)
                self._hooks.append(hook)
        except IptablesError:
            self.remove()
            raise
        return self

    def counts(self) -> RtpCounts:
        out = self._ipt("-L", self.chain, "-v", "-x", "-n")
        values: dict[str, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0].isdigit():
                for name in ("to_range", "from_range"):
                    if f"/* {name} */" in line:
                        values[name] = int(parts[0])
        return RtpCounts(values.get("to_range", 0), values.get("from_range", 0))

    def reset(self) -> None:
        self._ipt("-Z", self.chain)

    def remove(self) -> None:
        for hook in reversed(self._hooks):
            with contextlib.suppress(IptablesError):
                self._ipt("-D", *hook, "-j", self.chain)
        self._hooks.clear()
        for args in (("-F", self.chain), ("-X", self.chain)):
            with contextlib.suppress(IptablesError):
                self._ipt(*args)

    def __enter__(self) -> RtpCounter:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.remove()


# ------------------------------------------------------------------------------------------ allocation
# RTP ranges come from a pool *below* the kernel's ephemeral range (32768-60999 by default), so no port
# the kernel hands out (free_port(), sipp's media ports, outgoing TCP connections) can fall inside one.
# Blocks are reserved with an exclusive flock on one file per block, shared by every process on the
# machine: two test runs at once (or two tests in one run) never get overlapping ranges, and a block
# is released when its owner releases it or dies.
POOL_START = 20000
POOL_END = 32700  # exclusive
BLOCK = 100
LOCK_DIR = Path(os.environ.get("RTP_LOCK_DIR", "/run/lock/aws-sip-trunk-rtp"))


class RtpRangeError(RuntimeError):
    pass


@dataclass
class RtpRange:
    """A reserved, even-based range of UDP ports (``low``..``high`` inclusive); :meth:`release` ends it."""

    low: int
    high: int
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def ports(self) -> tuple[int, int]:
        return self.low, self.high

    def release(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        if self in _RESERVED:
            _RESERVED.remove(self)


_RESERVED: list[RtpRange] = []


def _ports_free(low: int, high: int) -> bool:
    socks: list[socket.socket] = []
    try:
        for port in range(low, high + 1):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("0.0.0.0", port))
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()
    return True


def reserve_rtp_range(size: int = BLOCK) -> RtpRange:
    """Reserve ``size`` ports (rounded up to whole blocks; the range returned has exactly ``size`` ports)
    that no other test, in this process or any other, holds; all of them free on this machine now.
    Held until :meth:`RtpRange.release` or :func:`release_rtp_ranges`."""
    if not 2 <= size <= POOL_END - POOL_START:
        raise ValueError(f"bad RTP range size {size}")
    blocks = -(-size // BLOCK)
    count = (POOL_END - POOL_START) // BLOCK
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    start = random.randrange(count)  # noqa: S311 - spreads concurrent runs over the pool, not a secret
    for offset in range(count):
        first = (start + offset) % count
        if first + blocks > count:
            continue
        fds: list[int] = []
        try:
            for index in range(first, first + blocks):
                fd = os.open(LOCK_DIR / f"{index:04d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            for fd in fds:
                os.close(fd)
            continue
        low = POOL_START + first * BLOCK
        reserved = RtpRange(low, low + size - 1, fds)
        if not _ports_free(low, low + blocks * BLOCK - 1):  # something outside this scheme holds a port
            reserved.release()
            continue
        _RESERVED.append(reserved)
        return reserved
    raise RtpRangeError(f"no free block of {blocks * BLOCK} RTP ports in {POOL_START}-{POOL_END - 1}")


def rtp_range(size: int = BLOCK) -> tuple[int, int]:
    """:func:`reserve_rtp_range` for callers that need only the bounds (released after the test)."""
    return reserve_rtp_range(size).ports


def release_rtp_ranges() -> None:
    """Release every range this process reserved (the harness does it after each test)."""
    while _RESERVED:
        _RESERVED.pop().release()
