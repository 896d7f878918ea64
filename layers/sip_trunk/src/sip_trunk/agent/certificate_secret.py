"""``renew-cert`` with an operator-supplied certificate: the PEM chain and key from a Secrets Manager secret.

The alternative to ACME (ADR-48). The secret (``tls_certificate_secret_arn``) is a JSON object::

    {"certificate": "<PEM: the leaf, then its intermediates>", "private_key": "<PEM private key, unencrypted>"}

Each run reads the secret (one ``GetSecretValue``), validates what it holds and compares it with the installed
files: the same content changes nothing (no write, no reload); new content that passes every check is installed
where the ACME path installs (:func:`sip_trunk.agent.certificate.install`) and Asterisk's TLS listener restarts
exactly as after an ACME renewal. Content that fails a check is refused with :class:`CertificateRefused`, naming
the problem and never the material; the installed certificate stays. The checks are ``openssl``'s, as the host
has it (the agent imports nothing beyond the standard library and boto3, ADR-19); the key travels to ``openssl``
on its standard input only, never through a file or an argument.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from sip_trunk.agent.certificate import CertificateFailed, install, reload_tls
from sip_trunk.agent.config import AgentConfig
from sip_trunk.agent.runtime import AsteriskCli

log = logging.getLogger(__name__)

CERTIFICATE_FIELD = "certificate"
KEY_FIELD = "private_key"
WARN_DAYS = 21
"""Fewer days left than the GatewayCertificateDaysLeft alarm's threshold: installed, with a warning."""
OPENSSL_TIMEOUT_S = 30.0
_CERT_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+?-----END CERTIFICATE-----")
_KEY_BLOCK = re.compile(r"-----BEGIN (RSA |EC )?PRIVATE KEY-----\n[A-Za-z0-9+/=\n]+?-----END \1?PRIVATE KEY-----")
_SECRET_ARN = re.compile(r"arn:aws[a-z-]*:secretsmanager:([a-z0-9-]+):[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+")

PROBLEMS = (
    "unreadable",  # Secrets Manager refused or could not be reached
    "not-json",  # no SecretString, or not a JSON object
    "missing-field",  # certificate or private_key absent or empty
    "bad-certificate",  # the certificate field holds something other than parseable PEM certificates
    "bad-key",  # the private_key field is not one unencrypted PEM private key
    "key-mismatch",  # the key is not the leaf's
    "wrong-name",  # the leaf's subjectAltName does not cover the public host name
    "not-yet-valid",
    "expired",
    "bad-chain",  # a certificate of the chain is not issued by the next one
)


class CertificateRefused(CertificateFailed):
    """The secret holds nothing the agent will install; ``problem`` is one of :data:`PROBLEMS`."""

    def __init__(self, problem: str, message: str) -> None:
        if problem not in PROBLEMS:
            raise ValueError(f"unknown certificate problem {problem!r}")
        super().__init__(f"{problem}: {message}")
        self.problem = problem


class SecretSource(Protocol):
    """Where the secret's text comes from (Secrets Manager on a host; tests may give their own)."""

    def secret_string(self, arn: str) -> str: ...


class SecretsManagerSource:
    """``GetSecretValue`` in the secret's own region, through boto3; AWS's errors become `CertificateRefused`
    (``unreadable``) naming the error code, never the value."""

    def __init__(self, session: Any) -> None:
        self._session = session

    def secret_string(self, arn: str) -> str:
        match = _SECRET_ARN.fullmatch(arn)
        if match is None:
            raise CertificateRefused("unreadable", f"{arn!r} is not a Secrets Manager secret ARN")
        client = self._session.client("secretsmanager", region_name=match[1])
        try:
            value = client.get_secret_value(SecretId=arn)
        except ClientError as exc:  # AccessDenied, ResourceNotFound, a KMS key the role may not use, throttling
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise CertificateRefused("unreadable", f"secret {arn}: {code}") from None
        except BotoCoreError as exc:  # no route to Secrets Manager
            raise CertificateRefused("unreadable", f"secret {arn}: {type(exc).__name__}") from None
        text = value.get("SecretString")
        if not isinstance(text, str):
            raise CertificateRefused("not-json", f"secret {arn} holds binary data, not a JSON SecretString")
        return text


@dataclass(frozen=True)
class OperatorCertificate:
    """What the secret holds, normalized (LF line ends, one final newline): the bytes that are installed."""

    chain: tuple[str, ...]  # PEM blocks, the leaf first
    key: str

    def __repr__(self) -> str:  # never the key, in a traceback or a log line
        return f"OperatorCertificate(chain={len(self.chain)} certificates, key=<redacted>)"

    @property
    def cert_bytes(self) -> bytes:
        return ("\n".join(self.chain) + "\n").encode()

    @property
    def key_bytes(self) -> bytes:
        return (self.key + "\n").encode()


def parse_secret(text: str) -> OperatorCertificate:
    """The secret's JSON, its two fields and their PEM blocks; nothing of the content is ever in an error."""
    try:
        document = json.loads(text)
    except ValueError:
        raise CertificateRefused("not-json", "the secret's value is not JSON") from None
    if not isinstance(document, dict):
        raise CertificateRefused("not-json", "the secret's value is not a JSON object")
    missing = [f for f in (CERTIFICATE_FIELD, KEY_FIELD) if not isinstance(document.get(f), str) or not document[f]]
    if missing:
        raise CertificateRefused(
            "missing-field",
            f"the secret has no {' and no '.join(repr(f) for f in missing)} (a JSON object with the PEM strings "
            f"{CERTIFICATE_FIELD!r} and {KEY_FIELD!r})",
        )
    certs_text = _lf(document[CERTIFICATE_FIELD])
    chain = tuple(_CERT_BLOCK.findall(certs_text))
    if not chain:
        raise CertificateRefused("bad-certificate", f"{CERTIFICATE_FIELD!r} holds no PEM CERTIFICATE block")
    if _CERT_BLOCK.sub("", certs_text).strip():  # a key pasted here would land in the world-readable file
        raise CertificateRefused(
            "bad-certificate", f"{CERTIFICATE_FIELD!r} holds something besides PEM CERTIFICATE blocks"
        )
    key_text = _lf(document[KEY_FIELD]).strip()
    if "ENCRYPTED" in key_text.split("\n", 1)[0]:
        raise CertificateRefused("bad-key", f"{KEY_FIELD!r} is encrypted: give the key without a passphrase")
    if _KEY_BLOCK.fullmatch(key_text) is None:
        raise CertificateRefused("bad-key", f"{KEY_FIELD!r} is not one PEM PRIVATE KEY block")
    return OperatorCertificate(chain=chain, key=key_text)


def _lf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _openssl(args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["openssl", *args], input=stdin, capture_output=True, text=True, timeout=OPENSSL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertificateFailed(f"openssl: {exc}") from exc


@dataclass(frozen=True)
class Validated:
    certificate: OperatorCertificate
    days_left: int
    not_after: str


def validate(certificate: OperatorCertificate, hostname: str, *, now: float | None = None) -> Validated:
    """Every certificate parses, the key is the leaf's, the leaf's subjectAltName covers `hostname`, the leaf is
    valid now and each certificate is issued by the next one. The first problem found is raised."""
    for number, block in enumerate(certificate.chain, 1):
        if _openssl(["x509", "-noout"], block).returncode != 0:
            raise CertificateRefused("bad-certificate", f"certificate {number} of {CERTIFICATE_FIELD!r} does not parse")
    leaf = certificate.chain[0]
    key_public = _openssl(["pkey", "-pubout", "-passin", "pass:"], certificate.key)
    if key_public.returncode != 0:  # openssl's message is not repeated: it is about the key
        raise CertificateRefused("bad-key", f"{KEY_FIELD!r} does not parse as a private key")
    leaf_public = _openssl(["x509", "-noout", "-pubkey"], leaf)
    if leaf_public.returncode != 0 or leaf_public.stdout.strip() != key_public.stdout.strip():
        raise CertificateRefused("key-mismatch", f"{KEY_FIELD!r} is not the key of the first certificate (the leaf)")
    san = _openssl(["x509", "-noout", "-ext", "subjectAltName"], leaf)
    if "DNS:" not in san.stdout:
        raise CertificateRefused("wrong-name", f"the leaf has no DNS name in its subjectAltName (needs {hostname})")
    checked = _openssl(["x509", "-noout", "-checkhost", hostname], leaf)
    if checked.returncode != 0 or "does NOT match" in checked.stdout:
        names = san.stdout.strip().splitlines()[-1].strip()
        raise CertificateRefused("wrong-name", f"the leaf is for {names}, not {hostname}")
    lines = _openssl(["x509", "-noout", "-startdate", "-enddate"], leaf).stdout.splitlines()
    dates = dict(line.split("=", 1) for line in lines if "=" in line)
    try:
        not_before = ssl.cert_time_to_seconds(dates["notBefore"])
        not_after = ssl.cert_time_to_seconds(dates["notAfter"])
    except (KeyError, ValueError):
        raise CertificateRefused("bad-certificate", "the leaf's validity dates cannot be read") from None
    at = time.time() if now is None else now
    if at < not_before:
        raise CertificateRefused("not-yet-valid", f"the leaf is valid only from {dates['notBefore']}")
    if at >= not_after:
        raise CertificateRefused("expired", f"the leaf expired {dates['notAfter']}")
    _check_chain(certificate.chain)
    return Validated(certificate, int((not_after - at) // 86400), dates["notAfter"])


def _check_chain(chain: tuple[str, ...]) -> None:
    """``openssl verify`` with the chain's last certificate as the only trust anchor (``-partial_chain``): every
    link is checked, the trust in the top is the far end's to decide (ElevenLabs trusts public CAs)."""
    if len(chain) == 1:
        return
    with tempfile.TemporaryDirectory(prefix="sip-trunk-chain-") as tmp:  # certificates only: public material
        top, middle, leaf = Path(tmp, "top.pem"), Path(tmp, "middle.pem"), Path(tmp, "leaf.pem")
        top.write_text(chain[-1] + "\n")
        middle.write_text("\n".join(chain[1:-1]) + "\n")
        leaf.write_text(chain[0] + "\n")
        args = ["verify", "-partial_chain", "-no-CApath", "-no-CAstore", "-CAfile", str(top)]
        if len(chain) > 2:
            args += ["-untrusted", str(middle)]
        proc = _openssl([*args, str(leaf)])
    if proc.returncode != 0:
        reason = next((line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if "error" in line), "")
        raise CertificateRefused(
            "bad-chain", f"the chain does not link leaf to its last certificate in order ({reason.strip()[:200]})"
        )


def install_from_secret(config: AgentConfig, cli: AsteriskCli, source: SecretSource) -> dict[str, Any]:
    """Read, validate, install when changed, reload. The result names the secret, never its content."""
    hostname = config.public_hostname
    arn = config.tls_certificate_secret_arn
    if not hostname:
        raise CertificateFailed("no public hostname (SIP_TRUNK_PUBLIC_HOSTNAME): no certificate to check the name of")
    if not arn:
        raise CertificateFailed("no certificate secret (SIP_TRUNK_TLS_CERTIFICATE_SECRET_ARN)")
    checked = validate(parse_secret(source.secret_string(arn)), hostname)
    cert, key = checked.certificate.cert_bytes, checked.certificate.key_bytes
    result: dict[str, Any] = {
        "source": "secret",
        "secret": arn,
        "hostname": hostname,
        "days_left": checked.days_left,
        "not_after": checked.not_after,
    }
    if checked.days_left < WARN_DAYS:
        result["warning"] = f"the secret's certificate expires in {checked.days_left} days: rotate it"
        log.warning("%s: %s", arn, result["warning"])
    if _installed(config.tls_cert_file) == cert and _installed(config.tls_key_file) == key:
        log.info("the certificate in %s is the installed one: nothing to do", arn)
        return {**result, "renewed": False, "reason": "unchanged"}
    reason = "missing" if not config.tls_cert_file.is_file() else "rotated"
    install(config, cert, key)
    reload_tls(cli, timeout_s=config.reload_timeout_s)
    log.info("installed the certificate from %s for %s (%s) and reloaded the TLS transport", arn, hostname, reason)
    return {**result, "renewed": True, "reason": reason}


def _installed(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
