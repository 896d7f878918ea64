"""The host install path's own result: Asterisk 22 compiled by install-host.sh (``make image-check`` builds the
root, ``$SIP_TRUNK_IMAGE_ROOT``) boots the product's rendered config the way asterisk.service starts it, carries a
call carrier -> gateway -> ElevenLabs stand-in, and the image's installed host agent applies a second version.

Each test runs the gateway in a copy-on-write overlay of the built root (the cached root stays as built). The
stand-in and the carrier are the harness's (the Debian root, sipp); the agent is the one install-agent.sh put in
the image, run chrooted against an SSM emulation (moto's server on loopback).
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from sip_trunk import configstore
from sip_trunk.asterisk import parse_endpoints
from sip_trunk.manifest import MANIFEST_NAME
from sip_trunk_local.asterisk_runner import OverlayRoot
from standin import ELEVENLABS_HOST, SHARED_IP, Standin, start_standin, wait_for
from support.asterisk import AsteriskInstance
from support.gateway import ip_carrier, load_example, loopback_network, merge, render_gateway
from support.moto_server import moto_server
from support.rtp import RtpCounter, rtp_range
from support.sipp import free_media_port, free_port, run_sipp

pytestmark = pytest.mark.image

IMAGE_ROOT = Path(os.environ.get("SIP_TRUNK_IMAGE_ROOT", "/var/lib/aws-sip-trunk/image-root"))
MARKER = ".aws-sip-trunk-image-root"
UNIT = "etc/systemd/system/asterisk.service"  # what build-asterisk.sh installed from files/systemd
GATEWAY_IP = "127.0.0.1"
CARRIER_IP = "127.0.0.5"
PREFIX = "/imagecheck/asterisk"
REGION = "us-east-1"


RUN_COMMAND_ENVIRONMENT = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "AWS_SSM_INSTANCE_ID=i-0imagecheck0000000",
    f"AWS_SSM_REGION_NAME={REGION}",
)  # fmt: skip
"""What AWS-RunShellScript gives a command (ADR-21): no SIP_TRUNK_* settings, no AWS_REGION."""


def write_agent_env(root: Path, values: dict[str, str]) -> None:
    """/etc/sip-trunk/agent.env as the host stack's user data leaves it: directory 0750, file 0640, root's."""
    directory = root / "etc/sip-trunk"
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o750)
    path = directory / "agent.env"
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    path.chmod(0o640)


@dataclass(frozen=True)
class Unit:
    """The [Service] settings of asterisk.service that decide how Asterisk runs."""

    exec_start: list[str]
    user: str | None
    group: str | None
    environment: dict[str, str]
    limit_nofile: str | None


def read_unit(path: Path) -> Unit:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    service = parser["Service"]
    environment: dict[str, str] = {}
    for item in shlex.split(service.get("Environment", "")):
        key, _, value = item.partition("=")
        environment[key] = value
    return Unit(
        exec_start=shlex.split(service["ExecStart"]),
        user=service.get("User"),
        group=service.get("Group"),
        environment=environment,
        limit_nofile=service.get("LimitNOFILE"),
    )


@dataclass
class ImageGateway:
    """Asterisk of the built image in an overlay root, started like systemd starts asterisk.service."""

    root: Path
    console: Path
    unit: Unit
    process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        userspec = []
        if self.unit.user or self.unit.group:
            userspec = [f"--userspec={self.unit.user or 'root'}:{self.unit.group or self.unit.user or 'root'}"]
        env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
        env += [f"{key}={value}" for key, value in self.unit.environment.items()]
        # LimitNOFILE, or this machine's hard limit when that is lower (only root outside a sandbox may raise it)
        limit = (
            f'{{ ulimit -n {self.unit.limit_nofile} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; }} && '
            if self.unit.limit_nofile
            else ""
        )
        argv = ["chroot", *userspec, str(self.root), *env, *self.unit.exec_start]
        root = shlex.quote(str(self.root))
        # /proc and /dev as on a booted host (devtmpfs: libsrtp needs /dev/urandom), private to this Asterisk
        mounts = f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
        inner = f"{mounts}{limit}exec {shlex.join(argv)}"
        return ["unshare", "--mount", "--fork", "--kill-child", "--", "sh", "-c", inner]

    def cli(self, cmd: str, *, timeout: float = 15) -> subprocess.CompletedProcess[str]:
        argv = ["chroot", str(self.root), "/usr/sbin/asterisk", "-C", "/etc/asterisk/asterisk.conf", "-rx", cmd]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def rx(self, cmd: str) -> str:
        proc = self.cli(cmd)
        assert proc.returncode == 0, (cmd, proc)
        assert not proc.stdout.startswith("Unable to connect"), (cmd, proc)
        return proc.stdout

    def start(self, timeout: float = 30) -> None:
        with self.console.open("wb") as console:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, f"Asterisk exited during start-up:\n{self.diagnostics()}"
            if "fully booted" in self.cli("core waitfullybooted", timeout=5).stdout:
                return
            assert time.monotonic() < deadline, f"Asterisk not fully booted after {timeout} s\n{self.diagnostics()}"
            time.sleep(0.1)

    def asterisk_pid(self) -> int:
        """The PID of the asterisk process itself (inside unshare's fork)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                ours = os.readlink(entry / "root") == str(self.root)
                argv = (entry / "cmdline").read_bytes().decode().split("\0")
                if ours and (entry / "comm").read_text().strip() == "asterisk" and "-f" in argv:
                    return int(entry.name)
        raise AssertionError("no asterisk process runs in the image root")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.cli("core stop now", timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait(timeout=10)

    def log(self, name: str) -> str:
        path = self.root / "var/log/asterisk" / name
        return path.read_text(errors="replace") if path.exists() else ""

    def diagnostics(self) -> str:
        parts = [self.console.read_text(errors="replace")[-3000:] if self.console.exists() else ""]
        parts.append(self.log("messages")[-3000:])
        return "\n".join(parts)


@pytest.fixture
def image_root() -> Path:
    if os.geteuid() != 0:
        pytest.fail("the image proof needs root (chroot, overlay mounts)")
    if not (IMAGE_ROOT / MARKER).is_file() or not (IMAGE_ROOT / "usr/sbin/asterisk").is_file():
        pytest.fail(f"no built image root at {IMAGE_ROOT}: run `make image-check`")
    return IMAGE_ROOT


@pytest.fixture
def overlay(image_root: Path, tmp_path: Path) -> Iterator[Path]:
    root = OverlayRoot(image_root, tmp_path / "host").mount()
    try:
        yield root.path
    finally:
        root.unmount()


@pytest.fixture
def ssm_endpoint() -> Iterator[str]:
    with moto_server(GATEWAY_IP) as url:
        yield url


@dataclass
class World:
    gateway: ImageGateway
    standin: Standin
    settings: dict[str, Any]
    secrets: dict[str, str]
    sip_port: int
    rtp: tuple[int, int]

    @property
    def e164(self) -> str:
        return str(self.settings["elevenlabs"]["phone_number"])


@pytest.fixture
def world(overlay: Path, asterisk_factory: Callable[..., AsteriskInstance], tmp_path: Path) -> Iterator[World]:
    settings, secrets = load_example("minimal")
    el = settings["elevenlabs"]
    sip_port = free_port(GATEWAY_IP)
    rtp = rtp_range()
    standin = start_standin(
        asterisk_factory,
        e164=el["phone_number"],
        gateway_out=(el["outbound_username"], secrets[el["outbound_password"]]),
        gateway_in=(el["inbound_username"], secrets[el["inbound_password"]]),
        gateway_addr=(GATEWAY_IP, sip_port),
    )
    settings = merge(
        settings,
        {
            "elevenlabs": {"port": standin.shared_port},
            "network": loopback_network(GATEWAY_IP, sip_port, rtp, tls_port=free_port(GATEWAY_IP)),
            "carriers": [ip_carrier(CARRIER_IP, free_port(CARRIER_IP), [el["phone_number"]])],
        },
    )
    rendered = render_gateway(settings, secrets, tmp_path / "v1")
    # The first version as the host holds it: /etc/asterisk, root-owned, readable by Asterisk's group only.
    etc = overlay / "etc/asterisk"
    gid = _image_id(overlay, "group", "asterisk")
    for src in sorted(rendered.asterisk_dir.rglob("*")):
        if src.is_file():
            dest = etc / src.relative_to(rendered.asterisk_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(src.read_bytes())
            os.chown(dest, 0, gid)
            dest.chmod(0o640)
    (overlay / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n{SHARED_IP}\t{ELEVENLABS_HOST}\n")
    gateway = ImageGateway(overlay, tmp_path / "gateway-console.log", read_unit(overlay / UNIT))
    try:
        gateway.start()
        yield World(gateway, standin, settings, secrets, sip_port, rtp)
    finally:
        gateway.stop()
        standin.stop()


def _image_id(root: Path, database: str, name: str) -> int:
    """A user's or group's id in the image's own /etc/passwd or /etc/group."""
    for line in (root / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"the image has no {database} entry {name!r}")


def carrier_call(world: World, rtp_counter: Callable[..., RtpCounter], workdir: Path) -> None:
    """carrier -> gateway (the image's Asterisk) -> stand-in over TCP with digest auth, audio both ways."""
    before = len(world.standin.agent_calls())
    gateway_rtp = rtp_counter(world.rtp)
    agent_rtp = rtp_counter(world.standin.rtp_range)
    result = run_sipp(
        "carrier_uac_pcap.xml",
        workdir,
        remote=f"{GATEWAY_IP}:{world.sip_port}",
        transport="t1",
        local_ip=CARRIER_IP,
        service=world.e164,
        duration_ms=3000,
        media_port=free_media_port(CARRIER_IP),
        timeout=25,
    )
    assert result.ok, result.describe() + "\n" + world.gateway.diagnostics()
    assert world.standin.agent_calls()[before:] == [world.e164]
    gw, el = gateway_rtp.counts(), agent_rtp.counts()
    # 3 s of 20 ms packets = 150 per direction
    assert gw.to_range >= 150, f"gateway audio in: {gw}"
    assert gw.from_range >= 150, f"gateway audio out: {gw}"
    assert el.to_range >= 75, f"agent audio in: {el}"
    assert el.from_range >= 75, f"agent audio out: {el}"


def test_built_root_boots_the_rendered_config_as_asterisk_and_carries_a_call(
    world: World, rtp_counter: Callable[..., RtpCounter], tmp_path: Path
) -> None:
    # Given the image's Asterisk started with asterisk.service's ExecStart on the rendered config
    gateway = world.gateway
    # Then it is the compiled 22 release, running as the image's asterisk user (runuser), with every module
    # modules.conf loads
    assert re.match(r"Asterisk 22\.\d+\.\d+", gateway.rx("core show version")), gateway.rx("core show version")
    pid = gateway.asterisk_pid()
    uid_line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    assert set(uid_line.split()[1:]) == {str(_image_id(gateway.root, "passwd", "asterisk"))}, uid_line
    wanted = set(re.findall(r"^load = (\S+\.so)", (gateway.root / "etc/asterisk/modules.conf").read_text(), re.M))
    running = set(re.findall(r"^(\S+\.so)\s.*\bRunning\b", gateway.rx("module show"), re.MULTILINE))
    assert wanted, "modules.conf loads nothing"
    assert wanted <= running, f"not running: {sorted(wanted - running)}"
    # And a carrier's call reaches the agent with audio both ways
    carrier_call(world, rtp_counter, tmp_path / "call1")


def test_image_agent_applies_a_second_version_on_the_built_gateway(
    world: World, ssm_endpoint: str, rtp_counter: Callable[..., RtpCounter], tmp_path: Path
) -> None:
    # Given a second version in SSM: one more carrier (a second DID to the same agent number's gateway)
    second_carrier = ip_carrier("127.0.0.7", free_port("127.0.0.7"), ["+14155550199"], name="carrier2")
    settings = merge(world.settings, {"carriers": [*world.settings["carriers"], second_carrier]})
    rendered = render_gateway(settings, world.secrets, tmp_path / "v2").rendered
    ssm = boto3.client(
        "ssm", region_name=REGION, endpoint_url=ssm_endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )  # fmt: skip
    configstore.publish_config(ssm, PREFIX, rendered.files, rendered.secret_files, rendered.version)
    assert MANIFEST_NAME in rendered.files

    # When the image's own agent (install-agent.sh's venv) applies it, chrooted, as Run Command starts it: only
    # the SSM agent's variables, the deployment's settings in the agent.env that user data writes
    write_agent_env(
        world.gateway.root,
        {
            "SIP_TRUNK_CONFIG_PREFIX": PREFIX, "SIP_TRUNK_FAIL2BAN_RELOAD": "", "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL": ssm_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        },
    )  # fmt: skip
    agent = [
        "chroot", str(world.gateway.root), "/usr/bin/env", "-i", *RUN_COMMAND_ENVIRONMENT,
        "/usr/local/bin/sip-trunk-agent", "apply", "--version", rendered.version,
    ]  # fmt: skip
    proc = subprocess.run(agent, capture_output=True, text=True, timeout=120, check=False)

    # Then it succeeded: /etc/asterisk is the new release, group asterisk, and Asterisk (as asterisk) loaded it
    assert proc.returncode == 0, proc.stdout + proc.stderr + world.gateway.diagnostics()
    assert '"ok": true' in proc.stdout, proc.stdout
    etc = world.gateway.root / "etc/asterisk"
    assert etc.is_symlink()
    assert rendered.version in os.readlink(etc)
    assert (etc / "pjsip.conf").stat().st_gid == _image_id(world.gateway.root, "group", "asterisk")
    endpoints = {e.name for e in parse_endpoints(world.gateway.rx("pjsip show endpoints"))}
    assert "carrier2" in endpoints, endpoints
    # And the gateway still carries the first carrier's call on the new version
    assert wait_for(lambda: world.standin.channel_count() == 0, 5.0)
    carrier_call(world, rtp_counter, tmp_path / "call2")
