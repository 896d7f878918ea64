"""VerifyTrunk: gate on what proves calls can flow (every host runs the version, the Elastic IP answers SIP, and
over TLS the gateway presents a certificate ElevenLabs accepts)."""

from __future__ import annotations

from pydantic import Field

from sip_trunk.elevenlabs import ElevenLabsError, diff_trunk, find_trunk
from sip_trunk.errors import TrunkNotVerified, VerificationTimedOut
from sip_trunk.settings import Transport as SettingsTransport
from sip_trunk.sip import CertificateTarget
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import (
    LoadedSettings,
    Model,
    ProbeReport,
    StepInput,
    load_settings,
    mapped_address,
    probe_address,
    sip_transport,
)
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.provision.launch import StackCheck
from sip_trunk.workflows.provision.render import RenderResult
from sip_trunk.workflows.provision.sync import desired_trunk


class VerifyInput(StepInput):
    render: RenderResult
    stack: StackCheck
    entered_at: str
    """`$$.State.EnteredTime`: unchanged across the state's retries, so it anchors the deadline."""


class HostCheck(Model):
    instance_id: str
    ok: bool
    running_version: str | None
    asterisk_up: bool
    endpoint_loaded: bool
    fresh: bool
    qualify: str | None = None


class ElevenLabsCheck(Model):
    checked: bool
    matches: bool | None = None
    mismatches: list[str] = Field(default_factory=list)
    note: str = ""


class CertificateCheck(Model):
    """The certificate on `server_name`:`port` as ElevenLabs sees it (transport tls only)."""

    checked: bool
    server_name: str | None = None
    port: int | None = None
    verified: bool | None = None
    subject_names: list[str] = Field(default_factory=list)
    issuer: str | None = None
    not_after: str | None = None
    days_left: int | None = None
    tls_version: str | None = None
    error: str | None = None
    note: str = ""

    def problem(self, min_days: int) -> str | None:
        """Why ElevenLabs would refuse (or soon refuse) the certificate, or None."""
        if not self.checked:
            return None
        where = f"the certificate on {self.server_name}:{self.port}"
        if not self.verified:
            names = f" (it names {', '.join(self.subject_names)})" if self.subject_names else ""
            return f"{where} is refused: {self.error}{names}"
        if self.days_left is not None and self.days_left < min_days:
            return (
                f"{where} expires in {self.days_left} days ({self.not_after}); renew it: at least {min_days} days "
                "are required"
            )
        return None


class VerifyResult(Model):
    version: str
    hosts: list[HostCheck]
    probe: ProbeReport
    elevenlabs: ElevenLabsCheck
    qualify: dict[str, str | None]
    certificate: CertificateCheck = CertificateCheck(checked=False, note="transport is not tls")


def _elevenlabs_check(deps: Deps, loaded: LoadedSettings, public_address: str) -> ElevenLabsCheck:
    if loaded.api_key is None:
        return ElevenLabsCheck(checked=False, note=loaded.api_key_note or "")
    api = deps.elevenlabs(loaded.api_key.get_secret_value())
    desired = desired_trunk(loaded, public_address)
    try:
        actual = find_trunk(api, desired, loaded.settings.elevenlabs.phone_number_id)
    except ElevenLabsError as exc:  # reported here; SyncElevenLabs retries and gates
        return ElevenLabsCheck(checked=False, note=f"{type(exc).__name__}: {exc.message}")
    if actual is None:
        return ElevenLabsCheck(checked=True, matches=False, mismatches=["phone_number"], note="not imported yet")
    mismatches = [m.field for m in diff_trunk(desired, actual)]
    return ElevenLabsCheck(checked=True, matches=not mismatches, mismatches=mismatches)


def _certificate_check(deps: Deps, loaded: LoadedSettings) -> CertificateCheck:
    """Over TLS, the handshake ElevenLabs makes: to `public_hostname`, on the TLS port, against the trust store
    the checker was built with (the system's in production)."""
    settings = loaded.settings
    if settings.elevenlabs.transport is not SettingsTransport.TLS:
        return CertificateCheck(checked=False, note=f"transport is {settings.elevenlabs.transport.value}, not tls")
    name, port = settings.network.public_hostname, settings.network.tls_port
    if name is None:  # refused by the settings model with transport tls
        return CertificateCheck(checked=False, note="no network.public_hostname")
    cfg = deps.config
    if cfg.probe_function:
        # The hosts admit SIP only from named networks (ADR-27): no handshake from here can reach them.
        note = "not checked: the hosts admit SIP only from named networks; check it from an allowed network"
        return CertificateCheck(checked=False, server_name=name, port=port, note=note)
    where = mapped_address(name, port, cfg.probe_targets)
    if where is None:
        return CertificateCheck(checked=False, server_name=name, port=port, note="not mapped")
    report = deps.certificates(CertificateTarget(server_name=name, host=where[0], port=where[1]), cfg.probe_timeout_s)
    return CertificateCheck(
        checked=True,
        server_name=name,
        port=port,
        verified=report.verified,
        subject_names=list(report.subject_names),
        issuer=report.issuer,
        not_after=None if report.not_after is None else clock.iso(report.not_after),
        days_left=report.days_left(clock.now()),
        tls_version=report.tls_version,
        error=report.error,
    )


def verify_trunk(deps: Deps, request: VerifyInput) -> VerifyResult:
    """Gate on what proves calls can flow: every host runs the version with the endpoint loaded, the
    Elastic IP answers SIP OPTIONS, and over TLS the certificate on the public host name is one ElevenLabs
    accepts (trusted chain, the name, TLS 1.2+) with `certificate_min_days` left. The ElevenLabs number is
    reported (SyncElevenLabs converges it) and qualify results are reported, never gating (they are unreliable
    against ElevenLabs)."""
    cfg = deps.config
    deadline = clock.parse_iso(request.entered_at) + cfg.verify_timeout_s
    version = request.render.version
    loaded = load_settings(deps.settings, deps.secrets)
    now = clock.now()
    hosts = [h for h in (request.stack.primary_instance_id, request.stack.standby_instance_id) if h]
    beats = deps.state.heartbeats(hosts)
    host_checks: list[HostCheck] = []
    for host in hosts:
        beat = beats.get(host)
        fresh = beat is not None and beat.fresh(now, cfg.heartbeat_max_age_s)
        check = HostCheck(
            instance_id=host,
            ok=bool(fresh and beat and beat.running_version == version and beat.asterisk_up and beat.endpoint_loaded),
            running_version=beat.running_version if beat else None,
            asterisk_up=bool(beat and beat.asterisk_up),
            endpoint_loaded=bool(beat and beat.endpoint_loaded),
            fresh=fresh,
            qualify=beat.qualify if beat else None,
        )
        host_checks.append(check)
    transport, port = sip_transport(loaded.settings)
    probe = probe_address(
        deps.prober, request.render.public_address, transport, port, cfg.probe_targets, cfg.probe_timeout_s
    )
    problems = [
        f"{c.instance_id} runs {c.running_version or 'nothing'}"
        + ("" if c.fresh else " (no fresh heartbeat)")
        + ("" if c.endpoint_loaded else ", endpoint not loaded")
        for c in host_checks
        if not c.ok
    ]
    if probe.probed and not probe.answers:
        problems.append(f"{probe.address} does not answer SIP OPTIONS ({probe.error or probe.status_code})")
    certificate = _certificate_check(deps, loaded)
    certificate_problem = certificate.problem(cfg.certificate_min_days)
    if certificate_problem is not None:
        problems.append(certificate_problem)
    if problems:
        message = f"version {version} not verified: " + "; ".join(problems)
        if clock.now() >= deadline:
            raise VerificationTimedOut(message + f" (gave up after {cfg.verify_timeout_s}s)")
        raise TrunkNotVerified(message)
    return VerifyResult(
        version=version,
        hosts=host_checks,
        probe=probe,
        elevenlabs=_elevenlabs_check(deps, loaded, request.render.public_address),
        qualify={c.instance_id: c.qualify for c in host_checks},
        certificate=certificate,
    )
