"""``sip-trunk-agent``: argparse front end. One JSON object on stdout; exit 0 ok, 1 failed, 2 bad usage."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sip_trunk.agent import apply as apply_mod
from sip_trunk.agent import backup as backup_mod
from sip_trunk.agent import bootstrap as bootstrap_mod
from sip_trunk.agent import recordings, report, watch
from sip_trunk.agent.config import (
    AGENT_ENV_FILE,
    OPTIONS,
    ROLE_ENV_FILE,
    AgentConfig,
    AgentEnvironmentMissing,
    agent_environment,
    build_config,
    env_name,
    instance_id,
)
from sip_trunk.agent.runtime import AgentError, AsteriskCli

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
NEEDS_NO_ENVIRONMENT = frozenset({"install-units"})
"""Commands that run before any agent.env exists (the image build)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sip-trunk-agent", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    for option in OPTIONS:
        parser.add_argument(
            "--" + option.replace("_", "-"), dest=option, default=None, help=f"(env {env_name(option)})"
        )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("apply", help="install a config version from SSM: verify, swap, reload, roll back on failure")
    p.add_argument("--version", required=True, dest="config_version")

    p = sub.add_parser("bootstrap", help="every boot: identity, units, CloudWatch agent, desired config, heartbeat")
    p.add_argument("--env-file", type=Path, default=Path("/etc/sip-trunk/agent.env"))
    sub.add_parser("install-units", help="install the agent's systemd units (image build)")
    p = sub.add_parser("set-role", help="become primary or standby: role.env, watch-peer on the standby only")
    p.add_argument("--role", required=True, dest="new_role", choices=bootstrap_mod.ROLES)
    p.add_argument("--peer-address", dest="new_peer", default=None)

    sub.add_parser("report", help="heartbeat: CloudWatch metrics + the state table item")
    sub.add_parser("backup", help="config + astdb + voicemail to the backups bucket")
    p = sub.add_parser("restore", help="restore a backup (checksum verified), apply it and reload")
    p.add_argument("--key", required=True)

    p = sub.add_parser("upload-recording", help="upload one recording (by hand); queue it if S3 is away")
    p.add_argument("file", type=Path)
    p.add_argument("--call-id", required=True)
    p.add_argument("--caller", default="")
    p.add_argument("--callee", default="")
    p.add_argument("--duration", default="")
    p.add_argument("--config-version", default=None)
    sub.add_parser("flush-recordings", help="queue the hangup handler's recording jobs, then upload every queued one")
    sub.add_parser("ship-calls", help="send the spooled call records to S3 and CloudWatch Logs (EMF), then delete them")
    p = sub.add_parser("bye-headers", help="keep the X- headers of each BYE Asterisk mirrors over HEP (a service)")
    p.add_argument("--for-seconds", type=float, default=None, help="stop after this long (tests)")
    sub.add_parser(
        "renew-cert",
        help="TLS certificate for the public host name: the operator's secret when set (installed when it changed), "
        "else ACME (DNS-01 in Route 53) when due",
    )
    p = sub.add_parser("calls", help="the last call records still on this host")
    p.add_argument("--count", type=int, default=20)

    p = sub.add_parser("watch-peer", help="probe the primary; start the Failover state machine after N failures")
    p.add_argument("--target", required=True)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--transport", default="udp", choices=["udp", "tcp", "tls"])
    p.add_argument("--interval", type=float, default=1.5)
    p.add_argument("--failures", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--max-probes", type=int, default=None, help="stop after this many probes (tests)")
    return parser


def _session(config: AgentConfig) -> Any:
    import boto3

    return boto3.session.Session(region_name=config.region)


def _cli(config: AgentConfig) -> AsteriskCli:
    return AsteriskCli(config.asterisk_cmd, config.asterisk_conf, timeout_s=config.reload_timeout_s)


def run(args: argparse.Namespace, config: AgentConfig, session: Any) -> dict[str, Any]:
    command = args.command
    if command == "bootstrap":
        return bootstrap_mod.bootstrap(config, session, _cli(config))
    if command == "install-units":
        return {"units_changed": bootstrap_mod.install_units(config)}
    if command == "set-role":
        return bootstrap_mod.set_role(config, args.new_role, args.new_peer or config.peer_address)
    if command == "apply":
        return apply_mod.apply_version(config, session.client("ssm"), _cli(config), args.config_version)
    if command == "report":
        return report.report(
            config,
            _cli(config),
            instance_id(config),
            cloudwatch=session.client("cloudwatch"),
            dynamodb=session.resource("dynamodb"),
        )
    if command == "backup":
        return backup_mod.backup(config, session.client("s3"), instance_id(config), cli=_cli(config))
    if command == "restore":
        return backup_mod.restore(config, session.client("s3"), _cli(config), args.key)
    if command == "upload-recording":
        version = args.config_version
        if version is None:
            from sip_trunk.agent.releases import Releases

            version = Releases(config.releases_dir, config.config_dir).current_version()
        return recordings.upload_recording(
            config,
            session.client("s3"),
            args.file,
            call_id=args.call_id,
            caller=args.caller,
            callee=args.callee,
            duration=args.duration,
            config_version=version,
        )
    if command == "flush-recordings":
        from sip_trunk.agent.releases import Releases

        version = Releases(config.releases_dir, config.config_dir).current_version()
        return recordings.flush_recordings(config, session.client("s3"), config_version=version)
    if command == "calls":
        from sip_trunk.agent import calls as call_records

        return {"calls": call_records.last_calls(config.call_records_dir, args.count)}
    if command == "bye-headers":
        import socket

        from sip_trunk.agent import calls as call_records
        from sip_trunk.callrecords import HEP_ADDRESS

        deadline = None if args.for_seconds is None else time.monotonic() + args.for_seconds
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(HEP_ADDRESS)
            sock.settimeout(0.5)
            logging.getLogger("sip_trunk.agent").info("bye-headers: listening on %s:%d", *HEP_ADDRESS)
            kept = call_records.serve_bye_headers(
                config.call_records_dir, sock, stop=lambda: deadline is not None and time.monotonic() > deadline
            )
        return {"kept": kept}
    if command == "renew-cert":
        from sip_trunk.agent import certificate

        return certificate.manage_certificate(config, _cli(config), session)
    if command == "ship-calls":
        from sip_trunk.agent import calls

        return calls.ship_call_records(config, session.client("logs"), session.client("s3"))
    if command == "watch-peer":
        target = watch.parse_target(args.target, args.transport, args.port)
        state = watch.watch_peer(
            target,
            interval_s=args.interval,
            failures=args.failures,
            timeout_s=args.timeout,
            sfn=session.client("stepfunctions"),
            state_machine_arn=config.failover_state_machine_arn,
            instance_id=instance_id(config),
            max_probes=args.max_probes,
        )
        return {
            "probes": state.probes,
            "consecutive_failures": state.consecutive_failures,
            "executions": state.executions,
        }
    raise AgentError(f"unknown command {command}")


@contextlib.contextmanager
def _process_environment(values: Mapping[str, str]) -> Iterator[None]:
    """The loaded files' other variables (AWS_REGION; in local mode the endpoint and credentials) become the
    process environment while the command runs, as systemd's EnvironmentFile= makes them: boto3 and the host
    commands the agent starts see them. Restored afterwards (``main`` also runs inside tests)."""
    added = {k: v for k, v in values.items() if k not in os.environ and not k.startswith("SIP_TRUNK_")}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def main(
    argv: Sequence[str] | None = None,
    *,
    session: Any | None = None,
    agent_env_file: Path = AGENT_ENV_FILE,
    role_env_file: Path = ROLE_ENV_FILE,
) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    environ: dict[str, str] = dict(os.environ)
    try:
        if args.command not in NEEDS_NO_ENVIRONMENT:
            environ = agent_environment(
                os.environ,
                env_file=getattr(args, "env_file", None),
                agent_env_file=agent_env_file,
                role_env_file=role_env_file,
            )
        config = build_config(vars(args), environ)
    except (AgentEnvironmentMissing, OSError, TypeError, ValueError) as exc:
        print(json.dumps({"ok": False, "command": args.command, "error": str(exc), "error_type": type(exc).__name__}))
        return EXIT_USAGE
    with _process_environment(environ):
        return _run(args, config, session)


def _run(args: argparse.Namespace, config: AgentConfig, session: Any | None) -> int:
    try:
        result = run(args, config, session or _session(config))
    except (AgentError, ValueError) as exc:
        print(json.dumps({"ok": False, "command": args.command, "error": str(exc)}, default=str))
        return EXIT_FAILED
    except Exception as exc:  # AWS/botocore and OS errors: still one JSON answer for the poller
        logging.getLogger("sip_trunk.agent").exception("%s failed", args.command)
        print(json.dumps({"ok": False, "command": args.command, "error": f"{exc.__class__.__name__}: {exc}"}))
        return EXIT_FAILED
    ok = not (args.command == "flush-recordings" and result.get("errors"))
    print(json.dumps({"ok": ok, "command": args.command, **result}, default=str, sort_keys=True))
    return EXIT_OK if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
