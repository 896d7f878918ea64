"""bootstrap: IMDSv2 through a local stand-in on 127.0.0.1, AWS through moto, host commands recorded."""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from sip_trunk import configstore
from sip_trunk.agent import bootstrap as boot
from sip_trunk.agent.__main__ import main
from sip_trunk.agent.config import AgentConfig, known_env, read_env_file
from sip_trunk.agent.imds import Imds, ImdsError
from sip_trunk.agent.releases import Releases
from sip_trunk.agent.runtime import AsteriskUnavailable
from sip_trunk.manifest import MANIFEST_NAME, Manifest
from support.world import create_state_table

pytestmark = pytest.mark.integration

REGION = "us-east-1"
STACK = "boottest"
PREFIX = f"/sip-trunk/{STACK}/asterisk"
TABLE = "state"
FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "asterisk"
HOST_YAML = Path(__file__).resolve().parents[2] / "stacks" / "host.yaml"


@dataclass
class FakeImds:
    instance_id: str = "i-0123456789abcdef0"
    tags: dict[str, str] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)
    fail_first: int = 0  # answer 503 to this many requests (an IMDS hiccup at boot)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Any

    def log_message(self, *args: Any) -> None:
        pass

    def _answer(self, code: int, body: str = "") -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        imds: FakeImds = self.server.imds
        imds.requests.append(("PUT", self.path))
        if imds.fail_first:
            imds.fail_first -= 1
            return self._answer(503)
        if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
            return self._answer(400)
        token = f"token-{len(imds.tokens)}"
        imds.tokens.add(token)
        return self._answer(200, token)

    def do_GET(self) -> None:
        imds: FakeImds = self.server.imds
        imds.requests.append(("GET", self.path))
        if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
            return self._answer(401)  # IMDSv2 only: no token, no answer
        if self.path == "/latest/meta-data/instance-id":
            return self._answer(200, imds.instance_id)
        prefix = "/latest/meta-data/tags/instance/"
        if self.path.startswith(prefix):
            from urllib.parse import unquote

            key = unquote(self.path[len(prefix) :])
            if key in imds.tags:
                return self._answer(200, imds.tags[key])
        return self._answer(404)


@pytest.fixture
def imds() -> Iterator[tuple[FakeImds, str]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = FakeImds(tags={"aws-sip-trunk:role": "primary"})
    server.imds = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class FixtureCli:
    """Asterisk's answers captured from a real 22 (endpoints alice + elevenlabs, transports tcp + udp)."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.uptime = 1000

    def rx(self, command: str, *, timeout_s: float | None = None) -> str:
        self.commands.append(command)
        if command == "core reload":
            return ""
        if command == "core restart gracefully":
            self.uptime = 1
            return ""
        if command == "core show uptime seconds":
            return f"System uptime: {self.uptime}\nLast reload: {self.uptime}\n"
        if command == "core waitfullybooted":
            return "Asterisk has fully booted.\n"
        path = FIXTURES / (command.replace(" ", "_") + ".txt")
        if not path.exists():
            raise AsteriskUnavailable(f"no fixture for {command}")
        return path.read_text()


def rendered_set(endpoints: Sequence[str], *, new_modules: bool = True) -> dict[str, bytes]:
    """A rendered set; with ``new_modules`` its modules.conf differs from the stock one (a restart)."""
    pjsip = "[transport-tcp]\ntype = transport\nprotocol = tcp\nbind = 0.0.0.0:5060\n"
    for name in endpoints:
        pjsip += f"\n[{name}]\ntype = endpoint\ncontext = x\n"
    files = {
        "asterisk/pjsip.conf": pjsip.encode(),
        "asterisk/asterisk.conf": b"[directories]\n",
        "asterisk/modules.conf": b"[modules]\nautoload = no\n" if new_modules else b"[modules]\n",
        "fail2ban/jail.d/asterisk-sip-trunk.local": b"[asterisk-sip-trunk]\nenabled = true\n",
    }
    files[MANIFEST_NAME] = Manifest.for_files(files).to_json()
    return files


@dataclass
class Host:
    config: AgentConfig
    session: Any
    ssm: Any
    dynamodb: Any
    commands: list[list[str]]

    def run(self, argv: Sequence[str]) -> str:
        self.commands.append(list(argv))
        return ""

    def publish(self, files: dict[str, bytes], *, desired: bool = True) -> str:
        version = Manifest.from_json(files[MANIFEST_NAME]).version
        configstore.publish_config(self.ssm, PREFIX, files, [], version)
        if desired:
            configstore.set_desired_version(self.ssm, PREFIX, version)
        return version


@pytest.fixture
def host(tmp_path: Path, imds: tuple[FakeImds, str]) -> Iterator[Host]:
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        dynamodb = session.resource("dynamodb")
        create_state_table(dynamodb, TABLE)
        config_dir = tmp_path / "etc-asterisk"
        config_dir.mkdir()
        (config_dir / "asterisk.conf").write_text("[directories]\n")
        (config_dir / "modules.conf").write_text("[modules]\n")
        config = AgentConfig(
            stack=STACK,
            region=REGION,
            config_prefix=PREFIX,
            config_dir=config_dir,
            releases_dir=tmp_path / "releases",
            state_dir=tmp_path / "state",
            fail2ban_dir=tmp_path / "fail2ban",
            fail2ban_reload=(),
            state_table=TABLE,
            imds_url=imds[1],
            systemctl=("systemctl",),
            cloudwatch_agent_ctl=("amazon-cloudwatch-agent-ctl",),
            etc_dir=tmp_path / "etc-sip-trunk",
            units_dir=tmp_path / "systemd",
            reload_timeout_s=2.0,
            restart_timeout_s=5.0,
        )
        yield Host(config, session, session.client("ssm"), dynamodb, [])


def heartbeat(host: Host, instance: str) -> dict[str, Any]:
    key = {"pk": f"host#{instance}", "sk": "heartbeat"}
    item: dict[str, Any] = host.dynamodb.Table(TABLE).get_item(Key=key)["Item"]
    return item


def test_primary_bootstrap_applies_the_desired_version_and_writes_the_first_heartbeat(
    host: Host, imds: tuple[FakeImds, str]
) -> None:
    # Given a desired version in SSM and a primary whose IMDS hiccups once at boot
    version = host.publish(rendered_set(["alice", "elevenlabs"]))
    imds[0].fail_first = 1

    # When the host bootstraps
    cli = FixtureCli()
    result = boot.bootstrap(host.config, host.session, cli, run=host.run)  # type: ignore[arg-type]

    # Then identity came from IMDSv2 (token first, every GET with it)
    assert result["instance_id"] == imds[0].instance_id
    assert result["role"] == "primary"
    assert imds[0].requests[0][0] == "PUT"
    # and the version is live, the units and the CloudWatch config are in place
    assert result["apply"]["version"] == version
    # and modules.conf changed from the stock one, so Asterisk was restarted (not reloaded) before verifying
    assert result["apply"]["restarted_for"] == ["modules.conf"]
    assert "core restart gracefully" in cli.commands
    assert "core reload" not in cli.commands
    assert Releases(host.config.releases_dir, host.config.config_dir).current_version() == version
    assert set(result["units_changed"]) == set(boot.unit_files())
    cw = json.loads((host.config.etc_dir / "cloudwatch-agent.json").read_text())
    assert cw["metrics"]["metrics_collected"]["mem"]["append_dimensions"] == {"Stack": STACK}
    # and the primary runs the heartbeat timer but not watch-peer
    assert ["systemctl", "enable", "--now", boot.HEARTBEAT_TIMER] in host.commands
    assert ["systemctl", "disable", "--now", boot.WATCH_PEER] in host.commands
    assert ["systemctl", "daemon-reload"] in host.commands
    # without a log group and a bucket to ship to, call records stay on disk: no shipping timer
    assert ["systemctl", "enable", "--now", boot.CALLS_TIMER] not in host.commands
    ctl = [c for c in host.commands if c[0] == "amazon-cloudwatch-agent-ctl"]
    assert ctl == [["amazon-cloudwatch-agent-ctl", "-a", "fetch-config", "-m", "ec2", "-s", "-c",
                    f"file:{host.config.etc_dir / 'cloudwatch-agent.json'}"]]  # fmt: skip
    # and the first heartbeat says which version runs
    item = heartbeat(host, imds[0].instance_id)
    assert item["running_version"] == version
    assert item["asterisk_up"] is True
    assert (host.config.etc_dir / "role.env").read_text() == "SIP_TRUNK_ROLE=primary\n"


@pytest.mark.parametrize(("group", "bucket", "ships"), [("/g", "b", True), ("/g", None, False), (None, "b", False)])
def test_the_call_records_timer_runs_only_with_both_destinations(
    host: Host, imds: tuple[FakeImds, str], group: str | None, bucket: str | None, ships: bool
) -> None:
    # Given a host whose environment names these destinations (ship-calls needs the log group and the bucket)
    config = dataclasses.replace(host.config, asterisk_log_group=group, backup_bucket=bucket)
    # When it bootstraps
    boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]
    # Then the shipping timer, and the BYE headers service that feeds it, run only when both are there
    assert (["systemctl", "enable", "--now", boot.CALLS_TIMER] in host.commands) is ships
    assert (["systemctl", "enable", "--now", boot.BYE_HEADERS] in host.commands) is ships


def test_standby_bootstrap_starts_watch_peer_and_survives_a_missing_version(
    host: Host, imds: tuple[FakeImds, str]
) -> None:
    # Given a standby (tag) with the primary's address and no desired version yet
    imds[0].tags["aws-sip-trunk:role"] = "standby"
    config = host.config.__class__(**{**host.config.__dict__, "peer_address": "10.0.1.10"})

    # When it bootstraps twice (first boot, then a reboot)
    first = boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]
    again = boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    # Then watch-peer runs against the primary, nothing was applied, and the reboot changed no unit
    assert first["role"] == "standby"
    assert ["systemctl", "enable", "--now", boot.WATCH_PEER] in host.commands
    assert "SIP_TRUNK_PEER_ADDRESS=10.0.1.10" in (config.etc_dir / "role.env").read_text()
    assert first["apply"] is None
    assert any("no desired version" in w for w in first["warnings"])
    assert again["units_changed"] == []
    assert "running_version" not in heartbeat(host, imds[0].instance_id)  # None values are not stored


def test_a_standby_boots_without_the_primarys_address_and_watches_once_set_role_names_it(
    host: Host, imds: tuple[FakeImds, str]
) -> None:
    # Given a standby (tag) whose user data names no peer (the host stack never puts the other host in it)
    imds[0].tags["aws-sip-trunk:role"] = "standby"
    config = dataclasses.replace(host.config, peer_address=None)

    # When it boots
    first = boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    # Then it is the standby, serving nothing and watching nothing yet (a boot that failed here would fail the
    # host stack; watch-peer without an address would probe nothing)
    assert (first["role"], first["peer_address"]) == ("standby", None)
    assert ["systemctl", "disable", "--now", boot.WATCH_PEER] in host.commands
    assert ["systemctl", "enable", "--now", boot.WATCH_PEER] not in host.commands
    assert read_env_file(config.etc_dir / boot.ROLE_ENV) == {"SIP_TRUNK_ROLE": "standby"}

    # When the control plane's set-role names the primary (CheckHostStack after the stack is ready)
    host.commands.clear()
    boot.set_role(config, "standby", "10.0.1.10", run=host.run)

    # Then watch-peer starts against it, and a reboot keeps it
    assert ["systemctl", "enable", "--now", boot.WATCH_PEER] in host.commands
    again = boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]
    assert (again["role"], again["role_source"], again["peer_address"]) == ("standby", "role.env", "10.0.1.10")


def test_a_version_asterisk_refuses_is_recorded_but_the_host_still_boots(
    host: Host, imds: tuple[FakeImds, str]
) -> None:
    # Given a desired version that declares an endpoint Asterisk does not load
    version = host.publish(rendered_set(["alice", "ghost"]))

    result = boot.bootstrap(host.config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    assert result["apply"]["ok"] is False
    assert "ghost" in result["apply"]["error"]
    item = heartbeat(host, imds[0].instance_id)
    assert version in item["apply_error"]
    assert ["systemctl", "enable", "--now", boot.HEARTBEAT_TIMER] in host.commands


def test_imds_refuses_requests_without_a_token_and_times_out_when_absent(imds: tuple[FakeImds, str]) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{imds[1]}/latest/meta-data/instance-id", timeout=2)  # noqa: S310
    assert refused.value.code == 401
    assert Imds(imds[1]).tag("no-such-tag") is None
    sleeps: list[float] = []
    with pytest.raises(ImdsError):
        Imds("http://127.0.0.1:9", timeout_s=0.2, attempts=3, sleep=sleeps.append).instance_id()
    assert sleeps == [0.5, 1.0]


def test_cli_bootstrap_reads_the_env_file_the_host_stack_writes(
    host: Host, imds: tuple[FakeImds, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the env file exactly as host.yaml's user data writes it (values substituted)
    user_data = HOST_YAML.read_text()
    block = user_data.split("cat > /etc/sip-trunk/agent.env <<'EOF'\n", 1)[1].split("EOF\n", 1)[0]
    values = {
        "${AWS::Region}": REGION, "${RootStackName}": STACK, "${ConfigPrefix}": PREFIX, "${StateTable}": TABLE,
        "${BackupBucket}": "b", "${RecordingsBucket}": "", "${FailoverStateMachineArn}": "arn:x",
        "${AsteriskLogGroup}": f"/aws-sip-trunk/{STACK}/asterisk", "${ConfigVersion}": "none",
        "${PublicHostname}": "", "${CertificateZoneId}": "", "${CertificateSecretLine}": "",
    }  # fmt: skip
    text = "\n".join(line.strip() for line in block.splitlines())
    for key, value in values.items():
        text = text.replace(key, value)
    assert "${" not in text, text
    env_file = tmp_path / "agent.env"
    env_file.write_text(text + "\n")
    parsed = read_env_file(env_file)
    assert {k for k in parsed if k.startswith("SIP_TRUNK_")} <= known_env()
    version = host.publish(rendered_set(["alice", "elevenlabs"], new_modules=False))
    log = tmp_path / "commands.log"
    fake = tmp_path / "fake-cmd"
    fake.write_text(f'#!/bin/sh\necho "$0 $*" >> {log}\n')
    fake.chmod(0o755)
    cli_fixture = tmp_path / "asterisk"
    cli_fixture.write_text(
        "#!/bin/sh\nshift 3\ncase \"$*\" in\n  'core reload') exit 0;;\nesac\n"
        f"cat {FIXTURES}/$(echo \"$*\" | tr ' ' '_').txt\n"
    )
    cli_fixture.chmod(0o755)
    c = host.config
    argv = [
        "--config-dir", str(c.config_dir), "--releases-dir", str(c.releases_dir), "--state-dir", str(c.state_dir),
        "--fail2ban-dir", str(c.fail2ban_dir), "--fail2ban-reload", "", "--imds-url", imds[1],
        "--systemctl", str(fake), "--cloudwatch-agent-ctl", str(fake), "--etc-dir", str(c.etc_dir),
        "--units-dir", str(c.units_dir), "--asterisk-cmd", str(cli_fixture),
        "bootstrap", "--env-file", str(env_file),
    ]  # fmt: skip

    code = main(argv, session=host.session)

    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["ok"] is True
    assert out["desired_version"] == version
    assert out["apply"]["version"] == version
    assert f"{fake} enable --now {boot.HEARTBEAT_TIMER}" in log.read_text()
    # recording is off (empty bucket): its timer is left alone
    assert boot.RECORDINGS_TIMER not in log.read_text()


def test_env_file_with_an_unknown_setting_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_file = tmp_path / "agent.env"
    env_file.write_text("SIP_TRUNK_STACK=x\nSIP_TRUNK_STAK_TYPO=y\n")
    assert main(["bootstrap", "--env-file", str(env_file)]) == 2
    assert "SIP_TRUNK_STAK_TYPO" in capsys.readouterr().out


def test_first_boot_takes_the_launch_tag_and_the_agent_env_version(host: Host, imds: tuple[FakeImds, str]) -> None:
    # Given a host stack that named v1 at launch, and a pointer that has moved on to v2 since
    launch = host.publish(rendered_set(["alice", "elevenlabs"]), desired=False)
    newer = host.publish(rendered_set(["alice"]))
    config = dataclasses.replace(host.config, config_version=launch)

    # When the instance boots for the first time
    result = boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    # Then role and version are the launch ones, and the result says where each came from
    assert (result["first_boot"], result["boot"]) == (True, 1)
    assert (result["role"], result["role_source"]) == ("primary", "tag")
    assert (result["desired_version"], result["version_source"]) == (launch, "agent.env")
    assert result["apply"]["version"] == launch != newer
    record = json.loads((config.state_dir / boot.BOOT_RECORD).read_text())
    assert record["instance_id"] == imds[0].instance_id
    assert (record["role_source"], record["version_source"]) == ("tag", "agent.env")


def test_a_reboot_keeps_the_role_set_role_gave_and_applies_the_desired_version(
    host: Host, imds: tuple[FakeImds, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a host launched as primary (tag) with v1, later made standby by the control plane's set-role
    launch = host.publish(rendered_set(["alice", "elevenlabs"]), desired=False)
    config = dataclasses.replace(host.config, config_version=launch, peer_address=None)
    boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]
    agent_env = config.etc_dir / "agent.env"  # what Run Command's set-role reads (it gets no SIP_TRUNK_* variables)
    agent_env.write_text(f"SIP_TRUNK_STACK={STACK}\nSIP_TRUNK_ETC_DIR={config.etc_dir}\nSIP_TRUNK_SYSTEMCTL=true\n")
    argv = ["set-role", "--role", "standby", "--peer-address", "10.0.2.20"]
    assert main(argv, session=host.session, agent_env_file=agent_env, role_env_file=config.etc_dir / "role.env") == 0
    capsys.readouterr()
    # and a Provision that moved the desired-version pointer on to v2 (ApplyConfig not run on this host)
    newer = host.publish(rendered_set(["alice"]))

    # When the host reboots (the tag still says primary)
    assert imds[0].tags["aws-sip-trunk:role"] == "primary"
    host.commands.clear()
    cli = FixtureCli()
    result = boot.bootstrap(config, host.session, cli, run=host.run)  # type: ignore[arg-type]

    # Then it stays the standby watching the primary set-role named, not a second primary
    assert (result["first_boot"], result["boot"]) == (False, 2)
    assert (result["role"], result["role_source"], result["peer_address"]) == ("standby", "role.env", "10.0.2.20")
    assert ["systemctl", "enable", "--now", boot.WATCH_PEER] in host.commands
    assert ["systemctl", "disable", "--now", boot.WATCH_PEER] not in host.commands
    role_env = read_env_file(config.etc_dir / boot.ROLE_ENV)
    assert role_env == {"SIP_TRUNK_ROLE": "standby", "SIP_TRUNK_PEER_ADDRESS": "10.0.2.20"}
    # and it runs the desired version, not the launch one
    assert (result["desired_version"], result["version_source"]) == (newer, "desired-version")
    assert result["apply"]["version"] == newer
    assert result["apply"]["previous"] == launch
    assert result["running_version"] == newer
    assert heartbeat(host, imds[0].instance_id)["running_version"] == newer
    record = json.loads((config.state_dir / boot.BOOT_RECORD).read_text())
    assert (record["boots"], record["role_source"], record["version_source"]) == (2, "role.env", "desired-version")


def record_roles(host: Host, primary: str, standby: str) -> None:
    """The state table's deployment record, as Provision and Failover's SwapRoles write it."""
    item = {"pk": "deployment", "sk": "current", "primary_instance_id": primary, "standby_instance_id": standby}
    host.dynamodb.Table(TABLE).put_item(Item=item)


def test_an_old_primary_rebooting_after_a_failover_boots_the_standby_not_from_its_stale_role_env(
    host: Host, imds: tuple[FakeImds, str]
) -> None:
    """Negative control: trusting role.env on a later boot (the behaviour before ADR-45) boots it primary from
    ``role.env``, and this test fails on the role, the source and the watch-peer/role.env it leaves."""
    # Given a primary that booted (role.env: primary) and then went down
    me = imds[0].instance_id
    host.publish(rendered_set(["alice", "elevenlabs"]))
    boot.bootstrap(host.config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]
    assert read_env_file(host.config.etc_dir / boot.ROLE_ENV) == {"SIP_TRUNK_ROLE": "primary"}
    # and a failover while it was down: the table names the other host, whose set-role has not arrived yet
    record_roles(host, primary="i-0newprimary", standby=me)

    # When it comes back
    host.commands.clear()
    result = boot.bootstrap(host.config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    # Then it is the standby (without a peer until set-role names the new primary), not a second primary
    assert (result["first_boot"], result["role"], result["role_source"]) == (False, "standby", "state-table")
    assert result["peer_address"] is None
    assert read_env_file(host.config.etc_dir / boot.ROLE_ENV) == {"SIP_TRUNK_ROLE": "standby"}
    assert ["systemctl", "disable", "--now", boot.WATCH_PEER] in host.commands  # no peer yet: nothing to watch
    record = json.loads((host.config.state_dir / boot.BOOT_RECORD).read_text())
    assert (record["role"], record["role_source"]) == ("standby", "state-table")


def test_a_primary_the_table_still_names_reboots_primary(host: Host, imds: tuple[FakeImds, str]) -> None:
    """Negative control: a resolver that ignored the table's word for this instance would boot it standby."""
    me = imds[0].instance_id
    host.publish(rendered_set(["alice", "elevenlabs"]))
    boot.bootstrap(host.config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]
    record_roles(host, primary=me, standby="i-0standby")

    result = boot.bootstrap(host.config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    assert (result["role"], result["role_source"], result["peer_address"]) == ("primary", "state-table", None)


def test_a_standby_the_table_names_keeps_the_peer_of_its_role_env(host: Host, imds: tuple[FakeImds, str]) -> None:
    me = imds[0].instance_id
    boot.set_role(host.config, "standby", "10.0.2.20", run=host.run)
    host.config.state_dir.mkdir(parents=True, exist_ok=True)
    (host.config.state_dir / boot.BOOT_RECORD).write_text(json.dumps({"instance_id": me, "boots": 1}))
    record_roles(host, primary="i-0primary", standby=me)

    result = boot.bootstrap(host.config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    assert (result["role"], result["role_source"], result["peer_address"]) == ("standby", "state-table", "10.0.2.20")
    assert ["systemctl", "enable", "--now", boot.WATCH_PEER] in host.commands


def test_a_role_env_saying_primary_is_not_trusted_when_the_table_cannot_be_read(
    host: Host, imds: tuple[FakeImds, str]
) -> None:
    """Negative control: falling back to role.env when the table is unreadable gives ("primary", "role.env")."""
    boot.set_role(host.config, "primary", None, run=host.run)
    unreadable = dataclasses.replace(host.config, state_table="no-such-table", instance_id="i-0me")
    with pytest.raises(boot.RolesUnknown, match="no-such-table"):
        boot.recorded_roles(unreadable, host.session.client("dynamodb"))

    role = boot.resolve_role(
        unreadable,
        Imds(imds[1]),
        later_boot=True,
        roles=lambda: boot.recorded_roles(unreadable, host.session.client("dynamodb")),
    )

    assert role == ("standby", None, "role.env unconfirmed")


def test_a_reboot_on_the_version_already_running_applies_nothing(host: Host, imds: tuple[FakeImds, str]) -> None:
    # Given a host that booted and runs the desired version
    version = host.publish(rendered_set(["alice", "elevenlabs"]))
    boot.bootstrap(host.config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]
    release = Releases(host.config.releases_dir, host.config.config_dir)
    assert release.current_version() == version
    last_apply = (host.config.state_dir / "last-apply.json").read_bytes()

    # When it reboots
    cli = FixtureCli()
    result = boot.bootstrap(host.config, host.session, cli, run=host.run)  # type: ignore[arg-type]

    # Then the version is not applied again: no reload, no restart, no new apply record
    assert (result["desired_version"], result["version_source"]) == (version, "desired-version")
    assert result["apply"] == {"version": version, "changed": False, "skipped": "already running"}
    assert not {"core reload", "core restart gracefully"} & set(cli.commands)
    assert (host.config.state_dir / "last-apply.json").read_bytes() == last_apply
    assert (result["role"], result["role_source"]) == ("primary", "role.env")
    assert release.current_version() == version


def test_a_reboot_without_a_pointer_falls_back_to_the_agent_env_version(host: Host, imds: tuple[FakeImds, str]) -> None:
    launch = host.publish(rendered_set(["alice", "elevenlabs"]), desired=False)
    config = dataclasses.replace(host.config, config_version=launch)
    boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    result = boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    assert result["first_boot"] is False
    assert (result["desired_version"], result["version_source"]) == (launch, "agent.env")
    assert result["apply"]["skipped"] == "already running"


def test_a_disk_from_another_instance_boots_as_a_first_boot(host: Host, imds: tuple[FakeImds, str]) -> None:
    # Given the role.env and boot record of another instance (a disk imaged from a running host)
    boot.set_role(host.config, "standby", "10.0.9.9", run=host.run)
    (host.config.state_dir).mkdir(parents=True, exist_ok=True)
    (host.config.state_dir / boot.BOOT_RECORD).write_text(json.dumps({"instance_id": "i-0other", "boots": 7}))

    result = boot.bootstrap(host.config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]

    # Then this instance takes its own launch tag
    assert (result["first_boot"], result["boot"]) == (True, 1)
    assert (result["role"], result["role_source"]) == ("primary", "tag")
    assert (host.config.etc_dir / boot.ROLE_ENV).read_text() == "SIP_TRUNK_ROLE=primary\n"


@pytest.mark.parametrize(
    ("hostname", "zone", "renews"),
    [("sip.example.com", "Z1", True), ("sip.example.com", None, False), (None, "Z1", False)],
)
def test_the_certificate_timer_runs_only_with_a_host_name_and_its_zone(
    host: Host, imds: tuple[FakeImds, str], hostname: str | None, zone: str | None, renews: bool
) -> None:
    # Given a host whose environment names (or not) the public host name and the zone renew-cert writes to
    config = dataclasses.replace(host.config, public_hostname=hostname, acme_hosted_zone_id=zone)
    # When it bootstraps
    result = boot.bootstrap(config, host.session, FixtureCli(), run=host.run)  # type: ignore[arg-type]
    # Then the certificate timer runs only when both are there
    assert (["systemctl", "enable", "--now", boot.CERT_TIMER] in host.commands) is renews
    # and a certificate that cannot be had (here: the zone does not exist) is a warning, not a failed boot
    if renews:
        assert result["certificate"] == {"ok": False, "error": "hosted zone Z1: NoSuchHostedZone"}
        assert "certificate: hosted zone Z1: NoSuchHostedZone" in result["warnings"]
    else:
        assert result["certificate"] is None
