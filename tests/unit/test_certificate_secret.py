"""The operator's certificate secret is validated before anything is installed (ADR-48).

Each test plants one defect in an otherwise good secret (certificates made with ``cryptography`` by the test CA)
and expects the refusal that names it, with no key material in the message.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sip_trunk.agent.certificate_secret import (
    CertificateRefused,
    OperatorCertificate,
    SecretsManagerSource,
    parse_secret,
    validate,
)
from support.certificates import TestCa

pytestmark = pytest.mark.unit

HOST = "sip.example.com"
NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("other-ca"), name="Other Root CA")


def secret(certificate: str, key: str, **extra: Any) -> str:
    return json.dumps({"certificate": certificate, "private_key": key, **extra})


def key_lines(key: str) -> list[str]:
    return [line for line in key.splitlines() if line and not line.startswith("-----")]


def refused(text: str, hostname: str = HOST) -> CertificateRefused:
    with pytest.raises(CertificateRefused) as caught:
        validate(parse_secret(text), hostname)
    return caught.value


def test_a_good_chain_is_accepted_and_normalized(ca: TestCa) -> None:
    cert, key = ca.leaf_pem(HOST, not_after=NOW + datetime.timedelta(days=60))
    text = secret((cert + ca.pem).replace("\n", "\r\n"), key.replace("\n", "\r\n"), rotated_by="ops")

    checked = validate(parse_secret(text), HOST)

    assert len(checked.certificate.chain) == 2
    assert checked.days_left in (59, 60)
    assert checked.certificate.cert_bytes == (cert + ca.pem).encode()  # LF line ends, leaf first
    assert checked.certificate.key_bytes == key.encode()
    assert b"\r" not in checked.certificate.cert_bytes + checked.certificate.key_bytes


def test_a_wildcard_an_rsa_key_and_a_leaf_alone_are_accepted(ca: TestCa) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, key = ca.leaf_pem("*.example.com", key=rsa_key)  # type: ignore[arg-type]
    traditional = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()
    for pem_key in (key, traditional):  # PKCS#8 and "BEGIN RSA PRIVATE KEY"
        assert validate(parse_secret(secret(cert, pem_key)), HOST).certificate.chain == (cert.strip(),)


def test_the_key_of_another_certificate_is_refused(ca: TestCa) -> None:
    cert, key = ca.leaf_pem(HOST)
    _, other_key = ca.leaf_pem(HOST)
    error = refused(secret(cert, other_key))
    assert error.problem == "key-mismatch"
    assert not any(line in str(error) for line in key_lines(other_key) + key_lines(key))


def test_a_certificate_for_another_name_is_refused_naming_both(ca: TestCa) -> None:
    cert, key = ca.leaf_pem("other.example.com", "www.example.com")
    error = refused(secret(cert, key))
    assert error.problem == "wrong-name"
    assert "other.example.com" in str(error)
    assert HOST in str(error)
    # a wildcard one level up does not cover a deeper name
    cert, key = ca.leaf_pem("*.example.com")
    assert refused(secret(cert, key), "a.sip.example.com").problem == "wrong-name"


def test_a_name_only_in_the_common_name_is_refused(ca: TestCa) -> None:
    cert, key = ca.leaf_pem(HOST, san=False)  # openssl -checkhost alone would accept the CN
    error = refused(secret(cert, key))
    assert error.problem == "wrong-name"
    assert "subjectAltName" in str(error)


def test_an_expired_or_not_yet_valid_certificate_is_refused(ca: TestCa) -> None:
    cert, key = ca.leaf_pem(
        HOST, not_before=NOW - datetime.timedelta(days=90), not_after=NOW - datetime.timedelta(hours=1)
    )
    assert refused(secret(cert, key)).problem == "expired"
    cert, key = ca.leaf_pem(HOST, not_before=NOW + datetime.timedelta(days=1))
    assert refused(secret(cert, key)).problem == "not-yet-valid"


@pytest.mark.parametrize(
    "certificate",
    [
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",  # base64, not DER
        "not PEM at all",
        "",
    ],
    ids=["garbage-block", "no-block", "empty"],
)
def test_garbage_in_the_certificate_field_is_refused(ca: TestCa, certificate: str) -> None:
    _, key = ca.leaf_pem(HOST)
    error = refused(secret(certificate, key))
    assert error.problem == ("missing-field" if certificate == "" else "bad-certificate")


def test_a_key_pasted_into_the_certificate_field_is_refused_before_it_reaches_the_public_file(ca: TestCa) -> None:
    cert, key = ca.leaf_pem(HOST)
    error = refused(secret(cert + key, key))
    assert error.problem == "bad-certificate"
    assert not any(line in str(error) for line in key_lines(key))


@pytest.mark.parametrize("kind", ["garbage", "certificate", "encrypted"])
def test_a_key_field_that_is_no_usable_key_is_refused(ca: TestCa, kind: str) -> None:
    cert, _ = ca.leaf_pem(HOST)
    key = {
        "garbage": "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----",
        "certificate": cert,
        "encrypted": ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
        .decode(),
    }[kind]
    error = refused(secret(cert, key))
    assert error.problem == "bad-key"
    assert not any(line in str(error) for line in key_lines(key))


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"private_key": "k"}, "missing-field"),
        ({"certificate": "c"}, "missing-field"),
        ({"certificate": "c", "private_key": ""}, "missing-field"),
        ({"certificate": 1, "private_key": "k"}, "missing-field"),
        ({"cert": "c", "key": "k"}, "missing-field"),
    ],
    ids=["no-certificate", "no-key", "empty-key", "certificate-not-a-string", "other-field-names"],
)
def test_a_missing_field_is_refused_naming_the_field(document: dict[str, Any], problem: str) -> None:
    with pytest.raises(CertificateRefused) as caught:
        parse_secret(json.dumps(document))
    assert caught.value.problem == problem
    wanted = [f for f in ("certificate", "private_key") if not isinstance(document.get(f), str) or not document[f]]
    assert all(repr(f) in str(caught.value) for f in wanted)


@pytest.mark.parametrize("text", ["-----BEGIN PRIVATE KEY-----\nabc", "[1, 2]", '"pem"'])
def test_a_value_that_is_no_json_object_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(CertificateRefused) as caught:
        parse_secret(text)
    assert caught.value.problem == "not-json"
    assert "abc" not in str(caught.value)


def test_a_chain_out_of_order_or_with_a_foreign_intermediate_is_refused(ca: TestCa, other_ca: TestCa) -> None:
    cert, key = ca.leaf_pem(HOST)
    assert refused(secret(ca.pem + cert, key)).problem == "key-mismatch"  # the leaf must come first
    error = refused(secret(cert + other_ca.pem, key))
    assert error.problem == "bad-chain"


def test_the_parsed_secret_never_shows_its_key() -> None:
    parsed = OperatorCertificate(chain=("-----BEGIN CERTIFICATE-----",), key="-----BEGIN PRIVATE KEY-----\nSECRET")
    assert "SECRET" not in repr(parsed)
    assert "SECRET" not in str(parsed)


class DeniedClient:
    def get_secret_value(self, SecretId: str) -> dict[str, Any]:
        from botocore.exceptions import ClientError

        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "GetSecretValue")


class Session:
    def __init__(self, client: Any) -> None:
        self.client_args: list[tuple[str, str]] = []
        self._client = client

    def client(self, service: str, region_name: str) -> Any:
        self.client_args.append((service, region_name))
        return self._client


def test_the_adapter_asks_the_secrets_region_and_owns_the_error() -> None:
    session = Session(DeniedClient())
    arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:gateway/tls-AbCdEf"
    with pytest.raises(CertificateRefused) as caught:
        SecretsManagerSource(session).secret_string(arn)
    assert caught.value.problem == "unreadable"
    assert "AccessDeniedException" in str(caught.value)
    assert session.client_args == [("secretsmanager", "eu-central-1")]
    with pytest.raises(CertificateRefused, match="not a Secrets Manager secret ARN"):
        SecretsManagerSource(session).secret_string("gateway/tls")


def test_the_chain_check_is_needed(ca: TestCa, other_ca: TestCa, monkeypatch: pytest.MonkeyPatch) -> None:
    # Control: without the chain check the foreign intermediate above would be installed
    from sip_trunk.agent import certificate_secret

    cert, key = ca.leaf_pem(HOST)
    monkeypatch.setattr(certificate_secret, "_check_chain", lambda chain: None)
    assert len(validate(parse_secret(secret(cert + other_ca.pem, key)), HOST).certificate.chain) == 2
