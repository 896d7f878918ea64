"""The scheduled health check: probe the Elastic IP and each host, measure drift, count failures,
and start the Failover workflow after K consecutive failed probes of the Elastic IP.

Until a Provision has recorded a deployment (a primary host in the state table) there is nothing to
probe: the Elastic IP is on no instance yet, so a probe would fail, count, and start a failover.
The check then does nothing and says so (`status` "not provisioned yet").

With transport tls it also checks the gateway's certificate as ElevenLabs does, in the first minute of each hour
only (`CERTIFICATE_CHECK_INTERVAL_S`): each handshake is a connection that sends no request, which Asterisk's
idle-connection check counts against a later caller (ADR-31), and days left change slowly. A certificate never
counts as a failed probe: it is a metric and an alarm, not a failover."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sip_trunk.settings import Transport as SettingsTransport
from sip_trunk.workflows import clock
from sip_trunk.workflows.certificate import CertificateCheck, check_gateway_certificate
from sip_trunk.workflows.common import Model, ProbeReport, load_settings, probe_address, sip_transport
from sip_trunk.workflows.deps import Deps


class HostHealth(Model):
    instance_id: str
    role: str
    running_version: str | None
    drift: bool
    fresh: bool
    probe: ProbeReport | None = None


NOT_PROVISIONED = "not provisioned yet"
CERTIFICATE_CHECK_INTERVAL_S = 3600
SCHEDULE_S = 60
"""The health check's schedule (template.yaml HealthCheckSchedule): one run lands in each interval's first minute."""


class HealthReport(Model):
    status: Literal["checked", "not provisioned yet"] = "checked"
    address: ProbeReport | None
    hosts: list[HostHealth]
    desired_version: str | None
    trunk_verified: bool
    config_drift: int
    consecutive_failures: int
    failover_execution: str | None = None
    certificate: CertificateCheck | None = None
    """Transport tls, first minute of the hour: the gateway's certificate as ElevenLabs sees it."""

    @property
    def answering(self) -> bool:
        """Nothing to alarm on: the address answered, or there is no deployment to probe yet."""
        return self.address is None or self.address.answers


@dataclass
class Metric:
    name: str
    unit: str
    value: float
    dimensions: dict[str, str] = field(default_factory=dict)


def health_check(deps: Deps, invocation: str) -> HealthReport:
    cfg = deps.config
    now = clock.now()
    deployment = deps.state.get_deployment()
    desired = deps.config_store.desired_version()
    if deployment is None or deployment.primary_instance_id is None:
        return HealthReport(
            status=NOT_PROVISIONED,
            address=None,
            hosts=[],
            desired_version=desired,
            trunk_verified=False,
            config_drift=0,
            consecutive_failures=0,
        )
    loaded = load_settings(deps.settings, deps.secrets)
    transport, port = sip_transport(loaded.settings)
    allocation_id = deployment.allocation_id or cfg.primary_allocation_id
    address = deps.addresses.describe_address(allocation_id)
    eip = probe_address(deps.prober, address.public_ip, transport, port, cfg.probe_targets, cfg.probe_timeout_s)

    hosts: list[HostHealth] = []
    ids = deployment.hosts()
    beats = deps.state.heartbeats(ids)
    public = {i.instance_id: i.public_ip for i in deps.addresses.instances(ids)}
    for instance_id in ids:
        beat = beats.get(instance_id)
        running = beat.running_version if beat else None
        ip = public.get(instance_id)
        host_probe = None
        if ip and ip != address.public_ip:
            host_probe = probe_address(deps.prober, ip, transport, port, cfg.probe_targets, cfg.probe_timeout_s)
        hosts.append(
            HostHealth(
                instance_id=instance_id,
                role="primary" if instance_id == deployment.primary_instance_id else "standby",
                running_version=running,
                drift=desired is not None and running != desired,
                fresh=bool(beat and beat.fresh(now, cfg.heartbeat_max_age_s)),
                probe=host_probe,
            )
        )
    primary = next((h for h in hosts if h.role == "primary"), None)
    trunk_verified = eip.answers and primary is not None and not primary.drift and primary.fresh

    counter = deps.state.health()
    execution: str | None = None
    if eip.answers or not eip.probed:
        counter = counter.model_copy(update={"consecutive_failures": 0, "failover_started": None})
    else:
        counter = counter.model_copy(update={"consecutive_failures": counter.consecutive_failures + 1})
        due = counter.consecutive_failures >= cfg.failure_threshold and counter.failover_started is None
        if due and cfg.failover_state_machine_arn:
            name = f"health-{invocation}"[:80]
            deps.executions.start(
                cfg.failover_state_machine_arn,
                name,
                {
                    "source": "health_check",
                    "reason": f"{counter.consecutive_failures} consecutive failed SIP probes of {address.public_ip}",
                },
            )
            execution = name
            counter = counter.model_copy(update={"failover_started": name})
    certificate = None
    if (
        loaded.settings.elevenlabs.transport is SettingsTransport.TLS
        and now % CERTIFICATE_CHECK_INTERVAL_S < SCHEDULE_S
    ):
        certificate = check_gateway_certificate(deps, loaded.settings)
    deps.state.put_health(counter.model_copy(update={"last_probe_at": now}))
    return HealthReport(
        address=eip,
        hosts=hosts,
        desired_version=desired,
        trunk_verified=trunk_verified,
        config_drift=sum(1 for h in hosts if h.drift),
        consecutive_failures=counter.consecutive_failures,
        failover_execution=execution,
        certificate=certificate,
    )


def metrics(report: HealthReport) -> list[Metric]:
    """Nothing before the first Provision: a 0 would be a failure that is not one."""
    if report.address is None:
        return []
    out = [
        Metric("SipProbeSuccess", "Count", 1.0 if report.address.answers else 0.0),
        Metric("TrunkVerified", "Count", 1.0 if report.trunk_verified else 0.0),
        Metric("ConfigDrift", "Count", float(report.config_drift)),
    ]
    if report.address.rtt_ms is not None:
        out.append(Metric("SipProbeLatencyMs", "Milliseconds", report.address.rtt_ms))
    cert = report.certificate
    if cert is not None and cert.checked:
        # A certificate ElevenLabs refuses has no days left, whatever its dates say.
        days = float(cert.days_left) if cert.verified and cert.days_left is not None else 0.0
        out.append(Metric("GatewayCertificateDaysLeft", "Count", max(days, 0.0)))
    for host in report.hosts:
        if host.probe is not None and host.probe.probed:
            dims = {"InstanceId": host.instance_id}
            out.append(Metric("SipProbeSuccess", "Count", 1.0 if host.probe.answers else 0.0, dims))
            if host.probe.rtt_ms is not None:
                out.append(Metric("SipProbeLatencyMs", "Milliseconds", host.probe.rtt_ms, dims))
    return out
