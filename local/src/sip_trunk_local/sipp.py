"""Run sipp scenarios (by path, or by name from :data:`SCENARIO_DIRS`) and read their statistics.

sipp runs in its own process group (optionally inside a network namespace) and is always ended by PID.
Statistics come from ``-trace_stat`` (CSV, last row) with ``-trace_screen`` as a fall-back.
Debian's sipp 3.6.1 is built without TLS: :class:`TlsTunnel` puts a socat TLS client in front of a TCP sipp.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sip_trunk_local.rtp import RtpRange, reserve_rtp_range

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
# Where scenario names are looked up, first match wins (the test suite puts its own directory first).
SCENARIO_DIRS: list[Path] = [SCENARIO_DIR]
SIPP_SHARE = Path("/usr/share/sip-tester")
G711A_PCAP = SIPP_SHARE / "g711a.pcap"
TRANSPORTS = {"u1", "un", "t1", "tn", "l1", "ln"}
MEDIA_PORTS = 4  # sipp's -mp base: audio RTP, RTCP, video RTP, video RTCP


class SippError(RuntimeError):
    """sipp could not be started or did not finish in time."""


def scenario_path(name: str | Path) -> Path:
    """A scenario by file name (``uac_auth_pcap.xml``) or path."""
    path = Path(name)
    if not path.is_absolute() and not path.exists():
        for directory in SCENARIO_DIRS:
            if (directory / path).is_file():
                return directory / path
        raise SippError(f"no sipp scenario {name} (looked in {', '.join(map(str, SCENARIO_DIRS))})")
    if not path.is_file():
        raise SippError(f"no sipp scenario {name}")
    return path


def write_injection(path: Path, rows: Sequence[Sequence[str]], order: str = "SEQUENTIAL") -> Path:
    """Write a sipp injection file (``-inf``): first line the order, then ``;``-separated fields."""
    for row in rows:
        for value in row:
            if ";" in value or "\n" in value:
                raise ValueError(f"injection field may not contain ';' or a newline: {value!r}")
    path.write_text(order + "\n" + "".join(";".join(row) + "\n" for row in rows))
    return path


def auth_field(username: str, password: str) -> str:
    """An injection field that expands to sipp's digest ``[authentication ...]`` keyword."""
    return f"[authentication username={username} password={password}]"


@dataclass
class SippResult:
    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    stats: dict[str, str]
    successful: int | None
    failed: int | None
    screen: str
    errors: str
    messages: str
    elapsed: float
    expected_calls: int | None = None
    probes: int = 0

    @property
    def ok(self) -> bool:
        """Every call succeeded: sipp exited 0 or, for a UAS (which the harness ends), the calls it was
        to take all succeeded and none failed."""
        if self.expected_calls is None:
            return self.returncode == 0
        return (self.successful or 0) >= self.expected_calls and not self.failed

    def describe(self) -> str:
        """Everything useful for an assertion message."""
        return (
            f"sipp exit {self.returncode}, successful={self.successful} failed={self.failed}\n"
            f"command: {' '.join(self.command)}\n--- stderr ---\n{self.stderr[-3000:]}\n"
            f"--- errors ---\n{self.errors[-3000:]}\n--- screen ---\n{self.screen[-3000:]}\n"
            f"--- messages (tail) ---\n{self.messages[-6000:]}"
        )


def parse_stat_csv(path: Path) -> dict[str, str]:
    """The last row of a ``-trace_stat`` file as {column: value} (sipp separates with ``;``)."""
    if not path.exists():
        return {}
    rows = [r for r in csv.reader(path.read_text(errors="replace").splitlines(), delimiter=";") if r]
    if len(rows) < 2:
        return {}
    header, last = rows[0], rows[-1]
    return {h.strip(): v.strip() for h, v in zip(header, last, strict=False) if h.strip()}


_SCREEN_RE = {
    "successful": re.compile(r"Successful call\s*\|\s*(\d+)\s*\|\s*(\d+)"),
    "failed": re.compile(r"Failed call\s*\|\s*(\d+)\s*\|\s*(\d+)"),
}


def parse_screen(text: str) -> dict[str, int]:
    """Cumulative successful/failed counts from the last statistics screen in ``-trace_screen``."""
    found: dict[str, int] = {}
    for key, regex in _SCREEN_RE.items():
        matches = regex.findall(text)
        if matches:
            found[key] = int(matches[-1][1])
    return found


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass
class Sipp:
    """One sipp process. :meth:`start` then :meth:`wait`, or :func:`run_sipp` for both.

    A UAS (no ``remote``) takes ``calls`` calls but gets no ``-m``: Debian's sipp 3.6.1 makes a call of
    each out-of-dialog request it answers with ``-aa`` (the gateway's qualify OPTIONS), counts it against
    ``-m`` and then drops the INVITEs beyond. The harness counts the calls instead (:meth:`wait`).

    ``transport``: u1/un (UDP), t1/tn (TCP; tn gets ``-max_socket``), l1/ln (TLS: needs a sipp built with
    OpenSSL and ``tls_cert``/``tls_key``; Debian's is not, see :class:`TlsTunnel`).
    ``remote`` is ``host:port`` (omit for a UAS). ``inject`` is an injection CSV (see
    :func:`write_injection`). ``media_port`` is sipp's RTP port (``-mp``), ``rtp_echo`` echoes RTP back.
    """

    scenario: str | Path
    workdir: Path
    remote: str | None = None
    transport: str = "u1"
    local_ip: str = "127.0.0.1"
    local_port: int | None = None
    service: str | None = None
    calls: int | None = 1
    rate: float | None = None
    rate_period_ms: int | None = None
    limit: int | None = None
    inject: Path | None = None
    duration_ms: int | None = None
    media_ip: str | None = None
    media_port: int | None = None
    rtp_echo: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_socket: int | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    netns: str | None = None
    global_timeout_s: float | None = None
    extra_args: Sequence[str] = ()
    trace_messages: bool = True
    process: subprocess.Popen[str] | None = field(default=None, init=False, repr=False)
    _started: float = field(default=0.0, init=False, repr=False)
    _media_ports: RtpRange | None = field(default=None, init=False, repr=False)
    _trace_parsed: tuple[int, dict[str, str]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}: {self.transport!r}")
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.local_port is None and self.netns is None:
            # sipp's default is 5060: two sipps on one address (two tests, or two test runs at once)
            # would fight over it, and one would get the other's requests
            kind = socket.SOCK_DGRAM if self.transport.startswith("u") else socket.SOCK_STREAM
            self.local_port = free_port(self.local_ip, kind)
        if self.media_port is None and self.netns is None:
            # sipp's default is 6000 (the same clash as 5060); this block is held until sipp ends
            self._media_ports = reserve_rtp_range(MEDIA_PORTS)
            self.media_port = self._media_ports.low
        self.scenario = scenario_path(self.scenario)

    @property
    def _stem(self) -> str:
        return Path(self.scenario).stem

    def file(self, kind: str) -> Path:
        return self.workdir / f"{self._stem}.{kind}"

    def command(self) -> list[str]:
        cmd = ["sipp"]
        if self.remote:
            cmd.append(self.remote)
        cmd += ["-sf", str(self.scenario), "-t", self.transport, "-i", self.local_ip, "-nostdin"]
        cmd += ["-mi", self.media_ip or self.local_ip]
        if self.local_port is not None:
            cmd += ["-p", str(self.local_port)]
        if self.service is not None:
            cmd += ["-s", self.service]
        if self.calls is not None and self.remote:
            cmd += ["-m", str(self.calls)]
        if self.rate is not None:
            cmd += ["-r", f"{self.rate:g}"]
        if self.rate_period_ms is not None:
            cmd += ["-rp", str(self.rate_period_ms)]
        if self.limit is not None:
            cmd += ["-l", str(self.limit)]
        if self.inject is not None:
            cmd += ["-inf", str(self.inject)]
        if self.duration_ms is not None:
            cmd += ["-d", str(self.duration_ms)]
        if self.media_port is not None:
            cmd += ["-mp", str(self.media_port)]
        if self.rtp_echo:
            cmd.append("-rtp_echo")
        if self.transport in {"l1", "ln"}:
            if not (self.tls_cert and self.tls_key):
                raise ValueError("TLS transports need tls_cert and tls_key")
            cmd += ["-tls_cert", str(self.tls_cert), "-tls_key", str(self.tls_key)]
        if self.transport in {"tn", "ln"} or self.max_socket is not None:
            cmd += ["-max_socket", str(self.max_socket or max(64, 2 * (self.limit or self.calls or 1)))]
        for key, value in self.keys.items():
            cmd += ["-key", key, str(value)]
        if self.global_timeout_s is not None:
            cmd += ["-timeout", f"{self.global_timeout_s:g}s", "-timeout_error"]
        cmd += ["-trace_stat", "-stf", str(self.file("stat.csv")), "-fd", "1"]
        cmd += ["-trace_screen", "-screen_file", str(self.file("screen.log"))]
        cmd += ["-trace_err", "-error_file", str(self.file("errors.log"))]
        if self.trace_messages:
            cmd += ["-trace_msg", "-message_file", str(self.file("messages.log"))]
        cmd += list(self.extra_args)
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self) -> Sipp:
        for kind in ("stat.csv", "screen.log", "errors.log", "messages.log"):
            self.file(kind).unlink(missing_ok=True)
        self._trace_parsed = None
        self._started = time.monotonic()
        with self.file("stdout").open("w") as out, self.file("stderr").open("w") as err:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                text=True,
                start_new_session=True,
            )
        if self.remote is None and self.local_port is not None:
            self._wait_listening(self.local_port)
        return self

    def _wait_listening(self, port: int, timeout: float = 10.0) -> None:
        """A far end is ready once its SIP socket is bound (TCP: listening): a caller started right after
        ``start()`` would otherwise meet a refused connection. Read from the process's own view of the
        network (``/proc/<pid>/net``), which is its namespace's."""
        assert self.process is not None
        table, state = ("udp", "07") if self.transport.startswith("u") else ("tcp", "0A")
        wanted = f":{port:04X}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                rows = Path(f"/proc/{self.process.pid}/net/{table}").read_text().splitlines()[1:]
            except OSError:
                return
            for row in rows:
                fields = row.split()
                if len(fields) > 3 and fields[1].endswith(wanted) and fields[3] == state:
                    return
            time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """End sipp (SIGTERM, then SIGKILL) by its process group."""
        proc = self.process
        if proc is None:
            return
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if self._media_ports is not None:
            self._media_ports.release()

    @property
    def _counts_calls(self) -> bool:
        return self.remote is None and self.calls is not None

    def _counts(self) -> tuple[int | None, int | None]:
        """sipp's own successful and failed call counts (its statistics file, else its last screen)."""
        stats = parse_stat_csv(self.file("stat.csv"))
        successful, failed = _int(stats.get("SuccessfulCall(C)")), _int(stats.get("FailedCall(C)"))
        if successful is None or failed is None:
            screen_path = self.file("screen.log")
            screen = parse_screen(screen_path.read_text(errors="replace")) if screen_path.exists() else {}
            successful = screen.get("successful") if successful is None else successful
            failed = screen.get("failed") if failed is None else failed
        return successful, failed

    def _first_requests(self) -> dict[str, str]:
        """:func:`call_ids_by_first_request` of the trace, parsed again only once the trace has grown (the
        polls of :meth:`wait` and :meth:`stop` would otherwise reparse the whole trace ten times a second)."""
        path = self.file("messages.log")
        size = path.stat().st_size if path.exists() else 0
        if self._trace_parsed is None or self._trace_parsed[0] != size:
            text = path.read_text(errors="replace") if size else ""
            self._trace_parsed = (size, call_ids_by_first_request(text))
        return self._trace_parsed[1]

    def _calls_ended(self) -> int:
        """Calls sipp has ended, less the calls it made of answered probes (see the class notes)."""
        successful, failed = (count or 0 for count in self._counts())
        if successful + failed < (self.calls or 0):
            return successful + failed  # not done whatever the probes: the trace need not be read
        probes = sum(1 for method in self._first_requests().values() if method != "INVITE")
        return successful + max(0, failed - probes)

    def _calls_done(self) -> bool:
        return self._calls_ended() >= (self.calls or 0)

    def _calls_pending(self) -> bool:
        """A call came in (its INVITE is in the trace) and has not ended yet (by the statistics)."""
        started = sum(1 for method in self._first_requests().values() if method == "INVITE")
        successful, failed = (count or 0 for count in self._counts())
        probes = sum(1 for method in self._first_requests().values() if method != "INVITE")
        return started > successful + max(0, failed - probes)

    def wait(self, timeout: float = 60.0) -> SippResult:
        """Wait for sipp to finish, or a UAS for its calls to end (kill it after ``timeout``), and collect
        its results."""
        if self.process is None:
            raise SippError("sipp was not started")
        deadline = time.monotonic() + timeout
        try:
            while self.process.poll() is None and time.monotonic() < deadline:
                if self._counts_calls and self._calls_done():
                    break
                time.sleep(0.1)
            timed_out = self.process.poll() is None and not (self._counts_calls and self._calls_done())
        finally:
            self.kill()
        result = self.result()
        if timed_out:
            raise SippError(f"sipp did not finish within {timeout} s\n{result.describe()}")
        return result

    def stop(self, settle_s: float = 5.0) -> SippResult:
        """End a long-running sipp (a UAS) and collect its results; a call still ending (the far end's BYE
        on its way) gets up to ``settle_s`` to end first."""
        deadline = time.monotonic() + settle_s
        while self.running and time.monotonic() < deadline and self._calls_pending():
            time.sleep(0.1)
        self.kill()
        return self.result()

    def result(self) -> SippResult:
        assert self.process is not None

        def read(kind: str) -> str:
            path = self.file(kind)
            return path.read_text(errors="replace") if path.exists() else ""

        successful, failed = self._counts()
        probes = 0
        if self._counts_calls:
            # the calls sipp made of answered out-of-dialog requests (see the class notes) are not calls
            probes = sum(1 for method in self._first_requests().values() if method != "INVITE")
            if failed is not None:
                failed = max(0, failed - probes)
        return SippResult(
            command=self.command(),
            returncode=self.process.returncode if self.process.returncode is not None else -1,
            stdout=read("stdout"),
            stderr=read("stderr"),
            stats=parse_stat_csv(self.file("stat.csv")),
            successful=successful,
            failed=failed,
            screen=read("screen.log"),
            errors=read("errors.log"),
            messages=read("messages.log"),
            elapsed=time.monotonic() - self._started,
            expected_calls=self.calls if self._counts_calls else None,
            probes=probes,
        )


def run_sipp(scenario: str | Path, workdir: Path, *, timeout: float = 60.0, **options: object) -> SippResult:
    """Run a scenario to the end (see :class:`Sipp` for the options) and return its result."""
    # sipp's own global timeout fires first, so it still writes its statistics and exits non-zero.
    options.setdefault("global_timeout_s", max(1.0, timeout - 3.0))
    sipp = Sipp(scenario, workdir, **options)  # type: ignore[arg-type]
    sipp.start()
    return sipp.wait(timeout=timeout)


def registered_phone(
    workdir: Path, *, remote: str, local_ip: str, extension: str, password: str, scenario: str = "phone_uas.xml"
) -> tuple[Sipp, int]:
    """A softphone that registers ``extension`` over UDP from ``local_ip`` (digest auth), then answers one call
    on the same port with ``scenario`` (qualify OPTIONS too); returns the running UAS and its port."""
    port = free_port(local_ip, socket.SOCK_DGRAM)
    users = write_injection(workdir / f"{extension}-register.csv", [[extension, auth_field(extension, password)]])
    registered = run_sipp(
        "phone_register.xml",
        workdir / f"{extension}-register",
        remote=remote,
        transport="u1",
        local_ip=local_ip,
        local_port=port,
        inject=users,
        timeout=20,
    )
    if not registered.ok:
        raise SippError(f"extension {extension} did not register\n{registered.describe()}")
    phone = Sipp(
        scenario,
        workdir / f"{extension}-phone",
        transport="u1",
        local_ip=local_ip,
        local_port=port,
        media_port=free_media_port(local_ip),
        extra_args=["-aa"],
        global_timeout_s=60,
    ).start()
    return phone, port


_TRACE_HEADER = re.compile(
    r"^-{20,} ([^\n]*)\n(?:\w+ )?(?:\w+ )?message (received \[(\d+)\] bytes :|sent \((\d+) bytes\):)\n\n",
    re.MULTILINE,
)


@dataclass(frozen=True)
class TracedMessage:
    """One message of a sipp message trace (``-trace_msg``)."""

    received: bool
    text: str
    logged_at: datetime | None = None
    """When sipp logged it (just after sending or reading it; sipp's local time, microseconds)."""


def traced_messages(messages: str) -> list[TracedMessage]:
    """The complete messages of a sipp message trace, in order.

    Each entry announces its size in bytes; the message is that many bytes (sipp may log more after it,
    such as a note on an unexpected message). A trace read while sipp runs may end inside the last message
    (sipp writes through a stdio buffer): it is left out until it is whole. SIP lines end in CRLF, which
    reading the trace as text turned into one newline, so a newline counts two bytes.
    """
    found: list[TracedMessage] = []
    entries = list(_TRACE_HEADER.finditer(messages))
    for index, match in enumerate(entries):
        stop = entries[index + 1].start() if index + 1 < len(entries) else len(messages)
        size, length = int(match.group(3) or match.group(4)), 0
        for length, char in enumerate(messages[match.end() : stop], start=1):  # noqa: B007 - used below
            size -= len(char.encode("utf-8", "surrogateescape")) + (char == "\n")
            if size <= 0:
                break
        if size > 0 and stop == len(messages):
            break  # the last message is not all there yet
        body = messages[match.end() : match.end() + length]
        try:
            logged_at: datetime | None = datetime.strptime(match.group(1).strip(), "%Y-%m-%d %H:%M:%S.%f")
        except ValueError:
            logged_at = None
        found.append(TracedMessage(received=match.group(3) is not None, text=body.strip(), logged_at=logged_at))
    return found


def received_messages(messages: str) -> list[str]:
    """Every complete message sipp received, in order, from its message trace (which also holds what it sent)."""
    return [m.text for m in traced_messages(messages) if m.received]


def received_requests(messages: str, method: str) -> list[str]:
    """Request lines of the complete ``method`` requests sipp received, from its message trace."""
    lines = (m.split("\n", 1)[0] for m in received_messages(messages))
    return [line for line in lines if re.fullmatch(rf"{method} sip:\S+ SIP/2\.0", line)]


def call_ids_by_first_request(messages: str) -> dict[str, str]:
    """For each Call-ID sipp received a request on, the method of the first one (a UAS's calls start with
    INVITE; a dialog that starts with OPTIONS is a keep-alive probe sipp answered, not a call)."""
    first: dict[str, str] = {}
    for message in received_messages(messages):
        method = message.split(" ", 1)[0]
        if method.startswith("SIP/"):
            continue
        call_id = re.search(r"^(?:Call-ID|i): *(\S+)", message, re.MULTILINE | re.IGNORECASE)
        if call_id:
            first.setdefault(call_id.group(1), method)
    return first


_HANDED_OUT: set[int] = set()


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free now on ``host`` and was not handed out before in this process (for loopback
    tests; another program may still take it before it is bound, which is unlikely)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise SippError(f"no new free port on {host}")


def free_media_port(host: str = "127.0.0.1") -> int:
    """sipp's media base port (``-mp``): sipp binds it and the three above it (RTCP, video, video RTCP), so
    it comes from the reserved RTP pool below the kernel's ephemeral range, where no :func:`free_port`
    port can fall (released after the test, with the RTP ranges)."""
    del host  # the pool is reserved and checked free on every address
    return reserve_rtp_range(MEDIA_PORTS).low


def free_sip_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on ``host`` now (a SIP transport pair on the same number)."""
    for _ in range(100):
        port = free_port(host)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((host, port))
        except OSError:
            continue
        return port
    raise SippError(f"no port free for both TCP and UDP on {host}")


@dataclass
class TlsTunnel:
    """socat: accept plain TCP on ``listen`` and carry it over TLS to ``target`` (host, port).

    Lets the TCP-only sipp talk to an Asterisk TLS transport. ``cafile`` verifies the server
    (``verify=False`` skips it); ``cert``/``key`` present a client certificate.
    """

    listen: tuple[str, int]
    target: tuple[str, int]
    cafile: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    verify: bool = True
    netns: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def command(self) -> list[str]:
        opts = [f"verify={1 if self.verify else 0}"]
        if self.cafile:
            opts.append(f"cafile={self.cafile}")
        if self.cert:
            opts.append(f"cert={self.cert}")
        if self.key:
            opts.append(f"key={self.key}")
        listen = f"TCP-LISTEN:{self.listen[1]},bind={self.listen[0]},reuseaddr,fork"
        connect = f"OPENSSL:{self.target[0]}:{self.target[1]}," + ",".join(opts)
        cmd = ["socat", listen, connect]
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self, timeout: float = 5.0) -> TlsTunnel:
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise SippError(f"socat exited: {err}")
            if self._listening():
                return self
            time.sleep(0.05)
        self.stop()
        raise SippError(f"socat did not listen on {self.listen} within {timeout} s")

    def _listening(self) -> bool:
        argv = ["ss", "-Hltn", f"sport = :{self.listen[1]}"]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        return bool(subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip())

    def stop(self) -> None:
        proc = self.process
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=3)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> TlsTunnel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
