"""``renew-cert``: a publicly trusted certificate for the gateway's host name, from ACME by DNS-01 in Route 53.

(Or the operator's own certificate from a Secrets Manager secret, which wins when both are configured:
:mod:`sip_trunk.agent.certificate_secret`, chosen by :func:`manage_certificate`.)

The ACME protocol, the account and the DNS-01 challenge are certbot's (with its Route 53 plugin, both from the host's
packages): the agent never imports them, it runs ``certbot certonly`` only when the installed certificate is
missing, names another host or has fewer than :data:`RENEW_BEFORE_DAYS` days left, then installs what certbot
issued where the TLS transport reads it and makes Asterisk restart the TLS listener.
"""

from __future__ import annotations

import grp
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.runtime import AgentError, AsteriskCli, atomic_write

log = logging.getLogger(__name__)

LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
RENEW_BEFORE_DAYS = 30
"""Let's Encrypt's own advice for 90-day certificates; the health check alarms at 21 days, VerifyTrunk refuses at 14."""
CERT_NAME = "sip-trunk"
"""certbot's lineage name: ``<acme_dir>/config/live/sip-trunk/``."""
CERTBOT_TIMEOUT_S = 900.0
"""certbot waits up to ten minutes for a Route 53 change to be INSYNC."""
RELOAD_COMMAND = "module reload res_pjsip.so"


class CertificateFailed(AgentError):
    """certbot did not issue a certificate, or what it issued could not be installed."""


@dataclass(frozen=True)
class Due:
    due: bool
    reason: str  # missing | other-name | expiring | valid


def renewal_due(cert_file: Path, key_file: Path, hostname: str, *, days: int = RENEW_BEFORE_DAYS) -> Due:
    """Whether the installed certificate must be (re)issued, judged by ``openssl x509`` as the host has it."""
    if not cert_file.is_file() or not key_file.is_file():
        return Due(True, "missing")
    if not _openssl_ok("-checkhost", hostname, "-in", str(cert_file)):
        return Due(True, "other-name")
    if not _openssl_ok("-checkend", str(days * 86400), "-in", str(cert_file)):
        return Due(True, "expiring")
    return Due(False, "valid")


def _openssl_ok(*args: str) -> bool:
    proc = subprocess.run(["openssl", "x509", "-noout", *args], capture_output=True, text=True, check=False, timeout=30)
    if "does NOT match" in proc.stdout:
        return False
    return proc.returncode == 0


def check_zone(route53: Any, zone_id: str, hostname: str) -> str:
    """The configured hosted zone must hold the host name: certbot picks the zone by name, the host role may only
    write to this one, so a mismatch is refused here with a clear message instead of an AccessDenied later."""
    try:
        zone = route53.get_hosted_zone(Id=zone_id)["HostedZone"]
    except ClientError as exc:  # NoSuchHostedZone, AccessDenied, throttling: no order without the zone
        raise CertificateFailed(f"hosted zone {zone_id}: {exc.response.get('Error', {}).get('Code', exc)}") from None
    except BotoCoreError as exc:  # no route to Route 53
        raise CertificateFailed(f"hosted zone {zone_id}: {exc}") from None
    name = str(zone["Name"]).rstrip(".").lower()
    host = hostname.rstrip(".").lower()
    if zone.get("Config", {}).get("PrivateZone"):
        raise CertificateFailed(f"hosted zone {zone_id} is private: ACME validates in public DNS")
    if host != name and not host.endswith("." + name):
        raise CertificateFailed(f"public hostname {hostname} is not in hosted zone {zone_id} ({name})")
    return name


def certbot_argv(config: AgentConfig, hostname: str) -> list[str]:
    acme = config.acme_dir
    argv = [
        *config.certbot_cmd,
        "certonly",
        "--non-interactive",
        "--agree-tos",
        "--dns-route53",
        "--server",
        config.acme_directory,
        "--cert-name",
        CERT_NAME,
        "--domain",
        hostname,
        "--force-renewal",  # the agent decided it is due; certbot's own 30-day rule would skip a lineage it trusts
        "--config-dir",
        str(acme / "config"),
        "--work-dir",
        str(acme / "work"),
        "--logs-dir",
        str(acme / "logs"),
    ]
    argv += ["--email", config.acme_email] if config.acme_email else ["--register-unsafely-without-email"]
    return argv


def _group_id(name: str) -> int:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise CertificateFailed(f"group {name!r} does not exist: the key must be readable by Asterisk") from None


def install(config: AgentConfig, cert: bytes, key: bytes) -> None:
    """Key first, then certificate, each replaced atomically: Asterisk reads them only on the reload that follows."""
    gid = _group_id(config.tls_group)
    atomic_write(config.tls_key_file, key, mode=0o640, gid=gid)
    atomic_write(config.tls_cert_file, cert, mode=0o644, gid=gid)


def reload_tls(cli: AsteriskCli, *, timeout_s: float) -> None:
    """A res_pjsip reload re-applies the transports, and Asterisk restarts a TLS listener whose certificate or key
    file changed (inode, mtime) under the same names: new connections get the new certificate, calls and their
    connections stay (``tests/asterisk/test_certificate_reload.py``)."""
    cli.rx(RELOAD_COMMAND, timeout_s=timeout_s)


def renew_certificate(config: AgentConfig, cli: AsteriskCli, route53: Any) -> dict[str, Any]:
    hostname = config.public_hostname
    if not hostname:
        raise CertificateFailed("no public hostname (SIP_TRUNK_PUBLIC_HOSTNAME): no certificate to manage")
    due = renewal_due(config.tls_cert_file, config.tls_key_file, hostname)
    if not due.due:
        log.info("certificate for %s is valid for more than %d days", hostname, RENEW_BEFORE_DAYS)
        return {"renewed": False, "reason": due.reason, "hostname": hostname}
    zone = check_zone(route53, config.acme_hosted_zone_id, hostname) if config.acme_hosted_zone_id else None
    log.info("requesting a certificate for %s (%s) from %s", hostname, due.reason, config.acme_directory)
    try:
        proc = subprocess.run(
            certbot_argv(config, hostname), capture_output=True, text=True, timeout=CERTBOT_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertificateFailed(f"certbot: {exc}") from exc
    if proc.returncode != 0:
        # certbot never prints the key; its last lines say which step failed.
        raise CertificateFailed(f"certbot failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    live = config.acme_dir / "config" / "live" / CERT_NAME
    try:
        cert = (live / "fullchain.pem").read_bytes()
        key = (live / "privkey.pem").read_bytes()
    except OSError as exc:
        raise CertificateFailed(f"certbot left no certificate in {live}: {exc.strerror}") from None
    install(config, cert, key)
    reload_tls(cli, timeout_s=config.reload_timeout_s)
    log.info("installed a new certificate for %s and reloaded the TLS transport", hostname)
    return {"renewed": True, "reason": due.reason, "hostname": hostname, "zone": zone}


def managed(config: AgentConfig) -> bool:
    """Whether this host manages a TLS certificate: a public host name and a source (the zone or the secret)."""
    return bool(config.public_hostname and (config.acme_hosted_zone_id or config.tls_certificate_secret_arn))


def manage_certificate(config: AgentConfig, cli: AsteriskCli, session: Any) -> dict[str, Any]:
    """``renew-cert``: the operator's secret when one is configured (it wins over the zone, ADR-48), else ACME."""
    if config.tls_certificate_secret_arn:
        from sip_trunk.agent.certificate_secret import SecretsManagerSource, install_from_secret

        return install_from_secret(config, cli, SecretsManagerSource(session))
    return renew_certificate(config, cli, session.client("route53"))
