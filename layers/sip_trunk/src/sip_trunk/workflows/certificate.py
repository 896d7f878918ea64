"""The gateway's certificate as ElevenLabs sees it (transport tls): shared by VerifyTrunk and the health check."""

from __future__ import annotations

from pydantic import Field

from sip_trunk.settings import Settings
from sip_trunk.settings import Transport as SettingsTransport
from sip_trunk.sip import CertificateTarget
from sip_trunk.workflows import clock
from sip_trunk.workflows.common import Model, mapped_address
from sip_trunk.workflows.deps import Deps

__all__ = ["CertificateCheck", "check_gateway_certificate"]


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


def check_gateway_certificate(deps: Deps, settings: Settings) -> CertificateCheck:
    """Over TLS, the handshake ElevenLabs makes: to `public_hostname`, on the TLS port, against the trust store
    the checker was built with (the system's in production)."""
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
