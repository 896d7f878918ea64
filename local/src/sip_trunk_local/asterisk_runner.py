"""Run real Asterisk 22 instances from the root file system that ``scripts/asterisk-root.sh`` builds
(``make asterisk-root``).

Two kinds of instance:

* :class:`AsteriskInstance` (tests, the ElevenLabs stand-in): several side by side in one root.
  Each instance lives under ``<root>/inst/<run>/<name>/`` (etc, run, log, spool, lib, cache) with its own
``asterisk.conf``, so several instances run side by side from one root. ``<run>`` is ``run<pid>`` of the
test process: two test runs at once (same test names) never share, or wipe, each other's directories.
Asterisk runs chrooted in a private mount namespace (``unshare --mount --fork --kill-child``), optionally
inside a network namespace, in its own process group; :meth:`AsteriskInstance.stop` ends it by PID.
* :class:`HostAsterisk` (local "EC2" hosts): one Asterisk per :class:`OverlayRoot`, a copy-on-write root
  file system of its own, so the host agent manages ``/etc/asterisk``, ``/var/lib/sip-trunk`` … at the
  paths it uses on EC2 and Asterisk reads the rendered ``asterisk.conf`` unchanged.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_ROOT = Path("/var/lib/aws-sip-trunk/asterisk-root")
ROOT_MARKER = ".aws-sip-trunk-root"
# The modules the product's Asterisk patches touch (the image patches, scripts/build-asterisk-modules.sh --list).
PATCHED_MODULES = ("res_pjsip.so", "res_pjsip_refer.so")
ROOT_HINT = "sudo make asterisk-root"

# Debian's module directory inside the root (multiarch path).
_MODULE_DIR_GLOB = "usr/lib/*/asterisk/modules"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
LOG_NAMES = ("messages", "full", "security")
_TOKEN_RE = re.compile(r"\{\{[A-Z][A-Z0-9_]*\}\}")
RUN_DIR = f"run{os.getpid()}"
_RUN_DIR_RE = re.compile(r"^run(\d+)$")


class AsteriskError(RuntimeError):
    """Asterisk did not start, answer or stop as expected."""


def root_problem(root: Path) -> str | None:
    """Why ``root`` cannot run instances, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "the real-Asterisk tests need root (chroot, mount and network namespaces)"
    if not (root / ROOT_MARKER).is_file() or not (root / "usr/sbin/asterisk").is_file():
        return f"no Asterisk root file system at {root}: run `{ROOT_HINT}`"
    return None


def ensure_root(root: Path, *, script: Path, timeout: float = 1800) -> Path:
    """Run ``script`` (``scripts/asterisk-root.sh``; fast when the root is in place) and return the root it
    prints."""
    proc = subprocess.run(
        ["bash", str(script), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AsteriskError(f"{script.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie child of ours counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def prune_runs(root: Path) -> list[Path]:
    """Delete the instance directories of test runs whose process is gone (never a live run's);
    returns what it deleted. Instances of the current run are kept until the next run prunes them."""
    removed = []
    for path in sorted((root / "inst").glob("run*")):
        m = _RUN_DIR_RE.match(path.name)
        if m and path.is_dir() and path.name != RUN_DIR and not process_alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def module_dir(root: Path) -> str:
    """The module directory as seen inside the root (e.g. ``/usr/lib/x86_64-linux-gnu/asterisk/modules``)."""
    found = sorted(root.glob(_MODULE_DIR_GLOB))
    if not found:
        raise AsteriskError(f"no Asterisk module directory under {root}")
    return "/" + str(found[0].relative_to(root))


def unpatched_module_dir(root: Path) -> str:
    """Debian's unpatched module set as seen inside the root: ``scripts/asterisk-root.sh`` keeps Debian's own
    copy of every module the product patches there (``res_pjsip.so``, ``res_pjsip_refer.so``; every other module is
    linked from :func:`module_dir`), next to the patched ones."""
    unpatched = module_dir(root) + "-unpatched"
    for name in PATCHED_MODULES:
        path = root / unpatched.lstrip("/") / name
        if path.is_symlink() or not path.is_file():
            raise AsteriskError(f"no unpatched {name} at {unpatched} in {root}: run `{ROOT_HINT}`")
    return unpatched


def module_load_lines(path: Path) -> list[str]:
    """The ``load = x.so`` lines of a module list such as ``tests/asterisk/MODULES.txt``."""
    return [line.strip() for line in path.read_text().splitlines() if line.strip().startswith("load")]


def module_names(lines: list[str]) -> set[str]:
    """Module file names from ``load = x.so`` lines."""
    return {line.split("=", 1)[1].strip() for line in lines}


def available_modules(root: Path) -> set[str]:
    """File names of every module shipped in the root."""
    return {p.name for p in (root / module_dir(root).lstrip("/")).glob("*.so")}


@dataclass
class AsteriskInstance:
    """One Asterisk process running a given set of configuration files.

    ``config_dir`` holds what the renderer produces (pjsip.conf, extensions.conf, modules.conf, ...);
    it is copied to ``<root>/inst/<run>/<name>/etc`` and an ``asterisk.conf`` pointing every directory at the
    instance is written over any ``asterisk.conf`` in it. ``variables`` replaces ``{{KEY}}`` tokens in the
    copied text files (ports, addresses); ``extra_files`` adds or overrides files (relative to etc).
    ``modules`` is the module directory inside the root (default :func:`module_dir`, with the product's patched
    ``res_pjsip.so``; :func:`unpatched_module_dir` runs Debian's modules as shipped).
    """

    root: Path
    name: str
    config_dir: Path | None = None
    netns: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    extra_files: Mapping[str, str | bytes] = field(default_factory=dict)
    boot_timeout: float = 30.0
    modules: str | None = None
    group: str = RUN_DIR  # the directory under <root>/inst/ that holds this instance (run<pid> by default)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    boot_seconds: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValueError(f"instance name must match {_NAME_RE.pattern}: {self.name!r}")
        self.root = Path(self.root)

    # --- paths -------------------------------------------------------------------------------------------
    @property
    def chroot_base(self) -> str:
        """The instance directory as Asterisk sees it (inside the chroot)."""
        return f"/inst/{self.group}/{self.name}"

    @property
    def base(self) -> Path:
        """The instance directory on the host."""
        return self.root / "inst" / self.group / self.name

    @property
    def etc_dir(self) -> Path:
        return self.base / "etc"

    @property
    def log_dir(self) -> Path:
        return self.base / "log"

    @property
    def spool_dir(self) -> Path:
        return self.base / "spool"

    @property
    def console_log(self) -> Path:
        """Asterisk's own stdout/stderr (start-up errors that happen before the logger runs)."""
        return self.base / "console.log"

    @property
    def conf_path(self) -> str:
        """``asterisk.conf`` as seen inside the chroot (the ``-C`` argument)."""
        return f"{self.chroot_base}/etc/asterisk.conf"

    def host_path(self, chroot_path: str) -> Path:
        """Map a path inside the chroot to the host."""
        return self.root / chroot_path.lstrip("/")

    def chroot_path(self, host_path: Path) -> str:
        """Map a host path under the root to the path Asterisk sees."""
        return "/" + str(Path(host_path).resolve().relative_to(self.root.resolve()))

    # --- set-up ------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """(Re)create the instance directory and write its configuration."""
        if self.running:
            raise AsteriskError(f"instance {self.name} is running")
        shutil.rmtree(self.base, ignore_errors=True)
        for sub in ("etc", "run", "log", "spool", "lib", "cache"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        if self.config_dir is not None:
            for src in sorted(Path(self.config_dir).rglob("*")):
                if src.is_file():
                    dest = self.etc_dir / src.relative_to(self.config_dir)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    self._write(dest, src.read_bytes())
        for rel, content in self.extra_files.items():
            dest = self.etc_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._write(dest, content.encode() if isinstance(content, str) else content)
        (self.etc_dir / "asterisk.conf").write_text(self._asterisk_conf())

    def _write(self, dest: Path, data: bytes) -> None:
        if self.variables:
            try:
                text = data.decode()
            except UnicodeDecodeError:
                pass
            else:
                for key, value in self.variables.items():
                    text = text.replace("{{" + key + "}}", str(value))
                left = sorted(set(_TOKEN_RE.findall(text)))
                if left:
                    raise ValueError(f"{dest.name}: no value for {', '.join(left)}")
                data = text.encode()
        dest.write_bytes(data)

    def _asterisk_conf(self) -> str:
        b = self.chroot_base
        return (
            "; written by sip_trunk_local.asterisk_runner for this instance only\n"
            "[directories]\n"
            f"astcachedir => {b}/cache\n"
            f"astetcdir => {b}/etc\n"
            f"astmoddir => {self.modules or module_dir(self.root)}\n"
            f"astvarlibdir => {b}/lib\n"
            f"astdbdir => {b}/lib\n"
            f"astkeydir => {b}/lib\n"
            "astdatadir => /usr/share/asterisk\n"
            "astagidir => /usr/share/asterisk/agi-bin\n"
            f"astspooldir => {b}/spool\n"
            f"astrundir => {b}/run\n"
            f"astlogdir => {b}/log\n"
            "astsbindir => /usr/sbin\n"
            "\n[options]\n"
            f"systemname = {self.name}\n"
            "nocolor = yes\n"
            "transmit_silence = no\n"
        )

    # --- life cycle --------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def command(self) -> list[str]:
        """The command that starts Asterisk (host side)."""
        inner = (
            f"mount -t proc proc {self.root}/proc && "
            f"exec chroot {self.root} /usr/sbin/asterisk -f -n -C {self.conf_path}"
        )
        cmd = ["unshare", "--mount", "--fork", "--kill-child", "--", "sh", "-c", inner]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self, *, prepare: bool = True) -> AsteriskInstance:
        """Write the configuration (unless ``prepare=False``), start Asterisk and wait until fully booted."""
        if prepare:
            self.prepare()
        started = time.monotonic()
        with self.console_log.open("wb") as console:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self.wait_fully_booted(self.boot_timeout)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        return self

    def wait_fully_booted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if not self.running:
                raise AsteriskError(f"Asterisk {self.name} exited during start-up\n{self.diagnostics()}")
            try:
                proc = self._remote("core waitfullybooted", timeout=5, check=False)
            except AsteriskError as exc:  # a slow start (a loaded machine): ask again until the deadline
                last = str(exc)
            else:
                last = (proc.stdout + proc.stderr).strip()
                if proc.returncode == 0 and "fully booted" in last:
                    return
            if time.monotonic() > deadline:
                raise AsteriskError(
                    f"Asterisk {self.name} not fully booted after {timeout} s (last answer: {last!r})\n"
                    + self.diagnostics()
                )
            time.sleep(0.05)

    def _remote(self, cmd: str, *, timeout: float, check: bool) -> subprocess.CompletedProcess[str]:
        # The control socket is a file in <root>/inst/<run>/<name>/run: no network namespace needed.
        argv = ["chroot", str(self.root), "/usr/sbin/asterisk", "-C", self.conf_path, "-rx", cmd]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AsteriskError(f"`{cmd}` on {self.name} timed out after {timeout} s") from exc
        if check and proc.returncode != 0:
            raise AsteriskError(f"`{cmd}` on {self.name} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def rx(self, cmd: str, *, timeout: float = 15.0) -> str:
        """Run one CLI command (``asterisk -rx``) and return its output."""
        if not self.running:
            raise AsteriskError(f"Asterisk {self.name} is not running")
        return self._remote(cmd, timeout=timeout, check=True).stdout

    def reload(self, module: str | None = None) -> str:
        """``core reload`` (or ``module reload <module>``) after rewriting files in :attr:`etc_dir`."""
        return self.rx(f"module reload {module}" if module else "core reload")

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """``core stop now``, then kill the process group by PID; returns Asterisk's exit status."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(AsteriskError):
                self._remote("core stop now", timeout=5, check=False)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        # Whatever is left in the group (unshare, sh, asterisk) goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=timeout)

    def __enter__(self) -> AsteriskInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- observation -------------------------------------------------------------------------------------
    def log_file(self, name: str) -> Path:
        """A log file by its logger.conf name (``messages``, ``full``, ``security``; ``.log`` optional)."""
        for candidate in (self.log_dir / name, self.log_dir / f"{name}.log"):
            if candidate.exists():
                return candidate
        return self.log_dir / name

    def log_text(self, name: str) -> str:
        path = self.log_file(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def log_has(self, name: str, pattern: str, timeout: float = 5.0) -> bool:
        """Whether log ``name`` shows regular expression ``pattern`` within ``timeout`` seconds. Asterisk's
        logger thread writes the files after the fact, and security events come through Stasis: one can land
        after a messages line about a later moment of the same call, so a log read once right after another
        sign of an event can miss it."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while not compiled.search(self.log_text(name)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def log_files(self) -> dict[str, Path]:
        """Every file Asterisk wrote in its log directory plus the console output."""
        files = {p.name: p for p in sorted(self.log_dir.glob("*")) if p.is_file()}
        if self.console_log.exists():
            files["console.log"] = self.console_log
        return files

    def diagnostics(self, tail: int = 60) -> str:
        """The last lines of every log, for failure messages."""
        parts = []
        for label, path in self.log_files().items():
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {self.name}: {label} (last {len(lines)} lines) ---\n" + "\n".join(lines))
        return "\n".join(parts) or f"--- {self.name}: no logs ---"

    def wait_for(self, cmd: str, pattern: str, *, timeout: float = 20.0, interval: float = 0.25) -> str:
        """Poll a CLI command until its output matches ``pattern`` (regex); returns that output."""
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.rx(cmd)
            if re.search(pattern, out):
                return out
            time.sleep(interval)
        raise AsteriskError(f"`{cmd}` on {self.name} never matched {pattern!r} in {timeout} s:\n{out}")

    def loaded_modules(self) -> set[str]:
        """File names of the modules ``module show`` lists as running."""
        out = self.rx("module show")
        return {m.group(1) for m in re.finditer(r"^(\S+\.so)\s.*\bRunning\b", out, re.MULTILINE)}


# ------------------------------------------------------------------------------------------ local hosts
def process_start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or ``None`` when it is gone (or a zombie
    waiting for its parent to reap it). Stored next to a PID, it tells a later process whether that PID still
    names the same process before it signals it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def kill_recorded(pid: int, start_time: int | None, sig: int = signal.SIGKILL, *, group: bool = False) -> bool:
    """Signal a recorded process (or its process group) only if it is still the process that was recorded."""
    if start_time is not None and process_start_time(pid) != start_time:
        return False
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait until no live process of group ``pgid`` is left: a SIGKILLed group's leader can be reaped while a
    member (Asterisk under ``unshare --fork``) still holds its sockets and control socket."""
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def is_mounted(path: Path) -> bool:
    target = str(Path(path).resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4].replace("\\040", " ") == target:
            return True
    return False


# Directories Asterisk writes when it runs as root without CAP_DAC_OVERRIDE (it drops capabilities when it
# switches user): the Debian package gives them to the asterisk user, so the overlay gives them to root.
def user_ids(root: Path, name: str) -> tuple[int, int]:
    """(uid, gid) of user ``name`` and group ``name`` in the root file system's own /etc/passwd and /etc/group."""
    uid = gid = None
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 3 and fields[0] == name:
            uid = int(fields[2])
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[0] == name:
            gid = int(fields[2])
    if uid is None or gid is None:
        raise AsteriskError(f"{root}: no user/group {name!r}")
    return uid, gid


# plus the call records' spool, where the image's install-agent.sh makes it root:asterisk 0770
_WRITABLE = ("var/lib/asterisk", "var/spool/asterisk", "var/log/asterisk", "run/asterisk", "var/cache/asterisk",
             "var/spool/sip-trunk/calls")  # fmt: skip
HOST_CONF = "/etc/asterisk/asterisk.conf"


@dataclass
class OverlayRoot:
    """A copy-on-write root file system over the shared Asterisk root: ``<base>/root`` (overlayfs, upper
    and work directories next to it). What one EC2 host's disk is to its Asterisk and agent."""

    lower: Path
    base: Path

    @property
    def path(self) -> Path:
        return self.base / "root"

    @property
    def upper(self) -> Path:
        return self.base / "upper"

    @property
    def work(self) -> Path:
        return self.base / "work"

    def host_path(self, inside: str) -> Path:
        """A path as the host's Asterisk sees it, on this machine."""
        return self.path / inside.lstrip("/")

    @property
    def mounted(self) -> bool:
        return is_mounted(self.path)

    def mount(self) -> OverlayRoot:
        if self.mounted:
            return self
        for path in (self.path, self.upper, self.work):
            path.mkdir(parents=True, exist_ok=True)
        # redirect_dir: the agent renames directories that exist in the lower root (voicemail on restore);
        # without it overlayfs answers EXDEV.
        options = f"lowerdir={self.lower},upperdir={self.upper},workdir={self.work},redirect_dir=on"
        proc = subprocess.run(
            ["mount", "-t", "overlay", "overlay", "-o", options, str(self.path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise AsteriskError(f"overlay mount of {self.path} failed: {proc.stderr.strip()}")
        return self

    def prepare(self, *, hosts: Mapping[str, str], bootstrap: Mapping[str, str]) -> None:
        """Make the root look like the host image: the rendered ``asterisk.conf``'s module directory, writable
        run-time directories, ``/etc/hosts`` and the image's bootstrap Asterisk config (``/etc/asterisk``)."""
        modules = self.host_path("/usr/lib/asterisk/modules")
        if not modules.exists() and not modules.is_symlink():
            modules.parent.mkdir(parents=True, exist_ok=True)
            modules.symlink_to(module_dir(self.lower))
        for rel in _WRITABLE:
            path = self.path / rel
            path.mkdir(parents=True, exist_ok=True)
            uid, gid = user_ids(self.path, "asterisk")
            for item in [path, *path.rglob("*")]:
                os.lchown(item, uid, gid)
        lines = ["127.0.0.1\tlocalhost"] + [f"{ip}\t{name}" for name, ip in hosts.items()]
        self.host_path("/etc/hosts").write_text("\n".join(lines) + "\n")
        etc = self.host_path("/etc/asterisk")
        if etc.is_symlink() or etc.is_file():
            etc.unlink()
        elif etc.is_dir():
            shutil.rmtree(etc)
        etc.mkdir()
        for name, text in bootstrap.items():
            (etc / name).write_text(text)

    def unmount(self) -> None:
        if not self.mounted:
            return
        proc = subprocess.run(["umount", str(self.path)], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, text=True, check=False)
        if self.mounted:
            raise AsteriskError(f"could not unmount {self.path}")


@dataclass
class HostAsterisk:
    """Asterisk of one local host: chrooted into its :class:`OverlayRoot`, in its network namespace, reading
    ``/etc/asterisk/asterisk.conf`` like on EC2, in its own process group.

    It runs as the image's ``asterisk`` user and group (``-U``/``-G``, the ``runuser`` the rendered config
    names; the ids are the host root's), so it reads only what the agent and the install scripts let that user
    read, as on EC2.
    ``maxload`` is the load average above which Asterisk refuses calls: every local host shares this machine's
    load average, so by default it is lifted (``-L 0``) instead of refusing calls for a neighbour's load.
    """

    root: Path
    name: str
    console_log: Path
    netns: str | None = None
    maxload: float | None = 0.0
    user: str = "asterisk"
    boot_timeout: float = 30.0
    pid: int | None = None
    start_time: int | None = None
    boot_seconds: float | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def cli_prefix(self) -> list[str]:
        """The host agent's ``asterisk`` command: the Asterisk binary of this root, run through chroot."""
        return ["chroot", str(self.root), "/usr/sbin/asterisk"]

    def command(self) -> list[str]:
        args = f"-f -n -U {self.user} -G {self.user} -C {HOST_CONF}"
        if self.maxload is not None:
            args += f" -L {self.maxload:g}"
        inner = f"mount -t proc proc {self.root}/proc && exec chroot {self.root} /usr/sbin/asterisk {args}"
        cmd = ["unshare", "--mount", "--fork", "--kill-child", "--", "sh", "-c", inner]
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    @property
    def running(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and process_start_time(self.pid) == self.start_time

    def start(self, *, wait: bool = True) -> HostAsterisk:
        started = time.monotonic()
        self.console_log.parent.mkdir(parents=True, exist_ok=True)
        with self.console_log.open("ab") as console:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.pid = self.process.pid
        self.start_time = process_start_time(self.pid)
        if wait:
            try:
                self.wait_fully_booted(self.boot_timeout)
            except BaseException:
                self.kill()
                raise
        self.boot_seconds = time.monotonic() - started
        return self

    def rx(self, cmd: str, *, timeout: float = 15.0) -> str:
        argv = [*self.cli_prefix, "-C", HOST_CONF, "-rx", cmd]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise AsteriskError(f"`{cmd}` on {self.name} timed out after {timeout} s") from exc
        if proc.returncode != 0 or proc.stdout.startswith("Unable to connect"):
            raise AsteriskError(f"`{cmd}` on {self.name} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def wait_fully_booted(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            if not self.running:
                raise AsteriskError(f"Asterisk {self.name} exited during start-up\n{self.diagnostics()}")
            try:
                last = self.rx("core waitfullybooted", timeout=5)
                if "fully booted" in last:
                    return
            except AsteriskError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise AsteriskError(f"Asterisk {self.name} not fully booted after {timeout} s ({last!r})")
            time.sleep(0.05)

    def stop(self, *, timeout: float = 10.0) -> None:
        """``core stop now``, then SIGKILL to the process group."""
        if self.running:
            with contextlib.suppress(AsteriskError):
                self.rx("core stop now", timeout=5)
            deadline = time.monotonic() + timeout
            while self.running and time.monotonic() < deadline:
                time.sleep(0.05)
        self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash: no SIP goodbye, sockets just vanish)."""
        if self.pid is None:
            return
        signalled = kill_recorded(self.pid, self.start_time, signal.SIGKILL, group=True)
        if self.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        else:
            deadline = time.monotonic() + 10
            while process_start_time(self.pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        if signalled and not wait_group_gone(self.pid, 10):  # a start right after must find the ports free
            raise AsteriskError(f"processes {group_members(self.pid)} of Asterisk's group survived SIGKILL for 10 s")

    def diagnostics(self, tail: int = 40) -> str:
        parts = []
        for path in [self.console_log, *sorted((self.root / "var/log/asterisk").glob("*.log"))]:
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {self.name}: {path.name} ---\n" + "\n".join(lines))
        return "\n".join(parts)


def hosts_file(mapping: dict[str, str]) -> str:
    """An /etc/hosts text that maps the given names (and keeps localhost)."""
    lines = ["127.0.0.1\tlocalhost"] + [f"{ip}\t{name}" for name, ip in mapping.items()]
    return "\n".join(lines) + "\n"


def use_private_hosts(inst: AsteriskInstance) -> None:
    """Make ``inst`` resolve names with ``etc/hosts`` of its own config (give it via ``extra_files``):
    the file is bind-mounted over the root's /etc/hosts inside the instance's private mount namespace,
    so no other instance sees it."""
    original = inst.command

    def command() -> list[str]:
        cmd = original()
        inner = cmd[-1]
        mount = f"mount --bind {inst.etc_dir / 'hosts'} {inst.root}/etc/hosts && "
        return [*cmd[:-1], mount + inner]

    inst.command = command  # type: ignore[method-assign]
