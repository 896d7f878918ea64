"""The product's fail2ban jail bans for real: fail2ban-server runs in the gateway's namespace with the rendered
jail and filter, reads the real Asterisk's security log and bans with the jail's own banaction (iptables).

A brute-forcer outside is banned after the jail's `maxretry` failures and can no longer reach SIP while a
softphone elsewhere registers; the VPC (the `ignoreip` the settings derive) is never banned however often it
fails, and is banned once that entry is removed (the control); the ban lifts after `bantime`. Scanners that
never authenticate (an INVITE scanner, a REGISTER sprayer, an OPTIONS prober) are banned from the security
events Asterisk logs for unidentified sources.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sip_trunk_local.fail2ban import JAIL, Fail2ban
from support.asterisk import AsteriskInstance
from support.gateway import RenderedGateway, load_example, merge, render_gateway
from support.netns import ElasticIpTopology, in_ns
from support.sipp import Sipp, SippResult, auth_field, run_sipp, write_injection

AsteriskFactory = Callable[..., AsteriskInstance]

pytestmark = pytest.mark.asterisk

EXT_PASSWORD = "ext-1001-Secret"
EXT_SECRET_REF = "ssm:/demo/sip/ext-1001"
BRUTE_FORCER = "198.51.100.66"
VPC_SOURCE = "10.0.0.1"  # the router's private address: inside local_nets, like the standby or a probe
ATTEMPTS = 7  # more than the jail's maxretry (5)
BANTIME_S = 10  # the test's only change to the jail: a ban short enough to see it lift


def _guesser(tmp_path: Path, label: str, netns: str, source: str, remote: str) -> Sipp:
    """``ATTEMPTS`` INVITEs for extension 1001 with a wrong password, from ``source``, in the background (once
    banned, its last attempts hang until sipp gives up: the test stops it)."""
    users = write_injection(tmp_path / f"{label}.csv", [["1001", auth_field("1001", "a-wrong-Guess")]])
    return Sipp(
        "uac_auth_pcap.xml",
        tmp_path / label,
        remote=remote,
        transport="t1",
        local_ip=source,
        service="800",
        inject=users,
        calls=ATTEMPTS,
        rate=5,
        duration_ms=200,
        netns=netns,
        global_timeout_s=30,
    ).start()


def _failures(ast: AsteriskInstance, source: str) -> int:
    lines = ast.log_file("security").read_text().splitlines()
    return sum(1 for line in lines if "ChallengeResponseFailed" in line and f"/{source}/" in line)


def _wait_failures(ast: AsteriskInstance, source: str, count: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while (found := _failures(ast, source)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def _options(tmp_path: Path, label: str, netns: str, source: str, remote: str) -> list[str]:
    """The status lines of the answers an OPTIONS from ``source`` got (none when it cannot reach SIP)."""
    result = run_sipp(
        "options.xml",
        tmp_path / label,
        remote=remote,
        transport="t1",
        local_ip=source,
        inject=write_injection(tmp_path / f"{label}.csv", [["scanner", "[authentication]"]]),
        netns=netns,
        timeout=10,
    )
    return re.findall(r"^SIP/2\.0 \d{3}.*$", result.messages, re.MULTILINE)


def _gateway(topo: ElasticIpTopology, tmp_path: Path) -> RenderedGateway:
    settings, secrets = load_example("minimal")
    settings = merge(
        settings,
        {
            "extensions": [{"number": "1001", "password": EXT_SECRET_REF, "video": False}],
            "network": {
                "bind_address": topo.instance_ip(),
                "local_nets": ["10.0.0.0/24"],
                "rtp_port_start": 20000,
                "rtp_port_end": 20100,
            },
        },
    )
    return render_gateway(settings, {**secrets, EXT_SECRET_REF: EXT_PASSWORD}, tmp_path / "gw")


def _jail(gateway: RenderedGateway, ast: AsteriskInstance, topo: ElasticIpTopology, tmp_path: Path) -> Fail2ban:
    files = gateway.rendered.files
    return Fail2ban(
        tmp_path / "fail2ban",
        topo.instance_ns(),
        jail=files[f"fail2ban/jail.d/{JAIL}.local"],
        filter=files[f"fail2ban/filter.d/{JAIL}.conf"],
        logpath=ast.log_file("security"),
        overrides={"bantime": str(BANTIME_S)},
    )


def _register(tmp_path: Path, label: str, netns: str, source: str, remote: str) -> SippResult:
    users = write_injection(tmp_path / f"{label}.csv", [["1001", auth_field("1001", EXT_PASSWORD)]])
    return run_sipp(
        "phone_register.xml",
        tmp_path / label,
        remote=remote,
        transport="t1",
        local_ip=source,
        inject=users,
        netns=netns,
        timeout=20,
    )


def test_a_brute_forcer_is_banned_the_vpc_never_and_the_ban_lifts(
    asterisk_factory: AsteriskFactory, topology_factory: Callable[..., ElasticIpTopology], tmp_path: Path
) -> None:
    # Given the rendered gateway and its fail2ban jail in the instance namespace behind the Elastic IP
    topo = topology_factory()
    gateway = _gateway(topo, tmp_path)
    ast = asterisk_factory(gateway.asterisk_dir, netns=topo.instance_ns(), name=f"f2b-{topo.prefix}")
    in_ns(topo.client, "ip", "addr", "add", f"{BRUTE_FORCER}/24", "dev", "eth0")
    public = f"{topo.public_ip}:5060"
    private = f"{topo.instance_ip()}:5060"
    with _jail(gateway, ast, topo, tmp_path) as jail:
        assert _options(tmp_path, "before", topo.client, BRUTE_FORCER, public), "SIP unreachable before any ban"

        # When one outside source guesses the password again and again
        started = time.monotonic()
        brute = _guesser(tmp_path, "brute", topo.client, BRUTE_FORCER, public)
        try:
            # Then it is banned and reaches SIP no more, while a softphone elsewhere still registers
            jail.wait_banned(BRUTE_FORCER, timeout=30)
        finally:
            brute.stop()
        banned_at = time.monotonic()
        assert _options(tmp_path, "banned", topo.client, BRUTE_FORCER, public) == [], jail.diagnostics()
        registered = _register(tmp_path, "softphone", topo.client, topo.client_ip, public)
        assert registered.ok, registered.describe()

        # And the VPC, failing as often, is never banned: it is in the jail's ignoreip
        vpc = _guesser(tmp_path, "vpc", topo.router, VPC_SOURCE, private)
        try:
            failures = _wait_failures(ast, VPC_SOURCE, ATTEMPTS)
        finally:
            vpc.stop()
        assert failures >= ATTEMPTS, ast.log_file("security").read_text()
        time.sleep(3)  # several polls of the log
        assert VPC_SOURCE not in jail.banned(), jail.diagnostics()
        assert _options(tmp_path, "vpc-after", topo.router, VPC_SOURCE, private), "the VPC lost SIP"

        # And the ban lifts after bantime
        jail.wait_unbanned(BRUTE_FORCER, timeout=BANTIME_S + 15)
        banned_for = time.monotonic() - banned_at
        assert _options(tmp_path, "after", topo.client, BRUTE_FORCER, public), "still unreachable after the ban"

        # Negative control: without the VPC in ignoreip the same failures ban it
        jail_cmd = ["fail2ban-client", "-c", str(jail.config_dir), "set", JAIL, "delignoreip", "10.0.0.0/24"]
        in_ns(topo.instance_ns(), *jail_cmd)
        vpc = _guesser(tmp_path, "vpc-unignored", topo.router, VPC_SOURCE, private)
        try:
            jail.wait_banned(VPC_SOURCE, timeout=30)
        finally:
            vpc.stop()
    print(
        f"banned {banned_at - started:.1f} s after the first of {ATTEMPTS} guesses, seen banned for {banned_for:.1f} s "
        f"(bantime {BANTIME_S} s from the last failure); the VPC failed {failures} times unbanned"
    )


SCANNERS = {
    "198.51.100.67": ("uac_noauth.xml", {"from_user": "100"}),  # INVITEs to a guessed user, no credentials
    "198.51.100.68": ("register_refused.xml", {"user": "2000"}),  # REGISTERs for user names that do not exist
    "198.51.100.69": ("options_noauth.xml", {"from_user": "sipvicious"}),  # OPTIONS probes
}


def test_scanners_that_never_authenticate_are_banned(
    asterisk_factory: AsteriskFactory, topology_factory: Callable[..., ElasticIpTopology], tmp_path: Path
) -> None:
    # Given the rendered gateway and its fail2ban jail
    topo = topology_factory()
    gateway = _gateway(topo, tmp_path)
    ast = asterisk_factory(gateway.asterisk_dir, netns=topo.instance_ns(), name=f"scan-{topo.prefix}")
    with _jail(gateway, ast, topo, tmp_path) as jail:
        # When three sources scan at five requests a second, none ever authenticating
        scanners = []
        for address, (scenario, keys) in SCANNERS.items():
            in_ns(topo.client, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
            users = write_injection(tmp_path / f"{address}.csv", [[auth_field("2000", "a-wrong-Guess")]])
            scanners.append(
                Sipp(
                    scenario,
                    tmp_path / address,
                    remote=f"{topo.public_ip}:5060",
                    transport="t1",
                    local_ip=address,
                    service="100",
                    keys=keys,
                    inject=users,
                    calls=12,
                    rate=5,
                    netns=topo.client,
                    global_timeout_s=30,
                ).start()
            )
        try:
            # Then each is banned
            waited = {address: jail.wait_banned(address, timeout=30) for address in SCANNERS}
        finally:
            for scanner in scanners:
                scanner.stop()
    events = ast.log_file("security").read_text()
    assert all(f"/{address}/" in events for address in SCANNERS), events
    print("banned within (s):", {address: round(seconds, 1) for address, seconds in waited.items()})


SLOW_SCANNER = "198.51.100.70"
PRODUCT_PROBE = "198.51.100.71"
UNIDENTIFIED_SETTINGS = re.compile(r"^unidentified_request_\w+ = .*\n", re.MULTILINE)


def _slow_options(tmp_path: Path, label: str, topo: ElasticIpTopology, source: str, from_user: str) -> Sipp:
    """One OPTIONS every 3 s from ``source``, never authenticating."""
    in_ns(topo.client, "ip", "addr", "add", f"{source}/24", "dev", "eth0")
    return Sipp(
        "options_noauth.xml",
        tmp_path / label,
        remote=f"{topo.public_ip}:5060",
        transport="t1",
        local_ip=source,
        keys={"from_user": from_user},
        calls=20,
        rate=1,
        rate_period_ms=3000,
        netns=topo.client,
        global_timeout_s=70,
    ).start()


def _invalid_account_events(ast: AsteriskInstance, source: str) -> int:
    lines = ast.log_file("security").read_text().splitlines()
    return sum(1 for line in lines if "InvalidAccountID" in line and f"/{source}/" in line)


def test_a_slow_scanner_is_banned_and_the_products_own_probes_never(
    asterisk_factory: AsteriskFactory, topology_factory: Callable[..., ElasticIpTopology], tmp_path: Path
) -> None:
    # Given the product's gateway and jail, and beside it the same gateway with Asterisk's default
    # unidentified-request settings (5 requests within 5 s) as the control
    product_topo, defaults_topo = topology_factory(), topology_factory()
    product = _gateway(product_topo, tmp_path / "product")
    defaults = _gateway(defaults_topo, tmp_path / "defaults")
    pjsip = defaults.asterisk_dir / "pjsip.conf"
    pjsip.write_text(UNIDENTIFIED_SETTINGS.sub("", pjsip.read_text()))
    product_ast = asterisk_factory(product.asterisk_dir, netns=product_topo.instance_ns(), name="slow-product")
    defaults_ast = asterisk_factory(defaults.asterisk_dir, netns=defaults_topo.instance_ns(), name="slow-defaults")
    with (
        _jail(product, product_ast, product_topo, tmp_path / "product") as product_jail,
        _jail(defaults, defaults_ast, defaults_topo, tmp_path / "defaults") as defaults_jail,
    ):
        # When a scanner sends one OPTIONS every 3 s to each, and a source sends the product's probes as slowly
        senders = [
            _slow_options(tmp_path, "scanner", product_topo, SLOW_SCANNER, "sipvicious"),
            _slow_options(tmp_path, "control-scanner", defaults_topo, SLOW_SCANNER, "sipvicious"),
            _slow_options(tmp_path, "probe", product_topo, PRODUCT_PROBE, "probe"),
        ]
        try:
            # Then the product bans the scanner
            banned_after = product_jail.wait_banned(SLOW_SCANNER, timeout=60)
            requests = round(banned_after / 3) + 1
        finally:
            for sender in senders:
                sender.stop()
        # And with Asterisk's defaults the same scanner was never even reported
        assert SLOW_SCANNER not in defaults_jail.banned(), defaults_jail.diagnostics()
        assert _invalid_account_events(defaults_ast, SLOW_SCANNER) == 0
        # And the product's own probes, from user 'probe', were challenged but never counted
        assert PRODUCT_PROBE not in product_jail.banned(), product_jail.diagnostics()
        assert _invalid_account_events(product_ast, PRODUCT_PROBE) == 0
        challenged = product_ast.log_file("security").read_text().count(f'RemoteAddress="IPV4/TCP/{PRODUCT_PROBE}/')
        assert challenged >= requests - 2, product_ast.log_file("security").read_text()
    print(f"a scanner at one OPTIONS per 3 s: banned after {banned_after:.0f} s (about {requests} requests)")
