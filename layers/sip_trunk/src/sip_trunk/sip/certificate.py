"""The certificate a TLS peer presents, checked the way ElevenLabs checks the gateway's.

For calls from ElevenLabs the gateway is the TLS server: ElevenLabs connects to the number's address (a host
name), sends that name as SNI, and accepts only a chain it trusts, for that name, over TLS 1.2 or later. This
module performs the same handshake and reports what it saw; outcomes are results (`CertificateReport`), never
exceptions, as with the OPTIONS probe. Deciding what is good enough (days left) is the caller's business.
"""

from __future__ import annotations

import math
import socket
import ssl
from dataclasses import dataclass
from typing import Any

from sip_trunk.sip.message import validate_host, validate_port
from sip_trunk.sip.probe import tls_context

__all__ = ["CertificateReport", "CertificateTarget", "check_certificate"]

_DAY_S = 86_400
_HOSTNAME_MISMATCH = 62
"""OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH: the chain was trusted, only the name was wrong."""


@dataclass(frozen=True, slots=True)
class CertificateTarget:
    """`server_name` is what ElevenLabs dials (SNI and the name checked); `host`:`port` is where to connect,
    the same host in production, a stand-in on 127.0.0.1 in tests and local mode."""

    server_name: str
    host: str
    port: int

    def __post_init__(self) -> None:
        validate_host(self.server_name)
        validate_host(self.host)
        validate_port(self.port, "port")


@dataclass(frozen=True, slots=True)
class CertificateReport:
    """What the handshake showed. `verified`: chain trusted, name matched, TLS ≥ 1.2.

    The names, issuer and expiry come from a certificate whose chain was verified (the name may still be
    wrong): nothing an untrusted peer sends is reported as fact.
    """

    target: CertificateTarget
    verified: bool
    subject_names: tuple[str, ...] = ()
    issuer: str | None = None
    not_after: float | None = None
    """Expiry, seconds since the epoch."""
    tls_version: str | None = None
    error: str | None = None

    def days_left(self, now: float) -> int | None:
        """Whole days until expiry (negative once expired); None when unknown."""
        if self.not_after is None:
            return None
        return math.floor((self.not_after - now) / _DAY_S)


def _names(cert: dict[str, Any]) -> tuple[str, ...]:
    names = tuple(value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS")
    if names:
        return names
    return tuple(value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName")


def _issuer(cert: dict[str, Any]) -> str | None:
    fields = {key: value for rdn in cert.get("issuer", ()) for key, value in rdn}
    return fields.get("organizationName") or fields.get("commonName")


def _handshake(target: CertificateTarget, timeout_s: float, context: ssl.SSLContext) -> tuple[dict[str, Any], str]:
    with (
        socket.create_connection((target.host, target.port), timeout=timeout_s) as sock,
        context.wrap_socket(sock, server_hostname=target.server_name) as tls,
    ):
        return dict(tls.getpeercert() or {}), tls.version() or ""


def check_certificate(target: CertificateTarget, timeout_s: float, *, ca_file: str | None = None) -> CertificateReport:
    """One handshake as ElevenLabs makes it (system trust store unless `ca_file`); on a name mismatch, a
    second one without the name check, to report which names the (trusted) certificate carries."""
    strict = tls_context(True, ca_file)
    try:
        cert, version = _handshake(target, timeout_s, strict)
    except ssl.SSLCertVerificationError as exc:
        error = f"certificate rejected: {exc.verify_message}"
        if exc.verify_code != _HOSTNAME_MISMATCH:  # every other failure distrusts the chain
            return CertificateReport(target=target, verified=False, error=error)
        lenient = tls_context(True, ca_file)
        lenient.check_hostname = False
        try:
            cert, version = _handshake(target, timeout_s, lenient)
        except (OSError, ValueError):
            return CertificateReport(target=target, verified=False, error=error)
        return _report(target, cert, version, error)
    except TimeoutError:
        return CertificateReport(target=target, verified=False, error=f"timed out after {timeout_s:g}s")
    except ConnectionRefusedError:
        return CertificateReport(target=target, verified=False, error="connection refused")
    except ssl.SSLError as exc:
        return CertificateReport(target=target, verified=False, error=f"TLS handshake failed: {exc.reason or exc}")
    except OSError as exc:
        return CertificateReport(target=target, verified=False, error=f"cannot connect: {exc}")
    return _report(target, cert, version, None)


def _report(target: CertificateTarget, cert: dict[str, Any], version: str, error: str | None) -> CertificateReport:
    not_after = cert.get("notAfter")
    return CertificateReport(
        target=target,
        verified=error is None,
        subject_names=_names(cert),
        issuer=_issuer(cert),
        not_after=None if not_after is None else float(ssl.cert_time_to_seconds(str(not_after))),
        tls_version=version or None,
        error=error,
    )
