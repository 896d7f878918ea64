"""VerifyTrunk: gate on what proves calls can flow (every host runs the version, the Elastic IP answers SIP, and
over TLS the gateway presents a certificate ElevenLabs accepts)."""

from __future__ import annotations

from pydantic import Field

from sip_trunk.elevenlabs import ElevenLabsError, diff_trunk, find_trunk
from sip_trunk.errors import TrunkNotVerified, VerificationTimedOut
from sip_trunk.workflows import clock
from sip_trunk.workflows.certificate import CertificateCheck, check_gateway_certificate
from sip_trunk.workflows.common import (
    LoadedSettings,
    Model,
    ProbeReport,
    StepInput,
    load_settings,
    probe_address,
    sip_transport,
)
from sip_trunk.workflows.deps import Deps
from sip_trunk.workflows.provision.launch import StackCheck
from sip_trunk.workflows.provision.render import RenderResult
from sip_trunk.workflows.provision.sync import desired_trunks


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


class NumberCheck(Model):
    """One agent's number as ElevenLabs holds it."""

    agent: str
    phone_number: str
    checked: bool
    matches: bool | None = None
    mismatches: list[str] = Field(default_factory=list)
    note: str = ""


class ElevenLabsCheck(Model):
    """All agents' numbers together; `mismatches` names another agent's fields with its name in front
    (`sales: outbound_trunk.address`); with several agents `numbers` holds each number's check, the default
    agent's first (with one it is left out)."""

    checked: bool
    matches: bool | None = None
    mismatches: list[str] = Field(default_factory=list)
    note: str = ""
    numbers: list[NumberCheck] = Field(default_factory=list, exclude_if=lambda numbers: not numbers)


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
    numbers: list[NumberCheck] = []
    for agent, desired in desired_trunks(loaded, public_address):
        label = {"agent": agent.name, "phone_number": agent.phone_number}
        try:
            actual = find_trunk(api, desired, agent.phone_number_id)
        except ElevenLabsError as exc:  # reported here; SyncElevenLabs retries and gates
            numbers.append(NumberCheck(**label, checked=False, note=f"{type(exc).__name__}: {exc.message}"))
            continue
        if actual is None:
            numbers.append(
                NumberCheck(**label, checked=True, matches=False, mismatches=["phone_number"], note="not imported yet")
            )
            continue
        mismatches = [m.field for m in diff_trunk(desired, actual)]
        numbers.append(NumberCheck(**label, checked=True, matches=not mismatches, mismatches=mismatches))
    default, others = numbers[0], numbers[1:]
    if not others:
        return ElevenLabsCheck(**default.model_dump(exclude={"agent", "phone_number"}))
    checked = all(n.checked for n in numbers)
    notes = [f"agent {n.agent} ({n.phone_number}): {n.note}" for n in numbers if n.note]
    return ElevenLabsCheck(
        checked=checked,
        matches=all(n.matches for n in numbers) if checked else None,
        mismatches=[f if n is default else f"{n.agent}: {f}" for n in numbers for f in n.mismatches],
        note="; ".join(notes),
        numbers=numbers,
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
    certificate = check_gateway_certificate(deps, loaded.settings)
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
