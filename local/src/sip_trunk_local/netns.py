"""Network namespaces joined by veth pairs, none attached to the host's network.

:class:`ElasticIpTopology` emulates EC2's Elastic IP NAT::

    client ns                     router ns                          instance ns "a"
    eth0 198.51.100.50/24 ─── wan 198.51.100.1/24   br0 10.0.0.1/24 ─┬─ eth0 10.0.0.10
                              1:1 DNAT/SNAT                          │  instance ns "b"
                              203.0.113.10 <-> 10.0.0.10             └─ eth0 10.0.0.11

Only documentation ranges (198.51.100.0/24, 203.0.113.0/24) and a private /24 that lives inside these
namespaces are used; nothing routes to the host or beyond. :meth:`ElasticIpTopology.move_public_address`
re-points the public address at another instance (an EIP re-association). :meth:`teardown` deletes every
namespace it made (with the veths and rules in them).

:class:`LocalTopology` is the local product's network: the same router, but its outside side is a bridge
(``wan``) that several "internet" namespaces join (the carrier/client, the ElevenLabs stand-in), instances
come and go on the private LAN, and any number of public addresses map 1:1 to instances. Its state is plain
data (:meth:`LocalTopology.to_state`), so another process can tear it down.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sip_trunk_local import topology

_TOPOLOGY_IDS = itertools.count(1)
_CLONE_NEWNET = 0x40000000


class NetnsError(RuntimeError):
    pass


def run(cmd: Sequence[str], *, check: bool = True, timeout: float = 20.0) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *cmd: str, check: bool = True) -> str:
    """Run a command inside a network namespace."""
    return run(["ip", "netns", "exec", ns, *cmd], check=check)


@dataclass
class NamespaceSet:
    """A set of network namespaces named ``<prefix>-<role>``; deletes them all on :meth:`teardown`."""

    prefix: str = field(default_factory=lambda: f"ast{os.getpid()}x{next(_TOPOLOGY_IDS)}")
    namespaces: list[str] = field(default_factory=list)

    def add(self, role: str) -> str:
        ns = f"{self.prefix}-{role}"
        run(["ip", "netns", "add", ns])
        self.namespaces.append(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return ns

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        """A veth pair created directly inside the namespaces (no name ever exists on the host)."""
        run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
        run(["ip", "-n", ns_a, "link", "set", if_a, "up"])
        run(["ip", "-n", ns_b, "link", "set", if_b, "up"])

    @staticmethod
    def address(ns: str, interface: str, cidr: str) -> None:
        run(["ip", "-n", ns, "addr", "add", cidr, "dev", interface])

    @staticmethod
    def default_route(ns: str, via: str) -> None:
        run(["ip", "-n", ns, "route", "add", "default", "via", via])

    def pids(self, ns: str) -> list[int]:
        out = run(["ip", "netns", "pids", ns], check=False)
        return [int(p) for p in out.split()]

    def teardown(self) -> list[int]:
        """Delete every namespace; returns PIDs that were still running inside (then killed)."""
        leftovers: list[int] = []
        for ns in reversed(self.namespaces):
            pids = self.pids(ns)
            leftovers += pids
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if pids:
                time.sleep(0.2)
            run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        return leftovers

    def __enter__(self) -> NamespaceSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()


@dataclass
class ElasticIpTopology(NamespaceSet):
    """Instance namespaces behind a router doing 1:1 NAT for a public "Elastic IP", plus an outside client."""

    public_ip: str = topology.PUBLIC_IP
    client_ip: str = topology.CLIENT_IP
    router_outside_ip: str = topology.ROUTER_OUTSIDE_IP
    outside_prefix: int = topology.OUTSIDE_PREFIX
    private_cidr: str = topology.PRIVATE_CIDR
    router_private_ip: str = topology.ROUTER_PRIVATE_IP
    router: str = field(default="", init=False)
    client: str = field(default="", init=False)
    instances: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)
    mapped_to: str | None = field(default=None, init=False)

    WAN_IF = "wan"
    BRIDGE = "br0"
    INSTANCE_IF = "eth0"
    CLIENT_IF = "eth0"

    def build(self, instances: Sequence[tuple[str, str]] = (("a", topology.FIRST_HOST_IP),)) -> ElasticIpTopology:
        """Create router + client namespaces and the given (label, private IP) instances; map the public
        address to the first instance."""
        try:
            self._build_router_and_client()
            for label, ip in instances:
                self.add_instance(label, ip)
            if instances:
                self.move_public_address(instances[0][0])
        except BaseException:
            self.teardown()
            raise
        return self

    def _build_router_and_client(self) -> None:
        self.router = self.add("router")
        self.client = self.add("client")
        r = self.router
        in_ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        run(["ip", "-n", r, "link", "add", self.BRIDGE, "type", "bridge"])
        run(["ip", "-n", r, "link", "set", self.BRIDGE, "up"])
        private_prefix = self.private_cidr.split("/")[1]
        self.address(r, self.BRIDGE, f"{self.router_private_ip}/{private_prefix}")
        self.veth(self.client, self.CLIENT_IF, r, self.WAN_IF)
        self.address(r, self.WAN_IF, f"{self.router_outside_ip}/{self.outside_prefix}")
        self.address(self.client, self.CLIENT_IF, f"{self.client_ip}/{self.outside_prefix}")
        self.default_route(self.client, self.router_outside_ip)
        # Outside traffic reaches the private range only through the public mapping (or as replies).
        ipt = ["iptables", "-w", "5"]
        in_ns(r, *ipt, "-A", "FORWARD", "-i", self.WAN_IF, "-d", self.private_cidr, "-m", "conntrack",
              "--ctstate", "DNAT,ESTABLISHED,RELATED", "-j", "ACCEPT")  # fmt: skip
        in_ns(r, *ipt, "-A", "FORWARD", "-i", self.WAN_IF, "-d", self.private_cidr, "-j", "DROP")
        in_ns(r, *ipt, "-t", "nat", "-N", "EIP_PRE")
        in_ns(r, *ipt, "-t", "nat", "-N", "EIP_POST")
        in_ns(r, *ipt, "-t", "nat", "-A", "PREROUTING", "-j", "EIP_PRE")
        in_ns(r, *ipt, "-t", "nat", "-A", "POSTROUTING", "-j", "EIP_POST")

    def add_instance(self, label: str, ip: str) -> str:
        """A namespace ``<prefix>-<label>`` with ``eth0`` = ``ip`` on the router's private bridge."""
        if label in self.instances:
            raise NetnsError(f"instance {label} exists")
        ns = self.add(label)
        router_if = f"v-{label}"[:15]
        self.veth(ns, self.INSTANCE_IF, self.router, router_if)
        run(["ip", "-n", self.router, "link", "set", router_if, "master", self.BRIDGE])
        private_prefix = self.private_cidr.split("/")[1]
        self.address(ns, self.INSTANCE_IF, f"{ip}/{private_prefix}")
        self.default_route(ns, self.router_private_ip)
        self.instances[label] = (ns, ip)
        return ns

    def instance_ns(self, label: str = "a") -> str:
        return self.instances[label][0]

    def instance_ip(self, label: str = "a") -> str:
        return self.instances[label][1]

    def move_public_address(self, label: str) -> None:
        """Map the public address 1:1 to instance ``label`` (replacing any previous mapping) and forget
        the router's connection tracking so existing flows do not keep the old target."""
        ip = self.instance_ip(label)
        r = self.router
        ipt = ["iptables", "-w", "5", "-t", "nat"]
        in_ns(r, *ipt, "-F", "EIP_PRE")
        in_ns(r, *ipt, "-F", "EIP_POST")
        in_ns(r, *ipt, "-A", "EIP_PRE", "-i", self.WAN_IF, "-d", self.public_ip, "-j", "DNAT",
              "--to-destination", ip)  # fmt: skip
        in_ns(r, *ipt, "-A", "EIP_POST", "-o", self.WAN_IF, "-s", ip, "-j", "SNAT", "--to-source",
              self.public_ip)  # fmt: skip
        # "conntrack -F" exits 1 when the table is already empty.
        in_ns(r, "conntrack", "-F", check=False)
        self.mapped_to = label

    def unmap_public_address(self) -> None:
        """Detach the public address (nothing answers on it afterwards)."""
        ipt = ["iptables", "-w", "5", "-t", "nat"]
        in_ns(self.router, *ipt, "-F", "EIP_PRE")
        in_ns(self.router, *ipt, "-F", "EIP_POST")
        in_ns(self.router, "conntrack", "-F", check=False)
        self.mapped_to = None

    def nat_rules(self) -> str:
        """The router's NAT table, for failure messages."""
        return in_ns(self.router, "iptables", "-w", "5", "-t", "nat", "-S")

    def __enter__(self) -> ElasticIpTopology:
        return self.build()


@dataclass
class LocalTopology(ElasticIpTopology):
    """The router of :class:`ElasticIpTopology` with a bridged outside segment and several public mappings::

        client ns 198.51.100.50 ─┐                                    ┌─ host ns 10.0.0.10
        stand-in ns 198.51.100.20 ┼─ wan (bridge) 198.51.100.1  router  br0 10.0.0.1 ─┼─ host ns 10.0.0.11
                                  ┘      DNAT/SNAT 203.0.113.x <-> 10.0.0.y            └─ ...

    Outside namespaces route everything (so 203.0.113.0/24 too) through the router; instances route
    through 10.0.0.1. Unsolicited outside traffic reaches an instance only through a public mapping.
    """

    outside: dict[str, tuple[str, str]] = field(default_factory=dict, init=False)
    mappings: dict[str, str] = field(default_factory=dict, init=False)  # public ip -> instance label

    def build(self, instances: Sequence[tuple[str, str]] = ()) -> LocalTopology:
        """Router, the wan bridge and the client namespace; instances as given (none mapped)."""
        try:
            self._build_router_and_client()
            for label, ip in instances:
                self.add_instance(label, ip)
        except BaseException:
            self.teardown()
            raise
        return self

    def _build_router_and_client(self) -> None:
        self.router = self.add("router")
        r = self.router
        in_ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for bridge in (self.BRIDGE, self.WAN_IF):
            run(["ip", "-n", r, "link", "add", bridge, "type", "bridge"])
            run(["ip", "-n", r, "link", "set", bridge, "up"])
        private_prefix = self.private_cidr.split("/")[1]
        self.address(r, self.BRIDGE, f"{self.router_private_ip}/{private_prefix}")
        self.address(r, self.WAN_IF, f"{self.router_outside_ip}/{self.outside_prefix}")
        self.address(r, self.WAN_IF, f"{topology.AWS_PUBLIC_GATEWAY}/{topology.AWS_PUBLIC_PREFIX}")
        ipt = ["iptables", "-w", "5"]
        in_ns(r, *ipt, "-A", "FORWARD", "-i", self.WAN_IF, "-d", self.private_cidr, "-m", "conntrack",
              "--ctstate", "DNAT,ESTABLISHED,RELATED", "-j", "ACCEPT")  # fmt: skip
        in_ns(r, *ipt, "-A", "FORWARD", "-i", self.WAN_IF, "-d", self.private_cidr, "-j", "DROP")
        in_ns(r, *ipt, "-t", "nat", "-N", "EIP_PRE")
        in_ns(r, *ipt, "-t", "nat", "-N", "EIP_POST")
        in_ns(r, *ipt, "-t", "nat", "-A", "PREROUTING", "-j", "EIP_PRE")
        in_ns(r, *ipt, "-t", "nat", "-A", "POSTROUTING", "-j", "EIP_POST")
        self.client = self.add_outside("client", self.client_ip)

    def add_outside(self, label: str, ip: str) -> str:
        """A namespace ``<prefix>-<label>`` with ``eth0`` = ``ip`` on the router's outside bridge (an address in
        192.0.2.0/24, AWS's public side, routes through the router's 192.0.2.1; any other through 198.51.100.1)."""
        if label in self.outside or label in self.instances:
            raise NetnsError(f"namespace label {label} exists")
        ns = self.add(label)
        router_if = f"o-{label}"[:15]
        self.veth(ns, self.CLIENT_IF, self.router, router_if)
        run(["ip", "-n", self.router, "link", "set", router_if, "master", self.WAN_IF])
        aws = ipaddress.IPv4Address(ip) in ipaddress.IPv4Network(
            f"{topology.AWS_PUBLIC_GATEWAY}/{topology.AWS_PUBLIC_PREFIX}", strict=False
        )
        prefix, gateway = (
            (topology.AWS_PUBLIC_PREFIX, topology.AWS_PUBLIC_GATEWAY)
            if aws
            else (self.outside_prefix, self.router_outside_ip)
        )
        self.address(ns, self.CLIENT_IF, f"{ip}/{prefix}")
        self.default_route(ns, gateway)
        self.outside[label] = (ns, ip)
        return ns

    def add_instance(self, label: str, ip: str) -> str:
        if label in self.outside:
            raise NetnsError(f"namespace label {label} exists")
        return super().add_instance(label, ip)

    def remove_instance(self, label: str) -> list[int]:
        """Delete an instance's namespace (its veth goes with it; a mapping to it is dropped).
        Returns the PIDs that were still inside (killed)."""
        ns, _ = self.instances.pop(label)
        for public_ip, mapped in list(self.mappings.items()):
            if mapped == label:
                del self.mappings[public_ip]
        self._write_mappings()
        pids = self.pids(ns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run(["ip", "netns", "del", ns], check=False)
        with contextlib.suppress(ValueError):
            self.namespaces.remove(ns)
        return pids

    def map_address(self, public_ip: str, label: str) -> None:
        """Map ``public_ip`` 1:1 to instance ``label`` (moving it from any other instance)."""
        if label not in self.instances:
            raise NetnsError(f"no instance {label}")
        for other, mapped in self.mappings.items():
            if mapped == label and other != public_ip:
                raise NetnsError(f"instance {label} already has public address {other}")
        self.mappings[public_ip] = label
        self._write_mappings()

    def unmap_address(self, public_ip: str) -> None:
        self.mappings.pop(public_ip, None)
        self._write_mappings()

    def move_public_address(self, label: str) -> None:
        self.map_address(self.public_ip, label)

    def unmap_public_address(self) -> None:
        self.unmap_address(self.public_ip)

    def _write_mappings(self) -> None:
        """Rewrite both NAT chains from :attr:`mappings` and forget tracked connections, so no flow keeps
        a previous target."""
        r = self.router
        ipt = ["iptables", "-w", "5", "-t", "nat"]
        in_ns(r, *ipt, "-F", "EIP_PRE")
        in_ns(r, *ipt, "-F", "EIP_POST")
        for public_ip, label in sorted(self.mappings.items()):
            ip = self.instance_ip(label)
            in_ns(r, *ipt, "-A", "EIP_PRE", "-i", self.WAN_IF, "-d", public_ip, "-j", "DNAT",
                  "--to-destination", ip)  # fmt: skip
            in_ns(r, *ipt, "-A", "EIP_POST", "-o", self.WAN_IF, "-s", ip, "-j", "SNAT", "--to-source",
                  public_ip)  # fmt: skip
        in_ns(r, "conntrack", "-F", check=False)  # exits 1 when the table is already empty
        self.mapped_to = self.mappings.get(self.public_ip)

    def to_state(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "namespaces": list(self.namespaces),
            "router": self.router,
            "client": self.client,
            "instances": {k: list(v) for k, v in self.instances.items()},
            "outside": {k: list(v) for k, v in self.outside.items()},
            "mappings": dict(self.mappings),
        }

    @classmethod
    def from_state(cls, state: dict[str, object]) -> LocalTopology:
        """The topology another process built (to tear it down or change its mappings)."""
        topo = cls(prefix=str(state["prefix"]))
        topo.namespaces = [str(n) for n in state.get("namespaces", [])]  # type: ignore[attr-defined]
        topo.router = str(state.get("router", ""))
        topo.client = str(state.get("client", ""))
        for attr in ("instances", "outside"):
            raw = state.get(attr) or {}
            assert isinstance(raw, dict)
            getattr(topo, attr).update({str(k): (str(v[0]), str(v[1])) for k, v in raw.items()})
        raw_map = state.get("mappings") or {}
        assert isinstance(raw_map, dict)
        topo.mappings = {str(k): str(v) for k, v in raw_map.items()}
        return topo

    def __enter__(self) -> LocalTopology:
        return self.build()


def list_namespaces() -> list[str]:
    """Every network namespace name on this machine (``ip netns list``)."""
    return [line.split()[0] for line in run(["ip", "netns", "list"], check=False).splitlines() if line.strip()]


def run_in_namespace(netns: str, func: Callable[[], Any]) -> Any:
    """Call `func` on a thread that joined network namespace `netns` (setns affects only that thread, and
    sockets belong to the namespace they were made in): how a probe "from the internet" is made locally."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            box["value"] = func()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"in-{netns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
