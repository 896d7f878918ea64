"""Run real Asterisk 22 instances from the root file system that ``scripts/asterisk-root.sh`` builds.

Each instance lives under ``<root>/inst/<run>/<name>/`` (etc, run, log, spool, lib, cache) with its own
``asterisk.conf``, so several instances run side by side from one root. ``<run>`` is ``run<pid>`` of the
test process: two test runs at once (same test names) never share, or wipe, each other's directories.
Asterisk runs chrooted in a private mount namespace (``unshare --mount --fork --kill-child``), optionally
inside a network namespace, in its own process group; :meth:`AsteriskInstance.stop` ends it by PID.
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
REPO_ROOT = Path(__file__).resolve().parents[2]
ROOT_SCRIPT = REPO_ROOT / "scripts" / "asterisk-root.sh"
MODULES_TXT = REPO_ROOT / "tests" / "asterisk" / "MODULES.txt"

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
        return f"no Asterisk root file system at {root}: run `sudo {ROOT_SCRIPT.relative_to(REPO_ROOT)}`"
    return None


def ensure_root(root: Path = DEFAULT_ROOT, *, timeout: float = 900) -> Path:
    """Run ``scripts/asterisk-root.sh`` (fast when the root is in place) and return the root it prints."""
    proc = subprocess.run(
        ["bash", str(ROOT_SCRIPT), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise AsteriskError(f"{ROOT_SCRIPT.name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_runs(root: Path) -> list[Path]:
    """Delete the instance directories of test runs whose process is gone (never a live run's);
    returns what it deleted. Instances of the current run are kept until the next run prunes them."""
    removed = []
    for path in sorted((root / "inst").glob("run*")):
        m = _RUN_DIR_RE.match(path.name)
        if m and path.is_dir() and path.name != RUN_DIR and not _alive(int(m.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def module_dir(root: Path) -> str:
    """The module directory as seen inside the root (e.g. ``/usr/lib/x86_64-linux-gnu/asterisk/modules``)."""
    found = sorted(root.glob(_MODULE_DIR_GLOB))
    if not found:
        raise AsteriskError(f"no Asterisk module directory under {root}")
    return "/" + str(found[0].relative_to(root))


def module_load_lines(path: Path = MODULES_TXT) -> list[str]:
    """The ``load = x.so`` lines of ``tests/asterisk/MODULES.txt`` (the checked module list)."""
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
    """

    root: Path
    name: str
    config_dir: Path | None = None
    netns: str | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    extra_files: Mapping[str, str | bytes] = field(default_factory=dict)
    boot_timeout: float = 30.0
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
        return f"/inst/{RUN_DIR}/{self.name}"

    @property
    def base(self) -> Path:
        """The instance directory on the host."""
        return self.root / "inst" / RUN_DIR / self.name

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
            "; written by tests/support/asterisk.py for this instance only\n"
            "[directories]\n"
            f"astcachedir => {b}/cache\n"
            f"astetcdir => {b}/etc\n"
            f"astmoddir => {module_dir(self.root)}\n"
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
            proc = self._remote("core waitfullybooted", timeout=5, check=False)
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
