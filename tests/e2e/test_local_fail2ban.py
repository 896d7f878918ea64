"""fail2ban on a local host, as systemd runs it on EC2: started with the host, configured by the agent's `apply`
(the rendered jail and filter in the host's /etc/fail2ban, then this server's `fail2ban-client reload`), reading
the host's Asterisk security log and banning with the jail's iptables action in the host's namespace.

A stranger on the internet guessing a password at the Elastic IP is banned and gets no answer afterwards, also
after the security group is rewritten; the control plane's and the ElevenLabs stand-in's SIP OPTIONS probes are
answered throughout and never banned; the in-VPC probe function's address failing as often is not banned (the
`ignoreip` the settings' `local_nets` render), and once that entry is removed from the running jail (the
negative control) the same failures ban it. Power-off ends the server and its chains; power-on starts it with
the applied jail and the bans of the host's database; `teardown` leaves no fail2ban process behind."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sip_trunk import configstore
from sip_trunk.render import render_configs
from sip_trunk.settings import parse_secrets, parse_settings
from sip_trunk.sip import ProbeResult, ProbeTarget, Transport, probe_options
from sip_trunk_local import fail2ban
from sip_trunk_local.asterisk_runner import DEFAULT_ROOT, process_alive
from sip_trunk_local.firewall import HostFirewall
from sip_trunk_local.hosts import LocalHostManager
from sip_trunk_local.netns import run_in_namespace
from sip_trunk_local.orchestrator import PROBE_SECURITY_GROUP
from sip_trunk_local.standin import carrier_settings
from sip_trunk_local.topology import CONTROL_PLANE_IP, PROBE_FUNCTION_IP, PUBLIC_IP, STANDIN_IP
from support.sipp import Sipp, auth_field, write_injection

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
STACK = "f2b"
PREFIX = f"/sip-trunk/{STACK}/asterisk"
PRIMARY, PRIMARY_IP = "i-0f2b0f2b0f2b60001", "10.0.0.10"
STRANGER = "198.51.100.66"  # on the internet: neither a carrier, ElevenLabs nor AWS
LOCAL_NET = "10.0.0.0/24"
EXT_SECRET_REF = "ssm:/demo/sip/ext-1001"
ATTEMPTS = 7  # more than the jail's maxretry (5)


def _settings() -> tuple[dict[str, Any], dict[str, str]]:
    settings = yaml.safe_load((REPO / "examples/minimal.yaml").read_text())
    secrets = yaml.safe_load((REPO / "examples/minimal.secrets.yaml").read_text())
    settings.update(carrier_settings(settings["elevenlabs"]["phone_number"]))
    settings["network"] = {"public_address": PUBLIC_IP, "local_nets": [LOCAL_NET]}
    settings["extensions"] = [{"number": "1001", "password": EXT_SECRET_REF, "video": False}]
    return settings, {**secrets, EXT_SECRET_REF: "ext-1001-Secret"}


def _firewall() -> HostFirewall:
    """The hosts' security group without the ElevenLabs static range: SIP over TCP open to the internet."""
    parameters = {"RootStackName": STACK, "LogKmsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/0000-f2b"}
    return HostFirewall.from_template(
        REPO / "stacks/network.yaml", parameters, members={PROBE_SECURITY_GROUP: [PROBE_FUNCTION_IP]}
    )


@pytest.fixture
def manager(moto_endpoint: str, tmp_path: Path) -> Iterator[LocalHostManager]:
    manager = LocalHostManager(
        tmp_path / "run", DEFAULT_ROOT, moto_endpoint, REGION, agent_env={"SIP_TRUNK_STACK": STACK},
        firewall=_firewall(),
    )  # fmt: skip
    pids: list[int] = []
    try:
        manager.start_host(PRIMARY, PRIMARY_IP, "primary")
        manager.map_public_address(PUBLIC_IP, PRIMARY)
        yield manager
    finally:
        pids = [h["fail2ban_pid"] for h in manager.status()["hosts"].values() if h["fail2ban_pid"]]
        manager.teardown()
        assert manager.leftovers() == {"processes": [], "namespaces": [], "mounts": []}
        assert not [pid for pid in pids if process_alive(pid)], pids


def _probe(netns: str, host: str) -> ProbeResult:
    """The product's SIP OPTIONS probe (VerifyTrunk, the health check, watch-peer) from ``netns``."""
    target = ProbeTarget(host=host, port=5060, transport=Transport.TCP)
    result: ProbeResult = run_in_namespace(netns, lambda: probe_options(target, 1.0, verify=False))
    return result


def _guesser(workdir: Path, netns: str, source: str, remote: str) -> Sipp:
    """``ATTEMPTS`` INVITEs for extension 1001 with a wrong password from ``source`` (in the background: once
    banned, its last attempts hang until the test stops it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    users = write_injection(workdir / f"{source}.csv", [["1001", auth_field("1001", "a-wrong-Guess")]])
    return Sipp(
        "uac_auth_pcap.xml", workdir / source, remote=remote, transport="t1", local_ip=source, service="800",
        inject=users, calls=ATTEMPTS, rate=10, duration_ms=200, netns=netns, global_timeout_s=30,
    ).start()  # fmt: skip


def _wait_banned(manager: LocalHostManager, address: str, timeout: float = 30) -> float:
    """Seconds until the host's jail bans ``address`` and its iptables rule is in the host's namespace."""
    netns = manager.host(PRIMARY).netns
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if address in manager.fail2ban_banned(PRIMARY) and fail2ban.firewall_blocks(netns, address):
            return time.monotonic() - started
        time.sleep(0.1)
    log = manager.host(PRIMARY).path("/var/log/fail2ban.log").read_text(errors="replace")
    raise AssertionError(f"{address} not banned after {timeout:.0f} s:\n{log[-3000:]}")


def _failures(manager: LocalHostManager, source: str) -> int:
    lines = manager.host(PRIMARY).log_text("security").splitlines()
    return sum(1 for line in lines if "ChallengeResponseFailed" in line and f"/{source}/" in line)


def test_a_stranger_is_banned_at_the_elastic_ip_the_probes_and_the_vpc_never(
    manager: LocalHostManager, moto_endpoint: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    host = manager.host(PRIMARY)
    # Given a primary whose fail2ban started with it, before any apply without the product's jail
    assert manager.status()["hosts"][PRIMARY]["fail2ban_running"]
    assert fail2ban.JAIL not in manager.fail2ban_client(PRIMARY, "status")

    # When the agent applies the deployment's config (as SSM Run Command runs it)
    settings, secrets = _settings()
    rendered = render_configs(parse_settings(settings, "t"), parse_secrets(secrets, "t"), public_address=PUBLIC_IP)
    ssm = configstore_client(moto_endpoint)
    configstore.publish_config(ssm, PREFIX, rendered.files, rendered.secret_files, rendered.version)
    code, out, err = manager.run_command(PRIMARY, ["sip-trunk-agent", "apply", "--version", rendered.version], {})
    assert code == 0, (out, err[-3000:])
    applied = json.loads(out)
    assert applied["ok"], applied
    assert applied["warnings"] == [], applied

    # Then the host's fail2ban runs the rendered jail, with its ignoreip from the settings
    assert (host.fail2ban_dir / f"jail.d/{fail2ban.JAIL}.local").read_bytes() == rendered.files[
        f"fail2ban/jail.d/{fail2ban.JAIL}.local"
    ]
    ignored = manager.fail2ban_client(PRIMARY, "get", fail2ban.JAIL, "ignoreip")
    assert LOCAL_NET in ignored, ignored
    assert manager.fail2ban_banned(PRIMARY) == []

    # When a stranger on the internet guesses extension 1001's password at the Elastic IP
    stranger = manager.add_outside("stranger", STRANGER)
    standin = manager.add_outside("elevenlabs", STANDIN_IP)
    control_plane = manager.control_plane_namespace()
    assert _probe(stranger, PUBLIC_IP).reachable, "SIP unreachable before any ban"
    brute = _guesser(tmp_path, stranger, STRANGER, f"{PUBLIC_IP}:5060")
    try:
        # Then it is banned in the primary's namespace and gets no answer any more
        banned_after = _wait_banned(manager, STRANGER)
    finally:
        brute.stop()
    assert not _probe(stranger, PUBLIC_IP).reachable, "the banned stranger still reaches SIP"
    # even after the security group is rewritten (a host starting or stopping rewrites every host's)
    manager.apply_firewalls()
    assert fail2ban.firewall_blocks(host.netns, STRANGER)
    assert not _probe(stranger, PUBLIC_IP).reachable, "the ban did not survive a security group rewrite"

    # And the control plane's and the stand-in's OPTIONS probes are answered, and never banned
    for _ in range(ATTEMPTS):
        for netns, source in ((control_plane, CONTROL_PLANE_IP), (standin, STANDIN_IP)):
            assert _probe(netns, PUBLIC_IP).reachable, source
    # And the in-VPC probe function's address, failing as often as the stranger, is not banned (local_nets)
    vpc = _guesser(tmp_path, manager.probe_function_namespace(), PROBE_FUNCTION_IP, f"{PRIMARY_IP}:5060")
    try:
        deadline = time.monotonic() + 20
        while _failures(manager, PROBE_FUNCTION_IP) < ATTEMPTS and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        vpc.stop()
    assert _failures(manager, PROBE_FUNCTION_IP) >= ATTEMPTS, host.log_text("security")[-3000:]
    time.sleep(2)  # several polls of the security log
    banned = manager.fail2ban_banned(PRIMARY)
    assert banned == [STRANGER], banned
    assert _probe(manager.probe_function_namespace(), PRIMARY_IP).reachable

    # Negative control: with the VPC out of the running jail's ignoreip, the same failures ban it
    manager.fail2ban_client(PRIMARY, "set", fail2ban.JAIL, "delignoreip", LOCAL_NET)
    vpc = _guesser(tmp_path / "unignored", manager.probe_function_namespace(), PROBE_FUNCTION_IP, f"{PRIMARY_IP}:5060")
    try:
        _wait_banned(manager, PROBE_FUNCTION_IP)
    finally:
        vpc.stop()

    # And a power loss ends the server, and its chains go with the host's kernel state
    pid = manager.status()["hosts"][PRIMARY]["fail2ban_pid"]
    manager.power_off(PRIMARY)
    assert not process_alive(pid)
    assert not fail2ban.firewall_blocks(host.netns, STRANGER)
    assert not manager.status()["hosts"][PRIMARY]["fail2ban_running"]
    # And at power-on (launch role kept: this bare world has no state table to take it from) fail2ban starts
    # with the applied jail from the host's disk: the stranger's ban is restored from its database, and the
    # VPC, whose ignoreip entry was removed only from the running jail, is ignored again
    boot = manager.power_on(PRIMARY, launch_role=True)
    assert boot["ok"], boot
    assert manager.status()["hosts"][PRIMARY]["fail2ban_running"]
    _wait_banned(manager, STRANGER, timeout=15)
    assert LOCAL_NET in manager.fail2ban_client(PRIMARY, "get", fail2ban.JAIL, "ignoreip")
    assert manager.fail2ban_banned(PRIMARY) == [STRANGER]
    assert not _probe(stranger, PUBLIC_IP).reachable
    print(
        f"stranger banned {banned_after:.1f} s after its first of {ATTEMPTS} guesses; "
        f"test body {time.monotonic() - started:.1f} s"
    )


def configstore_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "ssm", region_name=REGION, endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
