"""``sip-trunk-agent``: argparse front end. One JSON object on stdout; exit 0 ok, 1 failed, 2 bad usage."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sip_trunk.agent import apply as apply_mod
from sip_trunk.agent import backup as backup_mod
from sip_trunk.agent import bootstrap as bootstrap_mod
from sip_trunk.agent import recordings, report, watch
from sip_trunk.agent.config import OPTIONS, AgentConfig, build_config, env_name, instance_id, known_env, read_env_file
from sip_trunk.agent.runtime import AgentError, AsteriskCli

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


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

    p = sub.add_parser("upload-recording", help="upload one recording (hangup handler); queue it if S3 is away")
    p.add_argument("file", type=Path)
    p.add_argument("--call-id", required=True)
    p.add_argument("--caller", default="")
    p.add_argument("--callee", default="")
    p.add_argument("--duration", default="")
    p.add_argument("--config-version", default=None)
    sub.add_parser("flush-recordings", help="retry every queued recording")

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
        return recordings.flush_recordings(config, session.client("s3"))
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


def main(argv: Sequence[str] | None = None, *, session: Any | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        environ: dict[str, str] | None = None
        if getattr(args, "env_file", None) is not None:
            from_file = read_env_file(args.env_file)
            unknown = sorted(k for k in from_file if k.startswith("SIP_TRUNK_") and k not in known_env())
            if unknown:
                raise ValueError(f"{args.env_file}: unknown settings {unknown}")
            environ = {**os.environ, **from_file}
        config = build_config(vars(args), environ)
    except (OSError, TypeError, ValueError) as exc:
        print(json.dumps({"ok": False, "command": args.command, "error": str(exc)}))
        return EXIT_USAGE
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
