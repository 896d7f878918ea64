"""fail2ban, running for real beside a gateway: the product's rendered jail and filter over the machine's own
fail2ban configuration, the server inside the gateway's network namespace, so the jail's banaction (iptables)
bans in that namespace only.

Each instance has its own configuration directory, socket, pid file and in-memory database, so several can run
at once and none touches the machine's fail2ban. Only the log path (the Asterisk log on this machine), the
backend (polling: no inotify across the chroot's bind mounts) and any test override differ from the product.

:class:`Fail2ban` is one such server with a given jail (the real-Asterisk tests); a local host's is started by
:class:`~sip_trunk_local.hosts.LocalHostManager` over :func:`write_config` in the host's ``/etc/fail2ban``, where
the host agent's ``apply`` writes the jail and filter and reloads it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

JAIL = "asterisk-sip-trunk"
SYSTEM_CONFIG = Path("/etc/fail2ban")
SERVER = shutil.which("fail2ban-server") or "/usr/bin/fail2ban-server"
CLIENT = shutil.which("fail2ban-client") or "/usr/bin/fail2ban-client"


LOCAL_JAIL = "zz-this-machine.local"
"""The jail.d file (read after the product's) with what differs on this machine: the log path, the backend."""


class Fail2banError(RuntimeError):
    pass


def write_config(
    config_dir: Path, *, socket: Path, pidfile: Path, logtarget: Path, dbfile: str, local: Mapping[str, str]
) -> None:
    """A fail2ban configuration directory as the package installs it (the machine's ``/etc/fail2ban`` without
    its own jails and local files), whose server keeps its socket, pid file, log and database where given,
    and whose product jail gets ``local`` on top of the rendered settings (in :data:`LOCAL_JAIL`). The
    rendered jail and filter are the host agent's to write: until they exist the jail is not enabled."""
    if not (SYSTEM_CONFIG / "filter.d" / "asterisk.conf").is_file():
        raise Fail2banError("fail2ban is not installed (its shipped asterisk filter is missing)")
    shutil.copytree(
        SYSTEM_CONFIG,
        config_dir,
        ignore=shutil.ignore_patterns("jail.d", "fail2ban.d", "*.local"),
        dirs_exist_ok=True,
    )
    (config_dir / "jail.d").mkdir(exist_ok=True)
    (config_dir / "fail2ban.local").write_text(
        f"[Definition]\nlogtarget = {logtarget}\nsocket = {socket}\npidfile = {pidfile}\ndbfile = {dbfile}\n"
    )
    (config_dir / "jail.d" / LOCAL_JAIL).write_text(
        f"[{JAIL}]\n" + "".join(f"{key} = {value}\n" for key, value in local.items())
    )


def client(config_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``fail2ban-client`` of the server whose configuration is ``config_dir``."""
    proc = subprocess.run(
        [CLIENT, "-c", str(config_dir), *args], capture_output=True, text=True, timeout=15, check=False
    )
    if check and proc.returncode != 0:
        raise Fail2banError(f"fail2ban-client {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def banned(config_dir: Path) -> list[str]:
    """The addresses the product jail bans now."""
    status = client(config_dir, "status", JAIL).stdout
    found = re.search(r"Banned IP list:\s*(.*)$", status, re.MULTILINE)
    return found.group(1).split() if found else []


def firewall_blocks(netns: str, address: str) -> bool:
    """Whether the banaction's rule for ``address`` is in the namespace's firewall (the jail lists a ban just
    before its action runs, so the list alone can name an address that still gets through)."""
    rules = subprocess.run(
        ["ip", "netns", "exec", netns, "iptables", "-w", "5", "-S", f"f2b-{JAIL}"],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    ).stdout
    return f"-s {address}/32 " in rules


@dataclass
class Fail2ban:
    workdir: Path
    netns: str
    jail: bytes
    """The rendered `fail2ban/jail.d/asterisk-sip-trunk.local`."""
    filter: bytes
    """The rendered `fail2ban/filter.d/asterisk-sip-trunk.conf`."""
    logpath: Path
    overrides: Mapping[str, str] = field(default_factory=dict)
    """Jail settings replaced on top of the product's (e.g. a short `bantime` to see the unban)."""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def config_dir(self) -> Path:
        return self.workdir / "etc"

    @property
    def socket(self) -> Path:
        return self.workdir / "fail2ban.sock"

    @property
    def log(self) -> Path:
        return self.workdir / "fail2ban.log"

    def _write_config(self) -> None:
        shutil.rmtree(self.config_dir, ignore_errors=True)
        write_config(
            self.config_dir,
            socket=self.socket,
            pidfile=self.workdir / "fail2ban.pid",
            logtarget=self.log,
            dbfile=":memory:",
            local={"logpath": str(self.logpath), "backend": "polling", **self.overrides},
        )
        (self.config_dir / "filter.d" / f"{JAIL}.conf").write_bytes(self.filter)
        (self.config_dir / "jail.d" / f"{JAIL}.local").write_bytes(self.jail)

    def start(self, timeout: float = 20.0) -> Fail2ban:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.logpath.touch()
        cmd = ["ip", "netns", "exec", self.netns, "fail2ban-server", "-f", "-x", "-c", str(self.config_dir)]
        with (self.workdir / "server.out").open("wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Fail2banError(f"fail2ban-server exited {self.process.returncode}: {self.diagnostics()}")
            if self.socket.exists() and self._client("status", JAIL, check=False).returncode == 0:
                return self
            time.sleep(0.2)
        raise Fail2banError(f"fail2ban-server did not start its jail in {timeout:.0f} s: {self.diagnostics()}")

    def _client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return client(self.config_dir, *args, check=check)

    def banned(self) -> list[str]:
        return banned(self.config_dir)

    def firewall_blocks(self, address: str) -> bool:
        return firewall_blocks(self.netns, address)

    def wait_banned(self, address: str, timeout: float) -> float:
        """Seconds until ``address`` is banned and blocked; `Fail2banError` after ``timeout``."""
        return self._wait(address, blocked=True, timeout=timeout)

    def wait_unbanned(self, address: str, timeout: float) -> float:
        return self._wait(address, blocked=False, timeout=timeout)

    def _wait(self, address: str, *, blocked: bool, timeout: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if (address in self.banned() and self.firewall_blocks(address)) is blocked:
                return time.monotonic() - start
            time.sleep(0.1)
        state = "not banned" if blocked else "still banned"
        raise Fail2banError(f"{address} {state} after {timeout:.0f} s: {self.diagnostics()}")

    def diagnostics(self) -> str:
        parts = []
        for path in (self.workdir / "server.out", self.log):
            if path.exists():
                parts.append(f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def __enter__(self) -> Fail2ban:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
