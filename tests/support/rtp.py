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
import itertools
import os
import subprocess
from dataclasses import dataclass, field

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
