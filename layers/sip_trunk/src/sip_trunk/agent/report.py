"""``report``: the heartbeat. What Asterisk runs and how it is doing → CloudWatch metrics + the state table.

The item ``pk=host#<instance-id>, sk=heartbeat`` (CONTRACTS.md) carries the fields the health check reads
(``running_version``, ``asterisk_up``, ``endpoint_loaded``, ``qualify``, ``apply_error``, ``reported_at``) and the
details an operator wants (endpoints, contacts with qualify RTT, channels, carrier registrations).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

from sip_trunk import asterisk as ast
from sip_trunk.agent.apply import LAST_APPLY
from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.releases import Releases
from sip_trunk.agent.runtime import AsteriskCli, AsteriskUnavailable

NAMESPACE = "AwsSipTrunk/Host"
HEARTBEAT_TTL_S = 7 * 24 * 3600


def collect(config: AgentConfig, cli: AsteriskCli, instance_id: str, *, now: float | None = None) -> dict[str, Any]:
    """Everything the heartbeat says, as plain JSON-able values."""
    releases = Releases(config.releases_dir, config.config_dir)
    status: dict[str, Any] = {
        "instance_id": instance_id,
        "stack": config.stack,
        "running_version": releases.current_version(),
        "asterisk_up": False,
        "asterisk_version": None,
        "uptime_s": None,
        "endpoint_loaded": False,
        "endpoints": [],
        "contacts": [],
        "qualify": None,
        "qualify_rtt_ms": None,
        "channels": None,
        "calls": None,
        "registrations": [],
        "apply_error": None,
        "reported_at": time.time() if now is None else now,
    }
    last_apply = config.state_dir / LAST_APPLY
    if last_apply.exists():
        try:
            record = json.loads(last_apply.read_text())
            status["apply_error"] = None if record.get("ok") else record.get("error")
        except (OSError, ValueError):
            status["apply_error"] = "unreadable last-apply record"
    try:
        status["asterisk_version"] = ast.parse_version(cli.rx("core show version"))
        status["asterisk_up"] = True
        status["uptime_s"] = ast.parse_uptime(cli.rx("core show uptime seconds"))[0]
        endpoints = ast.parse_endpoints(cli.rx("pjsip show endpoints"))
        contacts = ast.parse_contacts(cli.rx("pjsip show contacts"))
        count = ast.parse_channel_count(cli.rx("core show channels count"))
        registrations = ast.parse_registrations(cli.rx("pjsip show registrations"))
    except (AsteriskUnavailable, ValueError) as exc:
        status["asterisk_error"] = str(exc)
        return status
    status["endpoints"] = [{"name": e.name, "state": e.state, "channels": e.channels} for e in endpoints]
    status["endpoint_loaded"] = any(e.name == config.trunk_endpoint for e in endpoints)
    status["contacts"] = [{"aor": c.aor, "uri": c.uri, "status": c.status, "rtt_ms": c.rtt_ms} for c in contacts]
    trunk = [c for c in contacts if c.aor == config.trunk_endpoint]
    if trunk:
        status["qualify"] = trunk[0].status
        status["qualify_rtt_ms"] = trunk[0].rtt_ms
    status["channels"], status["calls"] = count.channels, count.calls
    status["registrations"] = [{"name": r.name, "server_uri": r.server_uri, "status": r.status} for r in registrations]
    return status


def metric_data(status: dict[str, Any]) -> list[dict[str, Any]]:
    """CloudWatch datums: per stack (what alarms watch across failovers) and per instance."""
    values: dict[str, tuple[float, str]] = {"AsteriskUp": (1.0 if status["asterisk_up"] else 0.0, "Count")}
    if status["asterisk_up"]:
        contacts = status["contacts"]
        registrations = status["registrations"]
        values |= {
            "ActiveChannels": (float(status["channels"] or 0), "Count"),
            "ActiveCalls": (float(status["calls"] or 0), "Count"),
            "EndpointsLoaded": (float(len(status["endpoints"])), "Count"),
            "TrunkEndpointLoaded": (1.0 if status["endpoint_loaded"] else 0.0, "Count"),
            "ContactsReachable": (float(sum(1 for c in contacts if c["status"] == "Avail")), "Count"),
            "ContactsUnreachable": (float(sum(1 for c in contacts if c["status"] == "Unavail")), "Count"),
            "RegistrationsRegistered": (
                float(sum(1 for r in registrations if r["status"] == "Registered")),
                "Count",
            ),
            "RegistrationsNotRegistered": (
                float(sum(1 for r in registrations if r["status"] != "Registered")),
                "Count",
            ),
        }
        rtts = [c["rtt_ms"] for c in contacts if c["rtt_ms"] is not None]
        if rtts:
            values["QualifyRttMaxMs"] = (float(max(rtts)), "Milliseconds")
    values["ApplyFailed"] = (1.0 if status["apply_error"] else 0.0, "Count")
    stack_dim = [{"Name": "Stack", "Value": status["stack"] or "unknown"}]
    instance_dim = [*stack_dim, {"Name": "InstanceId", "Value": status["instance_id"]}]
    data = []
    for name, (value, unit) in values.items():
        for dims in (stack_dim, instance_dim):
            data.append({"MetricName": name, "Dimensions": dims, "Value": value, "Unit": unit})
    return data


def _dynamo(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _dynamo(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_dynamo(v) for v in value]
    return value


def heartbeat_item(status: dict[str, Any]) -> dict[str, Any]:
    item = _dynamo(status)
    item["pk"] = f"host#{status['instance_id']}"
    item["sk"] = "heartbeat"
    item["expires_at"] = int(status["reported_at"]) + HEARTBEAT_TTL_S
    return dict(item)


def report(
    config: AgentConfig, cli: AsteriskCli, instance_id: str, *, cloudwatch: Any, dynamodb: Any
) -> dict[str, Any]:
    """Collect, publish metrics, write the heartbeat item; returns the status."""
    status = collect(config, cli, instance_id)
    data = metric_data(status)
    for start in range(0, len(data), 1000):
        cloudwatch.put_metric_data(Namespace=NAMESPACE, MetricData=data[start : start + 1000])
    if config.state_table:
        dynamodb.Table(config.state_table).put_item(Item=heartbeat_item(status))
    status["metrics"] = len(data)
    return status
