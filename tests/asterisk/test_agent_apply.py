"""The host agent against a real Asterisk 22: apply → reload → verify, rollbacks that keep a real SIP call up
(sipp UAC with digest auth → Asterisk → sipp UAS echoing RTP), and backup → wipe → restore. AWS is moto;
Asterisk runs chrooted through the shared harness."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk import configstore
from sip_trunk.agent import backup as backup_mod
from sip_trunk.agent.__main__ import main
from sip_trunk.agent.apply import ApplyFailed, apply_version
from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.releases import Releases
from sip_trunk.agent.runtime import AsteriskCli
from sip_trunk.asterisk import parse_channel_count, parse_endpoints
from sip_trunk.manifest import MANIFEST_NAME, Manifest
from support.asterisk import AsteriskInstance
from support.rtp import RtpCounter, RtpCounts, rtp_range
from support.sipp import Sipp, auth_field, free_media_port, free_port, free_sip_port, scenario_path, write_injection

pytestmark = pytest.mark.asterisk

REGION = "us-east-1"
PREFIX = "/agenttest/asterisk"
BUCKET = "agenttest-backups"
MODULES = """[modules]
autoload = no
load = res_sorcery_config.so
load = res_sorcery_memory.so
load = res_sorcery_astdb.so
load = res_pjproject.so
load = res_pjsip.so
load = res_pjsip_session.so
load = res_pjsip_pubsub.so
load = chan_pjsip.so
load = res_pjsip_authenticator_digest.so
load = res_pjsip_endpoint_identifier_user.so
load = res_pjsip_registrar.so
load = res_pjsip_sdp_rtp.so
load = res_rtp_asterisk.so
load = res_timing_timerfd.so
load = codec_ulaw.so
load = pbx_config.so
load = app_dial.so
load = bridge_simple.so
load = res_clioriginate.so
"""
PCAP_SECONDS = 7.1  # sipp's g711a.pcap lasts 7.05 s


def endpoint(name: str, extra: str = "") -> str:
    return (
        f"\n[{name}]\ntype = endpoint\ntransport = transport-tcp\ncontext = from-extensions\n"
        f"disallow = all\nallow = ulaw\nauth = {name}\naors = {name}\n{extra}"
        f"\n[{name}]\ntype = auth\nauth_type = userpass\nusername = {name}\npassword = pw-{name}\n"
        f"\n[{name}]\ntype = aor\nmax_contacts = 1\n"
    )


@dataclass(frozen=True)
class Ports:
    sip: int
    rtp: tuple[int, int]


def config_set(asterisk_conf: bytes, ports: Ports, endpoints: str, *, extra_context: str = "") -> dict[str, bytes]:
    """A complete rendered set in the config store's layout (asterisk/…, fail2ban/…, manifest.json)."""
    port = ports.sip
    pjsip = f"[transport-tcp]\ntype = transport\nprotocol = tcp\nbind = 127.0.0.1:{port}\n{endpoints}"
    files = {
        "asterisk/asterisk.conf": asterisk_conf,
        "asterisk/modules.conf": MODULES.encode(),
        "asterisk/pjsip.conf": pjsip.encode(),
        "asterisk/extensions.conf": (
            "[general]\n\n[test]\nexten => wait,1,Answer()\n same => n,Wait(300)\n\n[from-extensions]\n"
            f"exten => 100,1,Answer()\n same => n,Hangup()\n{extra_context}"
        ).encode(),
        "asterisk/rtp.conf": f"[general]\nrtpstart = {ports.rtp[0]}\nrtpend = {ports.rtp[1]}\n".encode(),
        "asterisk/logger.conf": b"[logfiles]\nmessages.log => notice,warning,error\nsecurity.log => security\n",
        "fail2ban/jail.d/asterisk-sip-trunk.local": f"[asterisk-sip-trunk]\nenabled = true\n# {port}\n".encode(),
    }
    for empty in ("cdr", "cel", "features", "acl", "udptl", "pjproject"):
        files[f"asterisk/{empty}.conf"] = b"; intentionally empty\n"  # SSM refuses empty values
    files[MANIFEST_NAME] = Manifest.for_files(files).to_json()
    return files


@dataclass
class Host:
    inst: AsteriskInstance
    config: AgentConfig
    cli: AsteriskCli
    ssm: Any
    s3: Any
    port: Ports
    asterisk_conf: bytes

    def publish(self, files: dict[str, bytes]) -> str:
        version = Manifest.from_json(files[MANIFEST_NAME]).version
        configstore.publish_config(self.ssm, PREFIX, files, ["asterisk/pjsip.conf"], version)
        return version

    def endpoints(self) -> set[str]:
        return {e.name for e in parse_endpoints(self.inst.rx("pjsip show endpoints"))}

    def channels(self) -> set[tuple[str, str]]:
        """(channel, unique id) of every live channel: the same pair before and after means the call never dropped."""
        rows = [line.split("!") for line in self.inst.rx("core show channels concise").splitlines() if "!" in line]
        return {(row[0], row[-1]) for row in rows}


@pytest.fixture
def host(asterisk_factory: Any, tmp_path: Path) -> Iterator[Host]:
    port = Ports(free_port(), rtp_range())
    inst: AsteriskInstance = asterisk_factory(None, start=False)
    inst.prepare()
    asterisk_conf = (inst.etc_dir / "asterisk.conf").read_bytes()
    with mock_aws():
        ssm = boto3.client("ssm", region_name=REGION)
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        initial = config_set(asterisk_conf, port, endpoint("alice"))
        for rel, data in initial.items():
            if rel.startswith("asterisk/"):
                (inst.etc_dir / rel.removeprefix("asterisk/")).write_bytes(data)
        (inst.etc_dir / "keys").mkdir()
        (inst.etc_dir / "keys/asterisk.key").write_bytes(b"not a real key\n")
        inst.start(prepare=False)
        config = AgentConfig(
            stack="agenttest",
            config_prefix=PREFIX,
            config_dir=inst.etc_dir,
            releases_dir=inst.base / "releases",
            state_dir=tmp_path / "state",
            fail2ban_dir=tmp_path / "fail2ban",
            fail2ban_reload=(),
            asterisk_cmd=("chroot", str(inst.root), "/usr/sbin/asterisk"),
            asterisk_conf=inst.conf_path,
            astdb_path=inst.base / "lib" / "astdb.sqlite3",
            voicemail_dir=inst.spool_dir / "voicemail",
            backup_bucket=BUCKET,
            reload_timeout_s=8.0,
        )
        cli = AsteriskCli(config.asterisk_cmd, config.asterisk_conf)
        yield Host(inst, config, cli, ssm, s3, port, asterisk_conf)


def test_apply_swaps_reloads_and_verifies(host: Host) -> None:
    # Given a running Asterisk with a plain config directory and a new version in SSM with one more endpoint
    version = host.publish(config_set(host.asterisk_conf, host.port, endpoint("alice") + endpoint("bob")))

    # When the agent applies it
    started = time.monotonic()
    result = apply_version(host.config, host.ssm, host.cli, version)
    seconds = time.monotonic() - started

    # Then the live config is that version (TLS keys carried over), Asterisk loaded it, fail2ban files written
    releases = Releases(host.config.releases_dir, host.config.config_dir)
    assert result["changed"] is True
    assert result["previous"].startswith("initial-")
    assert releases.current() == version
    assert releases.current_version() == version
    assert host.endpoints() == {"alice", "bob"}
    assert (host.config.config_dir / "keys/asterisk.key").read_bytes() == b"not a real key\n"
    assert (host.config.fail2ban_dir / "jail.d/asterisk-sip-trunk.local").exists()
    assert seconds < 10, f"apply took {seconds:.1f} s"
    # And applying the same version again is a verified no-op
    assert apply_version(host.config, host.ssm, host.cli, version)["changed"] is False


def echo_peer(sip_port: int) -> str:
    """The far end the gateway dials: a sipp UAS on 127.0.0.1:<sip_port> over TCP (no auth, A-law, relayed media)."""
    return (
        "\n[echo-peer]\ntype = endpoint\ntransport = transport-tcp\ncontext = from-extensions\n"
        "disallow = all\nallow = alaw\ndirect_media = no\naors = echo-peer\n"
        f"\n[echo-peer]\ntype = aor\ncontact = sip:127.0.0.1:{sip_port};transport=tcp\n"
    )


# alice places real calls: A-law like the sipp UAC offers, media through Asterisk (no direct media).
CALLER = endpoint("alice", "allow = alaw\ndirect_media = no\n")
DIAL_ECHO = "exten => echo,1,Dial(PJSIP/echo-peer)\n same => n,Hangup()\n"


def looped_uac_scenario(workdir: Path, seconds: float) -> Path:
    """uac_auth_pcap.xml with its audio played back to back for about ``seconds`` instead of once (7 s), so
    RTP flows for the whole test; the call then ends with the scenario's own BYE."""
    text = scenario_path("uac_auth_pcap.xml").read_text()
    once = (
        '  <nop>\n    <action>\n      <exec play_pcap_audio="/usr/share/sip-tester/g711a.pcap"/>\n'
        "    </action>\n  </nop>\n\n  <pause/>\n"
    )
    assert text.count(once) == 1, "uac_auth_pcap.xml changed: update looped_uac_scenario"
    play = once.replace("<pause/>", f'<pause milliseconds="{int(PCAP_SECONDS * 1000)}"/>')
    repeats = max(1, round(seconds / PCAP_SECONDS))
    path = workdir / "uac_auth_pcap_looped.xml"
    workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(text.replace(once, play * repeats))
    return path


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def test_corrupt_and_invalid_versions_roll_back_while_a_call_stays_up(
    host: Host, capsys: pytest.CaptureFixture[str], tmp_path: Path, rtp_counter: Callable[..., RtpCounter]
) -> None:
    uas_port = free_sip_port()
    call_endpoints = CALLER + echo_peer(uas_port)
    good = host.publish(
        config_set(host.asterisk_conf, host.port, call_endpoints + endpoint("bob"), extra_context=DIAL_ECHO)
    )
    apply_version(host.config, host.ssm, host.cli, good)
    releases = Releases(host.config.releases_dir, host.config.config_dir)

    # A real call through the gateway: sipp UAC (alice, digest auth, A-law audio) → Asterisk → sipp UAS that
    # echoes the RTP back; the UAC's media port is counted both ways.
    uac_media = free_media_port()
    uas_media = free_media_port()
    counter = rtp_counter((uac_media, uac_media))
    uas = Sipp(
        "net_uas_answer.xml",
        tmp_path / "uas",
        transport="t1",
        local_port=uas_port,
        media_port=uas_media,
        rtp_echo=True,
        global_timeout_s=120,
    ).start()
    users = write_injection(tmp_path / "users.csv", [["alice", auth_field("alice", "pw-alice")]])
    uac = Sipp(
        looped_uac_scenario(tmp_path / "uac", seconds=30),
        tmp_path / "uac",
        remote=f"127.0.0.1:{host.port.sip}",
        transport="t1",
        service="echo",
        inject=users,
        media_port=uac_media,
        global_timeout_s=120,
    )
    try:
        time.sleep(0.3)  # the UAS listens
        uac.start()
        host.inst.wait_for("core show channels count", r"\b2 active channels")
        call = host.channels()
        assert len(call) == 2
        wait_until(lambda: counter.counts().to_range > 0, 5, "echoed RTP back at the caller")
        before = counter.counts()

        # Given a version whose stored pjsip.conf no longer matches its manifest (hash mismatch)
        corrupt_files = config_set(
            host.asterisk_conf, host.port, call_endpoints + endpoint("carol"), extra_context=DIAL_ECHO
        )
        corrupt = host.publish(corrupt_files)
        host.ssm.put_parameter(
            Name=f"{PREFIX}/{corrupt}/asterisk/pjsip.conf",
            Value="[evil]\ntype = endpoint\n",
            Type="String",
            Overwrite=True,
        )
        # When applied, Then it is refused before anything is written
        with pytest.raises(ApplyFailed, match="refused before install"):
            apply_version(host.config, host.ssm, host.cli, corrupt)
        assert releases.current() == good
        assert not (host.config.releases_dir / corrupt).exists()

        # Given a version Asterisk rejects (an endpoint with an invalid option) — through the CLI this time
        invalid = host.publish(
            config_set(
                host.asterisk_conf,
                host.port,
                call_endpoints + endpoint("broken", "dtmf_mode = nonsense\n"),
                extra_context=DIAL_ECHO,
            )
        )
        session = boto3.session.Session(region_name=REGION)
        argv = [
            "--config-prefix", PREFIX,
            "--config-dir", str(host.config.config_dir),
            "--releases-dir", str(host.config.releases_dir),
            "--state-dir", str(host.config.state_dir),
            "--fail2ban-dir", str(host.config.fail2ban_dir),
            "--fail2ban-reload", "",
            "--asterisk-cmd", " ".join(host.config.asterisk_cmd),
            "--asterisk-conf", host.config.asterisk_conf,
            "apply", "--version", invalid,
        ]  # fmt: skip
        agent_env = host.config.state_dir.parent / "agent.env"  # Run Command passes no SIP_TRUNK_* variables
        agent_env.write_text(f"SIP_TRUNK_CONFIG_PREFIX={PREFIX}\n")
        rollback_started = time.monotonic()
        code = main(argv, session=session, agent_env_file=agent_env, role_env_file=agent_env.with_name("role.env"))
        rollback_seconds = time.monotonic() - rollback_started

        # Then the agent answers failure with JSON, Asterisk runs the previous version again, the call never
        # dropped (same channels) and its audio kept flowing through the rollback and after it
        out = capsys.readouterr().out
        assert code == 1, out
        assert '"ok": false' in out
        assert f"rolled back to {good}" in out
        assert releases.current() == good
        assert host.endpoints() == {"alice", "bob", "echo-peer"}
        assert host.channels() == call
        assert parse_channel_count(host.inst.rx("core show channels count")).channels == 2
        assert (host.config.state_dir / "last-apply.json").read_text().count('"ok": false') == 1
        during = counter.counts()
        time.sleep(1.0)
        after = counter.counts()
        assert_flowing(before, during, f"during the {rollback_seconds:.1f} s of refusals and rollback")
        assert_flowing(during, after, "after the rollback")
        assert uac.running, "the caller's sipp ended early"
        assert uas.running, "the far end's sipp ended early"

        # And the call ends normally: the caller hangs up (BYE 200) and sipp counts it successful
        result = uac.wait(timeout=90)
        assert result.ok, result.describe()
        assert result.successful == 1, result.describe()
        assert result.failed == 0, result.describe()
    finally:
        uac.kill()
        uas.kill()


def assert_flowing(earlier: RtpCounts, later: RtpCounts, when: str) -> None:
    """Both directions at the caller grew: its audio reached the far end and came back through Asterisk
    (~50 packets/s each way while the call is up)."""
    sent, echoed = later.from_range - earlier.from_range, later.to_range - earlier.to_range
    assert sent > 0, f"the caller sent no RTP {when} ({earlier} -> {later})"
    assert echoed > 0, f"no RTP came back to the caller {when} ({earlier} -> {later})"


def test_backup_wipe_restore_gives_identical_files_astdb_and_voicemail(host: Host) -> None:
    version = host.publish(config_set(host.asterisk_conf, host.port, endpoint("alice") + endpoint("bob")))
    apply_version(host.config, host.ssm, host.cli, version)
    host.inst.rx('database put sip-trunk "greeting" "hello \\"world\\" ; with spaces"')
    host.inst.rx("database put sip-trunk did/15551230000 agent")
    vm = host.config.voicemail_dir / "default/100/INBOX"
    vm.mkdir(parents=True)
    (vm / "msg0000.txt").write_text("[message]\norigmailbox=100\n")
    (vm / "msg0000.wav").write_bytes(bytes(range(256)) * 10)
    files_before = Releases(host.config.releases_dir, host.config.config_dir).live_files()
    astdb_before = host.inst.rx("database show sip-trunk")
    vm_before = {p.relative_to(host.config.voicemail_dir): p.read_bytes() for p in vm.iterdir()}
    assert "hello" in astdb_before

    # Given a backup in S3
    made = backup_mod.backup(host.config, host.s3, "i-test", cli=host.cli)
    head = host.s3.head_object(Bucket=BUCKET, Key=made["key"])
    assert head["Metadata"]["sha256"] == made["sha256"]

    # When the host loses its config files, astdb entries and voicemail
    for path in host.config.config_dir.resolve().iterdir():
        if path.is_file() and path.name not in ("asterisk.conf",):
            path.unlink()
    host.inst.rx("database deltree sip-trunk")
    for p in vm.iterdir():
        p.unlink()
    assert "0 results found" in host.inst.rx("database show sip-trunk")

    # And the backup is restored
    result = backup_mod.restore(host.config, host.s3, host.cli, made["key"])

    # Then files, astdb and voicemail are identical and Asterisk serves the restored endpoints
    assert result["astdb_rows"] >= 2
    assert Releases(host.config.releases_dir, host.config.config_dir).live_files() == files_before
    assert host.inst.rx("database show sip-trunk") == astdb_before
    assert {p.relative_to(host.config.voicemail_dir): p.read_bytes() for p in vm.iterdir()} == vm_before
    assert host.endpoints() == {"alice", "bob"}


def test_tampered_backup_is_refused(host: Host) -> None:
    version = host.publish(config_set(host.asterisk_conf, host.port, endpoint("alice")))
    apply_version(host.config, host.ssm, host.cli, version)
    made = backup_mod.backup(host.config, host.s3, "i-test", cli=host.cli)
    blob = host.s3.get_object(Bucket=BUCKET, Key=made["key"])["Body"].read()
    host.s3.put_object(Bucket=BUCKET, Key=made["key"], Body=blob[:-10] + b"0" * 10, Metadata={"sha256": made["sha256"]})
    current = Releases(host.config.releases_dir, host.config.config_dir).current()

    with pytest.raises(backup_mod.BackupCorrupt, match="sha256"):
        backup_mod.restore(host.config, host.s3, host.cli, made["key"])
    assert Releases(host.config.releases_dir, host.config.config_dir).current() == current


def test_modules_conf_change_restarts_asterisk_and_fail2ban_is_reloaded_with_the_new_files(
    host: Host, tmp_path: Path
) -> None:
    # Given a fail2ban reload command that records which jail file it saw, and a running first version
    seen = tmp_path / "fail2ban-reload.log"
    jail = host.config.fail2ban_dir / "jail.d/asterisk-sip-trunk.local"
    recorder = tmp_path / "fail2ban-client"
    recorder.write_text(f'#!/bin/sh\necho "$* $(cat {jail} | tail -n1)" >> {seen}\n')
    recorder.chmod(0o755)
    config = AgentConfig(**{**host.config.__dict__, "fail2ban_reload": (str(recorder), "reload")})
    first = host.publish(config_set(host.asterisk_conf, host.port, endpoint("alice")))
    assert apply_version(config, host.ssm, host.cli, first)["restart_required"] is False
    assert seen.read_text().splitlines() == [f"reload {jail.read_text().splitlines()[-1]}"]
    uptime_before = int(host.inst.rx("core show uptime seconds").split("System uptime:")[1].split()[0])
    time.sleep(1.1)

    # When a version adds a module to modules.conf (a reload would not load it)
    files = config_set(host.asterisk_conf, host.port, endpoint("alice") + endpoint("bob"))
    files["asterisk/modules.conf"] += b"load = app_echo.so\n"
    files["fail2ban/jail.d/asterisk-sip-trunk.local"] += b"# second\n"
    files[MANIFEST_NAME] = Manifest.for_files({k: v for k, v in files.items() if k != MANIFEST_NAME}).to_json()
    second = host.publish(files)
    result = apply_version(config, host.ssm, host.cli, second)

    # Then Asterisk was restarted (same process, re-executed), is fully booted, runs the module and the version
    assert result["restart_required"] is True
    assert result["restarted_for"] == ["modules.conf"]
    assert result["restart_seconds"] < 30
    assert "app_echo.so" in host.inst.rx("module show like app_echo")
    uptime_after = int(host.inst.rx("core show uptime seconds").split("System uptime:")[1].split()[0])
    assert uptime_after < uptime_before + 1
    assert host.endpoints() == {"alice", "bob"}
    # and fail2ban was reloaded after the new jail file was in place
    assert seen.read_text().splitlines()[-1] == "reload # second"
