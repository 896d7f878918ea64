"""Local "EC2 hosts": each a network namespace on the shared LAN 10.0.0.0/24 behind the Elastic-IP router, an
Asterisk 22 chrooted into a copy-on-write root of its own, and the real host agent (``sip-trunk-agent``)
run the way SSM Run Command and systemd run it on EC2.

* network: :class:`~sip_trunk_local.netns.LocalTopology` — router (1:1 NAT for each public address), the
  outside bridge with the carrier/client namespace (198.51.100.50) and the ElevenLabs stand-in, one namespace
  per host on the LAN;
* disk: :class:`~sip_trunk_local.asterisk_runner.OverlayRoot` over the cached Asterisk root, with the image's
  bootstrap config in ``/etc/asterisk`` (a TCP transport on 5060 that answers probes, no endpoints) and
  ``/etc/hosts`` naming the stand-in ``sip.rtc.elevenlabs.io``;
* AWS: the agent reaches the moto server through ``AWS_ENDPOINT_URL=http://127.0.0.1:<port>`` inside the host's
  namespace, a line of the host's own ``/etc/sip-trunk/agent.env`` (with its instance profile role's credentials,
  which IMDS gives on EC2, or the account's for a host started without one); a socat pair carries that port over
  a Unix socket to the moto server on this machine's loopback, so no namespace is attached to the host network;
* processes on a host see the host's ``/etc/sip-trunk`` and ``/usr/local/bin`` at those paths (bind mounts in a
  private mount namespace per process; the machine gets an empty ``/etc/sip-trunk`` as the mount point), so the
  agent finds ``/etc/sip-trunk/agent.env`` and ``/usr/local/bin/sip-trunk-agent`` exactly where the image puts
  them on EC2;
* SSM Run Command (:meth:`LocalHostManager.run_shell_script`) runs as ``AWS-RunShellScript`` does: the commands
  written to ``_script.sh`` in a fresh orchestration directory, run with ``sh`` as root with only the SSM agent's
  environment (``PATH``, ``AWS_SSM_INSTANCE_ID``, ``AWS_SSM_REGION_NAME``) and that directory as working directory;
* systemd units (:meth:`LocalHostManager.unit_command`) run with exactly the environment their unit file gives
  (``Environment=``, ``EnvironmentFile=``; ``${VAR}`` in ``ExecStart=`` expanded as systemd does), parsed from the
  units the agent installed into the host's ``/etc/systemd/system``: the standby's ``watch-peer`` and the
  heartbeat are started that way;
* fail2ban (systemd's ``fail2ban.service`` on EC2): ``fail2ban-server`` in the host's namespace, started with
  the host (and at power-on), with the configuration in the host's ``/etc/fail2ban`` — the package's, then the
  jail and filter the agent's ``apply`` writes there — and the host's Asterisk security log; the agent's
  ``SIP_TRUNK_FAIL2BAN_RELOAD`` is this server's ``fail2ban-client reload``, so an apply takes effect. Its
  banaction (iptables) bans in the host's namespace, ahead of the security group's rules, which a rewrite of
  the group keeps.

Everything the manager starts is recorded (PID + process start time, namespaces, mounts) in
``<run_dir>/hosts.json`` after every change, so :meth:`LocalHostManager.teardown` in another process (``sip-trunk
local down``) ends exactly those processes by PID and removes exactly those namespaces and mounts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sip_trunk.agent.bootstrap import host_file

from sip_trunk_local import fail2ban
from sip_trunk_local.asterisk_runner import (
    HOST_CONF,
    AsteriskError,
    HostAsterisk,
    OverlayRoot,
    is_mounted,
    kill_recorded,
    process_start_time,
    root_problem,
    user_ids,
)
from sip_trunk_local.firewall import DROP_COMMENT, HostFirewall, keep_chains
from sip_trunk_local.netns import LocalTopology, NetnsError, list_namespaces, run
from sip_trunk_local.topology import (
    CLIENT_IP,
    CONTROL_PLANE_IP,
    ELEVENLABS_HOST,
    PROBE_FUNCTION_IP,
    PUBLIC_IP,
    STANDIN_IP,
)

STATE_FILE = "hosts.json"
ROLES = ("primary", "standby")
WATCH_PEER_UNIT = "sip-trunk-watch-peer.service"
BOOT_UNIT = "sip-trunk-boot.service"
PARTITION_COMMENT = "local-partition"
HEARTBEAT_UNIT = "sip-trunk-agent.service"

_BOOTSTRAP_MODULES = """res_pjproject res_sorcery_config res_sorcery_memory res_sorcery_astdb res_pjsip
res_pjsip_session
res_pjsip_pubsub chan_pjsip res_timing_timerfd pbx_config"""
# The image's Asterisk config before the first `apply`: directories as the rendered asterisk.conf names them,
# a TCP transport that answers SIP probes, no endpoints (so nothing can be called).
BOOTSTRAP_CONFIG: dict[str, str] = {
    "asterisk.conf": (
        "; bootstrap config of the local host image (replaced by the first `sip-trunk-agent apply`)\n"
        "[directories](!)\nastetcdir => /etc/asterisk\nastmoddir => /usr/lib/asterisk/modules\n"
        "astvarlibdir => /var/lib/asterisk\nastdbdir => /var/lib/asterisk\nastkeydir => /var/lib/asterisk\n"
        "astdatadir => /usr/share/asterisk\nastagidir => /usr/share/asterisk/agi-bin\n"
        "astspooldir => /var/spool/asterisk\nastrundir => /var/run/asterisk\nastlogdir => /var/log/asterisk\n"
        "astsbindir => /usr/sbin\n\n[options]\ntransmit_silence = no\n"
    ),
    "modules.conf": "[modules]\nautoload = no\n" + "".join(f"load = {m}.so\n" for m in _BOOTSTRAP_MODULES.split()),
    "pjsip.conf": "[transport-tcp]\ntype = transport\nprotocol = tcp\nbind = 0.0.0.0:5060\n",
    "extensions.conf": "[general]\nstatic = yes\nwriteprotect = yes\n",
    "logger.conf": "[logfiles]\nmessages.log => notice,warning,error\n",
    **{f"{name}.conf": "" for name in ("cdr", "cel", "features", "acl", "udptl", "pjproject", "rtp")},
}


_PROBE = """
import json, sys
from sip_trunk.sip import ProbeTarget, probe_options
target = ProbeTarget(sys.argv[1], int(sys.argv[2]), sys.argv[3])
r = probe_options(target, float(sys.argv[4]), verify=False)
print(json.dumps({"reachable": r.reachable, "status_code": r.status_code, "reason": r.reason,
                  "rtt_ms": r.rtt_ms, "elapsed_ms": r.elapsed_ms, "server": r.server}))
"""


def namespace_prefix(run_dir: Path) -> str:
    """What the names of a local world's namespaces start with (``<prefix>-router``, ``<prefix>-h1`` …): one
    per run directory, so two deployments on one machine (a demo and a test run) never share a namespace."""
    return "lh" + hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:6]


class HostError(RuntimeError):
    """A local host could not be started, reached or removed."""


class UnitError(HostError):
    """A systemd unit would not start as written (what systemd refuses: a missing EnvironmentFile= …)."""


SSM_AGENT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/snap/bin"
"""PATH of the SSM agent's processes on Ubuntu (the only variable of its environment besides AWS_SSM_*)."""
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
"""PATH systemd gives every service."""
HOST_MOUNTS = ("/etc/sip-trunk", "/usr/local/bin")
"""Directories of a host that its processes see at their real path (the agent's files and command)."""
HOST_FILE_MOUNTS = ("/etc/passwd", "/etc/group")
"""Files of a host its processes see: its user database (the agent gives releases to the host's asterisk group)."""
IMAGE_SCRIPTS = ("build-asterisk.sh", "install-agent.sh")
"""The image's scripts whose ``install -d`` lines make the host's directories (owners and modes)."""
SSM_ORCHESTRATION = (
    "/var/lib/amazon/ssm/{instance}/document/orchestration/{command}/awsrunShellScript/0.awsrunShellScript"
)
"""Where the SSM agent writes a command's ``_script.sh`` and runs it (its working directory)."""
# Bind the host's directories over the machine's in a private mount namespace, then run the command.
_HOST_EXEC = (
    "root=$1; shift; for dir in " + " ".join(HOST_MOUNTS) + '; do mkdir -p "$dir" "$root$dir" && '
    'mount --bind "$root$dir" "$dir" || { echo "cannot mount $root$dir on $dir" >&2; exit 125; }; done; '
    "for file in " + " ".join(HOST_FILE_MOUNTS) + '; do mount --bind "$root$file" "$file" || '
    '{ echo "cannot mount $root$file on $file" >&2; exit 125; }; done; exec "$@"'
)


def install_dirs(script: str) -> list[tuple[str | None, str | None, int | None, list[str]]]:
    """The ``install -d [-o OWNER] [-g GROUP] [-m MODE] DIR…`` lines of a shell script (with ``\\``
    continuations): [(owner, group, mode, dirs)]."""
    out: list[tuple[str | None, str | None, int | None, list[str]]] = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] != ["install", "-d"]:
            continue
        owner = group = None
        mode: int | None = None
        dirs: list[str] = []
        rest = iter(words[2:])
        for word in rest:
            if word == "-o":
                owner = next(rest)
            elif word == "-g":
                group = next(rest)
            elif word == "-m":
                mode = int(next(rest), 8)
            else:
                dirs.append(word)
        out.append((owner, group, mode, dirs))
    return out


def in_root(root: Path, inside: str) -> Path:
    """``inside`` (an absolute path of the host) on this machine, following the host's symlinks inside its root
    (``/var/run`` → ``/run``), never out of it."""
    current = root
    for part in Path(inside).parts[1:]:
        candidate = current / part
        hops = 0
        while candidate.is_symlink() and hops < 10:
            target = Path(os.readlink(candidate))
            candidate = root / target.relative_to("/") if target.is_absolute() else candidate.parent / target
            hops += 1
        current = candidate
    return current


@dataclass
class ScriptRun:
    """What the SSM agent observed of one AWS-RunShellScript run."""

    code: int
    stdout: str
    stderr: str
    timed_out: bool
    workdir: Path


@dataclass
class Recorded:
    """A process the manager started: PID, the kernel's start time (so a reused PID is never signalled)
    and whether the PID leads its own process group."""

    pid: int
    start_time: int | None
    group: bool = True

    @property
    def alive(self) -> bool:
        return process_start_time(self.pid) is not None and (
            self.start_time is None or process_start_time(self.pid) == self.start_time
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        kill_recorded(self.pid, self.start_time, sig, group=self.group)

    @classmethod
    def of(cls, proc: subprocess.Popen[Any]) -> Recorded:
        return cls(proc.pid, process_start_time(proc.pid))


@dataclass
class LocalHost:
    """One local host (what an EC2 instance is in AWS)."""

    instance_id: str
    private_ip: str
    role: str
    label: str
    netns: str
    base: Path
    asterisk: HostAsterisk
    peer_address: str | None = None
    watch: Recorded | None = None
    bridge: Recorded | None = None
    fail2ban: Recorded | None = None
    started_seconds: float | None = None
    agent_env_extra: dict[str, str] = field(default_factory=dict)
    """Lines added to this host's agent.env beyond the deployment's (see `LocalHostManager.write_agent_env`)."""
    credentials: dict[str, str] = field(default_factory=dict)
    """Its instance profile role's credentials (`AWS_ACCESS_KEY_ID` …); empty: the account's."""
    rebooted: bool = False
    """Powered off and on again (`LocalHostManager.power_on`): its agent.env no longer names the launch role, as
    on EC2 (where the role at launch is the instance tag and later boots decide the role themselves)."""

    @property
    def root(self) -> Path:
        """The host's root file system on this machine."""
        return self.base / "root"

    def rx(self, command: str, *, timeout: float = 15.0) -> str:
        """One Asterisk CLI command on this host."""
        return self.asterisk.rx(command, timeout=timeout)

    def path(self, inside: str) -> Path:
        """A path of the host (``/etc/asterisk/pjsip.conf``) on this machine."""
        return self.root / inside.lstrip("/")

    @property
    def fail2ban_dir(self) -> Path:
        """The host's ``/etc/fail2ban`` on this machine (the agent's ``SIP_TRUNK_FAIL2BAN_DIR``)."""
        return self.path("/etc/fail2ban")

    @property
    def fail2ban_socket(self) -> Path:
        """The host's ``/run/fail2ban/fail2ban.sock`` (on /run when that path is too long for a Unix socket)."""
        path = in_root(self.root, "/run/fail2ban/fail2ban.sock")
        if len(str(path)) < 100:
            return path
        return Path(f"/run/aws-sip-trunk-f2b-{hashlib.sha256(str(self.base).encode()).hexdigest()[:12]}.sock")

    def log_text(self, name: str = "messages") -> str:
        path = self.path(f"/var/log/asterisk/{name}" + ("" if name.endswith(".log") else ".log"))
        return path.read_text(errors="replace") if path.exists() else ""

    def to_state(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "private_ip": self.private_ip,
            "role": self.role,
            "label": self.label,
            "netns": self.netns,
            "base": str(self.base),
            "peer_address": self.peer_address,
            "asterisk": {"pid": self.asterisk.pid, "start_time": self.asterisk.start_time},
            "watch": asdict(self.watch) if self.watch else None,
            "bridge": asdict(self.bridge) if self.bridge else None,
            "fail2ban": asdict(self.fail2ban) if self.fail2ban else None,
            "started_seconds": self.started_seconds,
        }


def _agent_command() -> list[str]:
    """``sip-trunk-agent`` of this Python environment (the console script next to the interpreter)."""
    script = Path(sys.executable).parent / "sip-trunk-agent"
    if script.is_file():
        return [str(script)]
    found = shutil.which("sip-trunk-agent")
    return [found] if found else [sys.executable, "-m", "sip_trunk.agent"]


def parse_unit(text: str) -> dict[str, Any]:
    """The ``[Service]`` section of a systemd unit: ``env`` = [(Environment|EnvironmentFile, value)] in file order,
    every other key → [(key, value)] (``ExecStart`` may repeat)."""
    service: dict[str, Any] = {"env": []}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Service" or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key in ("Environment", "EnvironmentFile"):
            service["env"].append((key, value))
        else:
            service.setdefault(key, []).append((key, value))
    return service


def parse_environment_assignments(value: str) -> dict[str, str]:
    """``Environment=A=1 "B=two words"``."""
    out: dict[str, str] = {}
    for word in shlex.split(value):
        key, sep, val = word.partition("=")
        if sep:
            out[key] = val
    return out


def expand_exec(command: str, env: Mapping[str, str]) -> list[str]:
    """``ExecStart=`` as systemd runs it: words split like a shell's, ``${VAR}`` replaced inside its word (an
    unset variable by nothing), a word that is exactly ``$VAR`` replaced by the value split at whitespace; the
    ``-``/``@``/``+``/``!`` prefixes of the executable dropped."""
    words = shlex.split(command)
    if words:
        words[0] = words[0].lstrip("-@+!:")
    out: list[str] = []
    for word in words:
        if word.startswith("$") and not word.startswith("${") and word[1:].replace("_", "").isalnum():
            out += env.get(word[1:], "").split()
            continue
        while "${" in word:
            start = word.index("${")
            end = word.index("}", start)
            word = word[:start] + env.get(word[start + 2 : end], "") + word[end + 1 :]
        out.append(word)
    return out


def with_options(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """``argv`` with the values of the named ``--option value`` pairs replaced."""
    out = list(argv)
    for index, word in enumerate(out[:-1]):
        if word in values:
            out[index + 1] = values[word]
    return out


def _wait_listening(netns: str, port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = run(["ip", "netns", "exec", netns, "ss", "-Hltn", f"sport = :{port}"], check=False)
        if out.strip():
            return True
        time.sleep(0.05)
    return False


CONTROL_PLANE_LABEL = "lambda"
"""The outside namespace the control plane probes from."""
PROBE_FUNCTION_LABEL = "vprobe"
"""The LAN namespace of the in-VPC probe function."""


class LocalHostManager:
    """Start, stop, crash and command local hosts; move public addresses between them; tear everything down.

    ``run_dir`` holds the state file, each host's disk (``hosts/<instance-id>/``) and logs; ``root`` is the
    cached Asterisk root file system (``make asterisk-root``); ``moto_endpoint`` is the moto server's URL on this
    machine. ``agent_env`` is the agent's deployment environment (``SIP_TRUNK_STACK``, ``SIP_TRUNK_STATE_TABLE``,
    ``SIP_TRUNK_BACKUP_BUCKET``, ``SIP_TRUNK_RECORDINGS_BUCKET``, ``SIP_TRUNK_FAILOVER_STATE_MACHINE_ARN`` …, as the
    host stack's user data writes it to ``agent.env``); ``watch_interval_s``/``watch_failures`` are the standby's
    ``watch-peer`` settings. Constructing a manager over a ``run_dir`` that holds state adopts it (for
    :meth:`status` and :meth:`teardown` from another process).
    """

    def __init__(
        self,
        run_dir: Path,
        root: Path,
        moto_endpoint: str,
        region: str,
        *,
        agent_env: Mapping[str, str] | None = None,
        public_ip: str = PUBLIC_IP,
        watch_interval_s: float = 1.0,
        watch_failures: int = 3,
        watch_timeout_s: float = 1.0,
        asterisk_maxload: float | None = 0.0,
        command_timeout_s: float = 600.0,
        firewall: HostFirewall | None = None,
    ) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.firewall = firewall
        self.root = Path(root)
        self.moto_endpoint = moto_endpoint
        self.region = region
        self.agent_env = dict(agent_env or {})
        self.public_ip = public_ip
        self.watch_interval_s = watch_interval_s
        self.watch_failures = watch_failures
        self.watch_timeout_s = watch_timeout_s
        self.asterisk_maxload = asterisk_maxload
        self.command_timeout_s = command_timeout_s
        self.hosts: dict[str, LocalHost] = {}
        self.topology: LocalTopology | None = None
        self.moto_bridge: Recorded | None = None
        self.extra_processes: dict[str, Recorded] = {}  # stand-in, carrier …: name -> process
        self.extra_state: dict[str, Any] = {}
        self.labels = 0
        self._lock = threading.RLock()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.state_path.exists():
            self._load()

    # --- state -------------------------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def moto_port(self) -> int:
        parts = urlsplit(self.moto_endpoint)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def moto_socket(self) -> Path:
        path = self.run_dir / "moto.sock"
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(self.run_dir).encode()).hexdigest()[:12]
        return Path(f"/run/aws-sip-trunk-moto-{digest}.sock")

    def _save(self) -> None:
        state = {
            "root": str(self.root),
            "moto_endpoint": self.moto_endpoint,
            "region": self.region,
            "public_ip": self.public_ip,
            "labels": self.labels,
            "topology": self.topology.to_state() if self.topology else None,
            "moto_bridge": asdict(self.moto_bridge) if self.moto_bridge else None,
            "hosts": {iid: host.to_state() for iid, host in self.hosts.items()},
            "extra_processes": {name: asdict(rec) for name, rec in self.extra_processes.items()},
            "extra": self.extra_state,
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_path)

    def _load(self) -> None:
        state = json.loads(self.state_path.read_text())
        self.labels = int(state.get("labels", 0))
        if state.get("topology"):
            self.topology = LocalTopology.from_state(state["topology"])
        if state.get("moto_bridge"):
            self.moto_bridge = Recorded(**state["moto_bridge"])
        self.extra_processes = {k: Recorded(**v) for k, v in (state.get("extra_processes") or {}).items()}
        self.extra_state = dict(state.get("extra") or {})
        for iid, raw in (state.get("hosts") or {}).items():
            base = Path(raw["base"])
            asterisk = HostAsterisk(
                root=base / "root", name=raw["label"], console_log=base / "asterisk-console.log",
                netns=raw["netns"], pid=raw["asterisk"]["pid"], start_time=raw["asterisk"]["start_time"],
            )  # fmt: skip
            self.hosts[iid] = LocalHost(
                instance_id=iid, private_ip=raw["private_ip"], role=raw["role"], label=raw["label"],
                netns=raw["netns"], base=base, asterisk=asterisk, peer_address=raw.get("peer_address"),
                watch=Recorded(**raw["watch"]) if raw.get("watch") else None,
                bridge=Recorded(**raw["bridge"]) if raw.get("bridge") else None,
                fail2ban=Recorded(**raw["fail2ban"]) if raw.get("fail2ban") else None,
                started_seconds=raw.get("started_seconds"),
            )  # fmt: skip

    # --- network -----------------------------------------------------------------------------------------
    def network(self) -> LocalTopology:
        """The router, outside bridge and client namespace (built on first use) and the moto bridge."""
        with self._lock:
            if self.topology is None:
                problem = root_problem(self.root)
                if problem:
                    raise HostError(problem)
                prefix = namespace_prefix(self.run_dir)
                stale = [ns for ns in list_namespaces() if ns.startswith(prefix + "-")]
                if stale:
                    raise HostError(f"namespaces {stale} exist: run `sip-trunk local down` for {self.run_dir}")
                topo = LocalTopology(prefix=prefix, public_ip=self.public_ip, client_ip=CLIENT_IP)
                self.topology = topo
                self._save()  # before building: a failure half way is still torn down by name
                topo.build()
                self._save()
            if self.moto_bridge is None or not self.moto_bridge.alive:
                self._start_moto_bridge()
            return self.topology

    def _start_moto_bridge(self) -> None:
        sock = self.moto_socket
        sock.unlink(missing_ok=True)
        host = urlsplit(self.moto_endpoint).hostname or "127.0.0.1"
        log = (self.run_dir / "moto-bridge.log").open("ab")
        proc = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:{host}:{self.moto_port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )  # fmt: skip
        log.close()
        self.moto_bridge = Recorded.of(proc)
        self._save()
        deadline = time.monotonic() + 5
        while not sock.exists():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise HostError(f"moto bridge (socat) did not start: see {self.run_dir / 'moto-bridge.log'}")
            time.sleep(0.02)

    def _namespace_bridge(self, netns: str, log_path: Path) -> Recorded:
        """127.0.0.1:<moto port> inside ``netns`` → the moto bridge's Unix socket."""
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", netns, "socat",
                 f"TCP-LISTEN:{self.moto_port},bind=127.0.0.1,fork,reuseaddr", f"UNIX-CONNECT:{self.moto_socket}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        if not _wait_listening(netns, self.moto_port):
            Recorded.of(proc).kill()
            raise HostError(f"moto bridge in {netns} did not listen on 127.0.0.1:{self.moto_port}")
        return Recorded.of(proc)

    def add_outside(self, label: str, ip: str) -> str:
        """A namespace on the outside segment (an internet participant such as the ElevenLabs stand-in)."""
        with self._lock:
            ns = self.network().add_outside(label, ip)
            self._save()
            return ns

    def outside_namespace(self, label: str = "client") -> str:
        """The namespace of an outside participant (``client`` = the carrier, 198.51.100.50)."""
        topo = self.network()
        if label == "client":
            return topo.client
        return topo.outside[label][0]

    def control_plane_namespace(self) -> str:
        """Where the control plane's SIP probes come from (VerifyTrunk, the health check, the failover
        functions): 192.0.2.10 on the outside segment, a public AWS address outside the VPC and outside every
        configured SIP network, as a Lambda function's is. Made on first use."""
        with self._lock:
            topo = self.network()
            if CONTROL_PLANE_LABEL not in topo.outside:
                self.add_outside(CONTROL_PLANE_LABEL, CONTROL_PLANE_IP)
            return topo.outside[CONTROL_PLANE_LABEL][0]

    def probe_function_namespace(self) -> str:
        """The in-VPC probe function's interface (ADR-27): 10.0.0.120 on the hosts' LAN and no default route
        (no NAT gateway: it reaches the hosts' private addresses and nothing else). Made on first use."""
        with self._lock:
            topo = self.network()
            if PROBE_FUNCTION_LABEL not in topo.instances:
                ns = topo.add_instance(PROBE_FUNCTION_LABEL, PROBE_FUNCTION_IP)
                run(["ip", "-n", ns, "route", "del", "default"])  # in the VPC without a NAT: the LAN only
                self._save()
            return topo.instances[PROBE_FUNCTION_LABEL][0]

    def run_outside(self, argv: Sequence[str], *, timeout: float = 60.0) -> tuple[int, str, str]:
        """Run a command from the outside (the client namespace): how the internet sees the public address."""
        ns = self.outside_namespace()
        proc = subprocess.run(
            ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout, check=False
        )
        return proc.returncode, proc.stdout, proc.stderr

    def probe_public(
        self, address: str, port: int = 5060, transport: str = "tcp", *, timeout_s: float = 3.0
    ) -> dict[str, Any]:
        """The product's SIP OPTIONS probe (``sip_trunk.sip.probe_options``) sent from the outside (the client
        namespace) to ``address``: what verification and health checks see of the public address."""
        code, out, err = self.run_outside([sys.executable, "-c", _PROBE, address, str(port), transport, str(timeout_s)])
        if code != 0:
            raise HostError(f"probe of {address}:{port}/{transport} failed to run: {err.strip()[-500:]}")
        result: dict[str, Any] = json.loads(out)
        return result

    # --- hosts -------------------------------------------------------------------------------------------
    def host(self, instance_id: str) -> LocalHost:
        try:
            return self.hosts[instance_id]
        except KeyError:
            raise HostError(f"no local host {instance_id}") from None

    def host_env(self, host: LocalHost) -> dict[str, str]:
        """What local mode adds to a host's ``agent.env``: the paths of its root (the agent runs on this machine,
        not chrooted), the moto endpoint and its instance profile role's credentials (IMDS on EC2; the account's
        when the host has none, as in the tests that start hosts without a host stack), the instance id and the
        launch role (IMDS on EC2, not emulated)."""
        r = host.root
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.moto_port}",
            **(host.credentials or {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}),
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
            "SIP_TRUNK_REGION": self.region,
            "SIP_TRUNK_INSTANCE_ID": host.instance_id,
            "SIP_TRUNK_ROLE": "" if host.rebooted else host.role,
            "SIP_TRUNK_CONFIG_DIR": str(r / "etc/asterisk"),
            "SIP_TRUNK_RELEASES_DIR": str(r / "var/lib/sip-trunk/releases"),
            "SIP_TRUNK_STATE_DIR": str(r / "var/lib/sip-trunk"),
            "SIP_TRUNK_FAIL2BAN_DIR": str(r / "etc/fail2ban"),
            "SIP_TRUNK_FAIL2BAN_RELOAD": shlex.join([fail2ban.CLIENT, "-c", str(host.fail2ban_dir), "reload"]),
            "SIP_TRUNK_ASTERISK_CMD": " ".join(host.asterisk.cli_prefix),
            "SIP_TRUNK_ASTERISK_CONF": HOST_CONF,
            "SIP_TRUNK_ASTDB_PATH": str(r / "var/lib/asterisk/astdb.sqlite3"),
            "SIP_TRUNK_VOICEMAIL_DIR": str(r / "var/spool/asterisk/voicemail"),
            "SIP_TRUNK_ETC_DIR": str(r / "etc/sip-trunk"),
            "SIP_TRUNK_UNITS_DIR": str(r / "etc/systemd/system"),
            "SIP_TRUNK_SYSTEMCTL": "true",
            "SIP_TRUNK_CLOUDWATCH_AGENT_CTL": "true",
            "SIP_TRUNK_IMDS_URL": "http://127.0.0.1:9",
        }
        if host.peer_address:
            env["SIP_TRUNK_PEER_ADDRESS"] = host.peer_address
        return env

    def agent_env_values(self, host: LocalHost, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The lines of the host's ``/etc/sip-trunk/agent.env``: the deployment's (as the host stack's user data
        writes them), then ``extra``, then what local mode adds (:meth:`host_env`, which always wins)."""
        values = {**self.agent_env, **dict(extra or {}), **self.host_env(host)}
        return {k: v for k, v in values.items() if v != "" or k.startswith("SIP_TRUNK_")}

    def write_agent_env(self, instance_id: str, extra: Mapping[str, str] | None = None) -> Path:
        """Write the host's ``/etc/sip-trunk/agent.env`` (directory 0750, file 0640, as the user data's
        ``install -d -m 0750`` and root's umask leave them); ``extra`` lines are kept for later writes."""
        with self._lock:
            host = self.host(instance_id)
            host.agent_env_extra = {**host.agent_env_extra, **dict(extra or {})}
            values = self.agent_env_values(host, host.agent_env_extra)
        directory = host.path("/etc/sip-trunk")
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "agent.env"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(f"{k}={v}\n" for k, v in sorted(values.items())))
        tmp.chmod(0o640)
        os.replace(tmp, path)
        return path

    def _install_image(self, host: LocalHost) -> None:
        """What the image build puts on a host for the agent: ``/usr/local/bin/sip-trunk-agent`` (this
        environment's agent), the agent's systemd units (``install-units``), its directories."""
        from sip_trunk.agent.bootstrap import unit_files

        bin_dir = host.path("/usr/local/bin")
        bin_dir.mkdir(parents=True, exist_ok=True)
        launcher = bin_dir / "sip-trunk-agent"
        launcher.write_text("#!/bin/sh\nexec " + " ".join(_agent_command()) + ' "$@"\n')
        launcher.chmod(0o755)
        units = host.path("/etc/systemd/system")
        units.mkdir(parents=True, exist_ok=True)
        for name, data in unit_files().items():
            (units / name).write_bytes(data)
        for script in IMAGE_SCRIPTS:
            for owner, group, mode, dirs in install_dirs(host_file(f"image/scripts/{script}").decode()):
                uid = user_ids(host.root, owner)[0] if owner and owner != "root" else 0
                gid = user_ids(host.root, group)[1] if group and group != "root" else 0
                for directory in dirs:
                    path = in_root(host.root, directory)
                    path.mkdir(parents=True, exist_ok=True)
                    os.chown(path, uid, gid)
                    path.chmod(0o755 if mode is None else mode)
        # the image's bootstrap config: what build-asterisk.sh's `make samples`-free install leaves, readable
        # by the asterisk group only (the agent's releases are the same: root:asterisk 0640)
        gid = user_ids(host.root, "asterisk")[1]
        for item in host.path("/etc/asterisk").iterdir():
            if item.is_file():
                os.chown(item, 0, gid)
                item.chmod(0o640)
        self._install_fail2ban(host)

    # --- fail2ban ----------------------------------------------------------------------------------------
    def _install_fail2ban(self, host: LocalHost) -> None:
        """What the image's fail2ban package puts in ``/etc/fail2ban``, with the server's socket, pid file, log
        and database in the host's ``/run/fail2ban``, ``/var/log`` and ``/var/lib/fail2ban``, and the product
        jail reading the host's Asterisk security log (polling: Asterisk writes it from inside its chroot)."""
        state = in_root(host.root, "/var/lib/fail2ban")
        state.mkdir(parents=True, exist_ok=True)
        in_root(host.root, "/run/fail2ban").mkdir(parents=True, exist_ok=True)
        try:
            fail2ban.write_config(
                host.fail2ban_dir,
                socket=host.fail2ban_socket,
                pidfile=in_root(host.root, "/run/fail2ban/fail2ban.pid"),
                logtarget=in_root(host.root, "/var/log/fail2ban.log"),
                dbfile=str(state / "fail2ban.sqlite3"),
                local={"logpath": str(in_root(host.root, "/var/log/asterisk/security.log")), "backend": "polling"},
            )
        except fail2ban.Fail2banError as exc:
            raise HostError(f"{exc}: run `make asterisk-root` (it installs the host tools)") from exc

    def _start_fail2ban(self, host: LocalHost) -> None:
        """systemd starting ``fail2ban.service``: the server in the host's namespace, in the foreground (its
        PID recorded), with the environment systemd gives a service."""
        if host.fail2ban is not None and host.fail2ban.alive:
            return
        if not (host.fail2ban_dir / "fail2ban.local").is_file():  # a host made before local mode ran fail2ban
            self._install_fail2ban(host)
        in_root(host.root, "/run/fail2ban").mkdir(parents=True, exist_ok=True)
        with (host.base / "fail2ban-server.log").open("ab") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, fail2ban.SERVER, "-f", "-x", "-c", str(host.fail2ban_dir)],
                env={"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, cwd="/",
            )  # fmt: skip
        host.fail2ban = Recorded.of(proc)
        with self._lock:
            self._save()

    def _wait_fail2ban(self, host: LocalHost, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if host.fail2ban is None or not host.fail2ban.alive:
                raise HostError(f"fail2ban-server on {host.instance_id} exited: see {host.base}/fail2ban-server.log")
            if fail2ban.client(host.fail2ban_dir, "ping", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise HostError(f"fail2ban-server on {host.instance_id} did not answer in {timeout:.0f} s")

    def _stop_fail2ban(self, host: LocalHost, *, power_loss: bool = False) -> None:
        """systemd stopping ``fail2ban.service`` (SIGTERM: its actions remove their chains), or with
        ``power_loss`` the server SIGKILLed and its chains gone with the host's kernel."""
        process, host.fail2ban = host.fail2ban, None
        if process is not None and process.alive and not power_loss:
            process.kill(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while process.alive and time.monotonic() < deadline:
                time.sleep(0.05)
        if process is not None and process.alive:
            process.kill()
        if power_loss:
            self._drop_fail2ban_chains(host)
        if host.fail2ban_socket.parent == Path("/run"):
            host.fail2ban_socket.unlink(missing_ok=True)

    def _drop_fail2ban_chains(self, host: LocalHost) -> None:
        saved = run(["ip", "netns", "exec", host.netns, "iptables-save", "-t", "filter"], check=False)
        chains = [line.split()[0][1:] for line in saved.splitlines() if line.startswith(":f2b-")]
        ipt = ["ip", "netns", "exec", host.netns, "iptables", "-w", "5"]
        for line in saved.splitlines():
            words = line.split()
            if words[:2] == ["-A", "INPUT"] and "-j" in words and words[words.index("-j") + 1] in chains:
                run([*ipt, "-D", *words[1:]], check=False)
        for chain in chains:
            run([*ipt, "-F", chain], check=False)
            run([*ipt, "-X", chain], check=False)

    def fail2ban_client(self, instance_id: str, *args: str) -> str:
        """``fail2ban-client`` of the host's server (what an operator runs on the host); its output."""
        return fail2ban.client(self.host(instance_id).fail2ban_dir, *args).stdout

    def fail2ban_banned(self, instance_id: str) -> list[str]:
        """The addresses the host's product jail bans now (empty before an apply enabled the jail)."""
        host = self.host(instance_id)
        if "asterisk-sip-trunk" not in fail2ban.client(host.fail2ban_dir, "status", check=False).stdout:
            return []
        return fail2ban.banned(host.fail2ban_dir)

    def host_exec(self, host: LocalHost, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` as a process of ``host``: in its network namespace, with its
        ``HOST_MOUNTS`` at their real paths (the caller gives the process its whole environment)."""
        return [
            "ip", "netns", "exec", host.netns, "unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", _HOST_EXEC, "host-exec", str(host.root), *argv,
        ]  # fmt: skip

    def ssm_agent_environment(self, instance_id: str) -> dict[str, str]:
        """The whole environment the SSM agent gives a command (no variable of the deployment's)."""
        return {"PATH": SSM_AGENT_PATH, "AWS_SSM_INSTANCE_ID": instance_id, "AWS_SSM_REGION_NAME": self.region}

    def run_shell_script(
        self, instance_id: str, commands: Sequence[str], *, command_id: str | None = None, timeout: float | None = None
    ) -> ScriptRun:
        """``AWS-RunShellScript`` on the host: ``commands`` one per line in ``_script.sh`` in a fresh
        orchestration directory, run with ``sh`` as root with :meth:`ssm_agent_environment` and that directory
        as the working directory; the script's exit code is the command's response code."""
        with self._lock:
            host = self.host(instance_id)
        command_id = command_id or f"local-{time.time_ns():x}"
        inside = SSM_ORCHESTRATION.format(instance=instance_id, command=command_id)
        workdir = host.path(inside)
        workdir.mkdir(parents=True, exist_ok=False)
        script = workdir / "_script.sh"
        script.write_text("\n".join(commands) + "\n")
        script.chmod(0o700)
        env = self.ssm_agent_environment(instance_id)
        try:
            proc = subprocess.run(
                self.host_exec(host, ["sh", str(script)]), env=env, capture_output=True, text=True,
                timeout=timeout or self.command_timeout_s, check=False, cwd=workdir,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            return ScriptRun(124, out, err + f"\nexecution timed out after {exc.timeout} s", True, workdir)
        self._follow_role_env(host)
        return ScriptRun(proc.returncode, proc.stdout, proc.stderr, False, workdir)

    # --- systemd ---------------------------------------------------------------------------------------
    def unit_command(self, instance_id: str, unit: str) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) of ``unit``'s ``ExecStart=`` as systemd would start it on the host, from the unit
        file in the host's ``/etc/systemd/system``. `UnitError` for what systemd refuses."""
        host = self.host(instance_id)
        path = host.path(f"/etc/systemd/system/{unit}")
        try:
            service = parse_unit(path.read_text())
        except FileNotFoundError:
            raise UnitError(f"{unit}: no such unit on {instance_id}") from None
        env = {"PATH": SYSTEMD_PATH, "LANG": "C.UTF-8"}
        for kind, value in service.get("env", []):
            if kind == "Environment":
                env.update(parse_environment_assignments(value))
                continue
            optional = value.startswith("-")
            file = host.path(value.lstrip("-"))
            try:
                from sip_trunk.agent.config import read_env_file

                env.update(read_env_file(file))
            except FileNotFoundError:
                if not optional:
                    raise UnitError(f"{unit}: EnvironmentFile {value} does not exist on {instance_id}") from None
        exec_start = service.get("ExecStart", [])
        if not exec_start:
            raise UnitError(f"{unit}: no ExecStart=")
        return expand_exec(exec_start[-1][1], env), env

    def run_unit(self, instance_id: str, unit: str, *, timeout: float = 120.0) -> tuple[int, str, str]:
        """Start a ``Type=oneshot`` unit (what its timer does) and wait for it."""
        with self._lock:
            host = self.host(instance_id)
        argv, env = self.unit_command(instance_id, unit)
        proc = subprocess.run(
            self.host_exec(host, argv), env=env, capture_output=True, text=True, timeout=timeout, check=False,
            cwd="/",
        )  # fmt: skip
        return proc.returncode, proc.stdout, proc.stderr

    def start_host(
        self,
        instance_id: str,
        private_ip: str,
        role: str,
        *,
        peer_address: str | None = None,
        credentials: Mapping[str, str] | None = None,
    ) -> LocalHost:
        """A new host: namespace with ``private_ip`` on the LAN, its own root with the bootstrap config, Asterisk
        fully booted, the moto bridge; on a standby, ``watch-peer`` against ``peer_address`` (default: the
        primary's private address, as soon as a primary exists)."""
        if role not in ROLES:
            raise HostError(f"role must be one of {ROLES}: {role!r}")
        started = time.monotonic()
        with self._lock:
            if instance_id in self.hosts:
                raise HostError(f"host {instance_id} exists")
            topo = self.network()
            if any(ip == private_ip for _, ip in topo.instances.values()):
                raise HostError(f"private address {private_ip} is in use")
            self.labels += 1
            label = f"h{self.labels}"
            base = self.run_dir / "hosts" / instance_id
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            netns = f"{topo.prefix}-{label}"
            asterisk = HostAsterisk(
                root=base / "root", name=label, console_log=base / "asterisk-console.log", netns=netns,
                maxload=self.asterisk_maxload,
            )  # fmt: skip
            host = LocalHost(instance_id, private_ip, role, label, netns, base, asterisk, peer_address)
            host.credentials = dict(credentials or {})
            self.hosts[instance_id] = host
            self._save()  # recorded before anything exists, so a failure below is still torn down
        try:
            topo.add_instance(label, private_ip)
            self.apply_firewalls()
            overlay = OverlayRoot(self.root, base).mount()
            overlay.prepare(hosts={ELEVENLABS_HOST: STANDIN_IP}, bootstrap=BOOTSTRAP_CONFIG)
            self._install_image(host)
            self.write_agent_env(instance_id)
            with self._lock:
                self._save()
            asterisk.start(wait=False)
            with self._lock:
                self._save()
            self._start_fail2ban(host)
            host.bridge = self._namespace_bridge(netns, base / "moto-bridge.log")
            with self._lock:
                self._save()
            asterisk.wait_fully_booted(asterisk.boot_timeout)
            self._wait_fail2ban(host)
        except BaseException:
            with contextlib.suppress(Exception):
                self.stop_host(instance_id)
            raise
        host.started_seconds = round(time.monotonic() - started, 3)
        with self._lock:
            self._save()
            self._start_watchers()
        return host

    def _primary(self) -> LocalHost | None:
        return next((h for h in self.hosts.values() if h.role == "primary"), None)

    def _start_watchers(self) -> None:
        """What systemd does for the standby's enabled ``sip-trunk-watch-peer.service``: every standby without a
        running ``watch-peer`` starts one from its unit file (target ``${SIP_TRUNK_PEER_ADDRESS}`` from
        ``role.env``). A unit systemd would refuse to start (no ``role.env`` yet: the host has not been given its
        role) does not run. The probe timing is the manager's (tests run it faster than the unit's 1.5 s)."""
        for host in self.hosts.values():
            if host.role != "standby" or (host.watch is not None and host.watch.alive):
                continue
            try:
                argv, env = self.unit_command(host.instance_id, WATCH_PEER_UNIT)
            except UnitError as exc:
                with (host.base / "watch-peer.log").open("a") as fh:
                    fh.write(f"{time.strftime('%H:%M:%S')} {WATCH_PEER_UNIT} not started: {exc}\n")
                continue
            argv = with_options(
                argv,
                {
                    "--interval": f"{self.watch_interval_s:g}",
                    "--failures": str(self.watch_failures),
                    "--timeout": f"{self.watch_timeout_s:g}",
                },
            )
            target = argv[argv.index("--target") + 1] if "--target" in argv else None
            if not target:  # set-role/bootstrap disabled the unit: a standby told no peer has nothing to watch
                with (host.base / "watch-peer.log").open("a") as fh:
                    fh.write(f"{time.strftime('%H:%M:%S')} {WATCH_PEER_UNIT} not started: role.env names no peer\n")
                continue
            host.peer_address = target
            with (host.base / "watch-peer.log").open("ab") as out:
                proc = subprocess.Popen(
                    self.host_exec(host, argv), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                    start_new_session=True, cwd="/",
                )  # fmt: skip
            host.watch = Recorded.of(proc)
        self._save()

    def set_role(self, instance_id: str, role: str, peer_address: str | None = None) -> LocalHost:
        """What systemd does when the host's role changes (``set-role`` enables/disables watch-peer): the
        standby's ``watch-peer`` (re)starts from its unit, a primary's ends."""
        if role not in ROLES:
            raise HostError(f"role must be one of {ROLES}: {role!r}")
        with self._lock:
            host = self.host(instance_id)
            if host.watch is not None:
                host.watch.kill()
                host.watch = None
            host.role, host.peer_address = role, (peer_address if role == "standby" else None)
            self._start_watchers()
            return host

    def kill_host(self, instance_id: str) -> None:
        """Crash the host's Asterisk (SIGKILL to its process group); the namespace, disk and agent stay."""
        with self._lock:
            host = self.host(instance_id)
        host.asterisk.kill()

    def restart_asterisk(self, instance_id: str) -> float:
        """Start a crashed host's Asterisk again (what systemd's Restart= does); returns the seconds it took."""
        host = self.host(instance_id)
        if host.asterisk.running:
            raise HostError(f"Asterisk on {instance_id} is running")
        host.asterisk.process = None
        host.asterisk.start()
        with self._lock:
            self._save()
        return host.asterisk.boot_seconds or 0.0

    def power_off(self, instance_id: str) -> None:
        """The host goes down as in a power loss: every process of it (Asterisk, watch-peer, fail2ban, its link to
        the AWS endpoints) SIGKILLed and fail2ban's chains gone with its kernel; its namespace, address and disk
        (``role.env``, releases, astdb, fail2ban's database) stay."""
        with self._lock:
            host = self.host(instance_id)
            for process in (host.watch, host.bridge):
                if process is not None:
                    process.kill()
            host.watch = host.bridge = None
            host.asterisk.kill()
            self._stop_fail2ban(host, power_loss=True)
            self._save()

    def power_on(self, instance_id: str, *, launch_role: bool = False) -> dict[str, Any]:
        """The host boots again from its disk: Asterisk and fail2ban start (systemd's ``asterisk.service`` and
        ``fail2ban.service``; local mode waits for fail2ban's socket, so a reload by the boot's apply never races
        its start), then ``sip-trunk-boot.service`` runs ``sip-trunk-agent bootstrap`` as systemd would, and the
        services its ``role.env`` enables follow (watch-peer). Returns the bootstrap's answer (its last JSON line).
        ``launch_role``: agent.env keeps naming the role the host had before (a planted defect for the drills: a
        host that trusts its own record of its role)."""
        with self._lock:
            host = self.host(instance_id)
            host.rebooted = not launch_role
            self.write_agent_env(instance_id)
        host.bridge = self._namespace_bridge(host.netns, host.base / "moto-bridge.log")
        host.asterisk.process = None
        host.asterisk.start()
        self._start_fail2ban(host)
        self._wait_fail2ban(host)
        code, out, err = self.run_unit(instance_id, BOOT_UNIT, timeout=self.command_timeout_s)
        with (host.base / "boot.log").open("a") as log:
            log.write(out + err)
        if code != 0:
            raise HostError(f"{BOOT_UNIT} on {instance_id} exited {code}: {(out + err).strip()[-600:]}")
        with self._lock:
            self._follow_role_env(host)
            self._save()
        answer: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return answer

    def partition(self, a: str, b: str) -> None:
        """Cut the network between two hosts (each drops the other's packets, both ways) while both still reach
        the router, the outside and the control plane. In the raw table, so a security-group rewrite of the
        filter table (:meth:`apply_firewalls`) leaves it in place."""
        self._partition_rules("-A", a, b)

    def heal(self, a: str, b: str) -> None:
        """Undo :meth:`partition`."""
        self._partition_rules("-D", a, b)

    def _partition_rules(self, action: str, a: str, b: str) -> None:
        with self._lock:
            ha, hb = self.host(a), self.host(b)
        for host, other in ((ha, hb), (hb, ha)):
            for chain, match in (("PREROUTING", "-s"), ("OUTPUT", "-d")):
                run(["ip", "netns", "exec", host.netns, "iptables", "-w", "5", "-t", "raw", action, chain, match,
                     other.private_ip, "-m", "comment", "--comment", PARTITION_COMMENT, "-j", "DROP"])  # fmt: skip

    def stop_host(self, instance_id: str) -> None:
        """Terminate a host: its processes by PID, its namespace (and with it any mapping to it), its disk."""
        with self._lock:
            host = self.hosts.get(instance_id)
            if host is None:
                return
            for process in (host.watch, host.bridge):
                if process is not None:
                    process.kill()
            self._stop_fail2ban(host)
            host.asterisk.stop(timeout=5)
            if self.topology is not None and host.label in self.topology.instances:
                self.topology.remove_instance(host.label)
            with contextlib.suppress(NetnsError):
                run(["ip", "netns", "del", host.netns], check=False)
            overlay = OverlayRoot(self.root, host.base)
            logs = host.root / "var/log/asterisk"
            if overlay.mounted and logs.is_dir():
                shutil.copytree(logs, host.base / "logs", dirs_exist_ok=True)
            overlay.unmount()
            shutil.rmtree(overlay.upper, ignore_errors=True)
            shutil.rmtree(overlay.work, ignore_errors=True)
            del self.hosts[instance_id]
            self._save()
            self.apply_firewalls()

    # --- security group --------------------------------------------------------------------------------
    def apply_firewalls(self, firewall: HostFirewall | None = None) -> None:
        """Load the hosts' security group (``firewall``, else the manager's) into the INPUT chain of every host
        namespace that exists: a rule naming the hosts' own group admits every host's private address, so
        each start or stop rewrites them all. Without a firewall the hosts accept anything. fail2ban's chains
        are carried over (:func:`~sip_trunk_local.firewall.keep_chains`; a ban added between the save and the
        restore would be lost: rewrites happen only when a host starts or stops)."""
        with self._lock:
            if firewall is not None:
                self.firewall = firewall
            if self.firewall is None or self.topology is None:
                return
            hosts = [h for h in self.hosts.values() if h.label in self.topology.instances]
            ruleset = self.firewall.ruleset(sorted(h.private_ip for h in hosts))
            for host in hosts:
                saved = run(["ip", "netns", "exec", host.netns, "iptables-save", "-t", "filter"], check=False)
                proc = subprocess.run(
                    ["ip", "netns", "exec", host.netns, "iptables-restore", "-w", "5"],
                    input=keep_chains(ruleset, saved), capture_output=True, text=True, timeout=20, check=False,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise HostError(f"iptables-restore in {host.netns} failed: {proc.stderr.strip()}\n{ruleset}")

    def firewall_drops(self, instance_id: str) -> int:
        """Packets the host's firewall has refused so far (the final DROP rule's counter)."""
        out = run(["ip", "netns", "exec", self.host(instance_id).netns, "iptables", "-w", "5", "-L", "INPUT",
                   "-v", "-x", "-n"], check=False)  # fmt: skip
        return sum(int(line.split()[0]) for line in out.splitlines() if DROP_COMMENT in line)

    def run_command(
        self, instance_id: str, argv: list[str], env: Mapping[str, str] | None = None, *, timeout: float | None = None
    ) -> tuple[int, str, str]:
        """``argv`` as one SSM Run Command line on the host (:meth:`run_shell_script`). ``env`` is never given to
        the process: its lines are added to the host's ``agent.env`` first (what the host stack's user data would
        have written). Returns (exit code, stdout, stderr)."""
        if not argv:
            raise HostError("empty command")
        if env:
            self.write_agent_env(instance_id, env)
        run = self.run_shell_script(instance_id, [shlex.join(argv)], timeout=timeout)
        return run.code, run.stdout, run.stderr

    def _follow_role_env(self, host: LocalHost) -> None:
        """What systemd does on EC2 when the agent (``set-role``, ``bootstrap``) rewrites ``role.env``: start or
        stop watch-peer for the new role and peer."""
        path = host.path("/etc/sip-trunk/role.env")
        if not path.is_file():
            return
        values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        role, peer = values.get("SIP_TRUNK_ROLE", host.role), values.get("SIP_TRUNK_PEER_ADDRESS") or None
        watching = host.watch is not None and host.watch.alive
        if role in ROLES and (
            (role, peer) != (host.role, host.peer_address if role == "standby" else None)
            or (role == "standby" and not watching)
        ):
            self.set_role(host.instance_id, role, peer)

    def map_public_address(self, public_ip: str, instance_id: str) -> None:
        """Point ``public_ip`` at the host (router DNAT/SNAT rewritten, tracked flows forgotten)."""
        with self._lock:
            host = self.host(instance_id)
            topo = self.network()
            for other, label in list(topo.mappings.items()):
                if label == host.label and other != public_ip:
                    topo.unmap_address(other)
            topo.map_address(public_ip, host.label)
            self._save()

    def unmap_public_address(self, public_ip: str) -> None:
        with self._lock:
            if self.topology is not None:
                self.topology.unmap_address(public_ip)
                self._save()

    def public_mapping(self) -> dict[str, str]:
        """public address → instance id."""
        if self.topology is None:
            return {}
        by_label = {h.label: iid for iid, h in self.hosts.items()}
        return {ip: by_label.get(label, label) for ip, label in self.topology.mappings.items()}

    # --- extra processes (stand-in …) --------------------------------------------------------------------
    def record_process(self, name: str, pid: int, *, group: bool = True, extra: Any = None) -> None:
        """Remember a process started for this local world (ended by :meth:`teardown`)."""
        with self._lock:
            self.extra_processes[name] = Recorded(pid, process_start_time(pid), group)
            if extra is not None:
                self.extra_state[name] = extra
            self._save()

    def forget_process(self, name: str) -> None:
        with self._lock:
            self.extra_processes.pop(name, None)
            self.extra_state.pop(name, None)
            self._save()

    # --- observation -------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        hosts = {}
        for iid, host in self.hosts.items():
            hosts[iid] = {
                "role": host.role,
                "private_ip": host.private_ip,
                "netns": host.netns,
                "asterisk_pid": host.asterisk.pid,
                "asterisk_running": host.asterisk.running,
                "watch_peer_pid": host.watch.pid if host.watch else None,
                "watch_peer_running": bool(host.watch and host.watch.alive),
                "fail2ban_pid": host.fail2ban.pid if host.fail2ban else None,
                "fail2ban_running": bool(host.fail2ban and host.fail2ban.alive),
                "peer_address": host.peer_address,
                "started_seconds": host.started_seconds,
                "root": str(host.root),
            }
        return {
            "run_dir": str(self.run_dir),
            "public_addresses": self.public_mapping(),
            "hosts": hosts,
            "namespaces": list(self.topology.namespaces) if self.topology else [],
            "processes": {name: rec.alive for name, rec in self.extra_processes.items()},
        }

    # --- teardown ----------------------------------------------------------------------------------------
    def leftovers(self) -> dict[str, list[str]]:
        """What of this local world still exists (processes, namespaces, mounts); empty lists when clean."""
        procs = []
        for iid, host in self.hosts.items():
            if host.asterisk.running:
                procs.append(f"asterisk {iid} pid {host.asterisk.pid}")
            for name, rec in (("watch-peer", host.watch), ("moto bridge", host.bridge), ("fail2ban", host.fail2ban)):
                if rec is not None and rec.alive:
                    procs.append(f"{name} {iid} pid {rec.pid}")
        for name, rec in self.extra_processes.items():
            if rec.alive:
                procs.append(f"{name} pid {rec.pid}")
        if self.moto_bridge is not None and self.moto_bridge.alive:
            procs.append(f"moto bridge pid {self.moto_bridge.pid}")
        prefix = self.topology.prefix if self.topology else None
        namespaces = [ns for ns in list_namespaces() if prefix and ns.startswith(prefix + "-")]
        mounts = [str(p) for p in sorted((self.run_dir / "hosts").glob("*/root")) if is_mounted(p)]
        return {"processes": procs, "namespaces": namespaces, "mounts": mounts}

    def teardown(self) -> dict[str, list[str]]:
        """End every recorded process by PID, delete every namespace (router rules and counters live inside
        them), unmount every host root; raise `HostError` if anything is left. Returns what was removed."""
        removed: dict[str, list[str]] = {"processes": [], "namespaces": [], "mounts": []}
        with self._lock:
            for name, rec in list(self.extra_processes.items()):
                if rec.alive:
                    rec.kill()
                    removed["processes"].append(name)
            for iid, host in list(self.hosts.items()):
                for process in (host.watch, host.bridge, host.fail2ban):
                    if process is not None and process.alive:
                        process.kill()
                        removed["processes"].append(f"{iid}:{process.pid}")
                if host.asterisk.running:
                    host.asterisk.kill()
                    removed["processes"].append(f"{iid}:asterisk")
            if self.topology is not None:
                for ns in self.topology.namespaces:
                    removed["namespaces"].append(ns)
                killed = self.topology.teardown()
                removed["processes"] += [f"pid {pid} (in a namespace)" for pid in killed]
                for ns in list_namespaces():  # namespaces made by a half-finished build
                    if ns.startswith(self.topology.prefix + "-"):
                        run(["ip", "netns", "del", ns], check=False)
                        removed["namespaces"].append(ns)
            for path in sorted((self.run_dir / "hosts").glob("*/root")):
                if is_mounted(path):
                    try:
                        OverlayRoot(self.root, path.parent).unmount()
                    except AsteriskError as exc:
                        raise HostError(str(exc)) from exc
                    removed["mounts"].append(str(path))
            if self.moto_bridge is not None and self.moto_bridge.alive:
                self.moto_bridge.kill()
                removed["processes"].append("moto bridge")
            self.moto_socket.unlink(missing_ok=True)
            if self.topology is not None:  # the stand-in's instance directory in the shared root
                shutil.rmtree(self.root / "inst" / f"local-{self.topology.prefix}", ignore_errors=True)
            deadline = time.monotonic() + 10  # SIGKILLed processes need a moment to be gone
            while any((left := self.leftovers()).values()) and time.monotonic() < deadline:
                time.sleep(0.1)
            if any(left.values()):
                raise HostError(f"left after teardown: {left}")
            for host in self.hosts.values():
                if host.fail2ban_socket.parent == Path("/run"):
                    host.fail2ban_socket.unlink(missing_ok=True)
                shutil.rmtree(host.base / "upper", ignore_errors=True)
                shutil.rmtree(host.base / "work", ignore_errors=True)
            self.hosts.clear()
            self.extra_processes.clear()
            self.extra_state.clear()
            self.topology = None
            self.moto_bridge = None
            self.state_path.unlink(missing_ok=True)
        return removed
