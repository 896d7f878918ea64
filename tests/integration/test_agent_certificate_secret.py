"""``sip-trunk-agent renew-cert`` and ``bootstrap`` with the operator's certificate in Secrets Manager (ADR-48).

Secrets Manager is a moto server on 127.0.0.1, reached through the agent's own boto3 session (the permission
proof evaluates each call against stacks/host.yaml's host role); certificates come from a test CA; Asterisk's CLI
is a script that records what the agent asked of it.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from sip_trunk.agent.__main__ import main
from sip_trunk.agent.bootstrap import CERT_TIMER
from sip_trunk.agent.config import build_config
from sip_trunk.agent.releases import Releases
from support.certificates import TestCa
from support.first_boot import first_boot
from support.iam_eval import Request, evaluate
from support.iam_proof import HOST as HOST_ROLE
from support.iam_proof import host_names, principal_policies

pytestmark = pytest.mark.integration

HOST = "sip.example.com"
REGION = "eu-west-1"


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def secrets(moto_endpoint: str) -> Any:
    return boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="t",
        aws_secret_access_key="t",
    )


def new_secret(secrets: Any, value: str) -> str:
    return str(secrets.create_secret(Name=f"gateway/tls-{time.time_ns()}", SecretString=value)["ARN"])


def document(test_ca: TestCa, *names: str, **kwargs: Any) -> tuple[str, str, str]:
    """(secret JSON, the chain as installed, the key as installed)"""
    cert, key = test_ca.leaf_pem(*(names or (HOST,)), **kwargs)
    chain = cert + test_ca.pem
    return json.dumps({"certificate": chain, "private_key": key}), chain, key


@pytest.fixture
def host(tmp_path: Path, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The agent's settings as a host's agent.env gives them with the operator's secret, and a recording asterisk."""
    keys = tmp_path / "etc" / "asterisk" / "keys"
    keys.mkdir(parents=True)
    calls = tmp_path / "asterisk-calls"
    fake = tmp_path / "asterisk"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "Module reloaded"\n')
    fake.chmod(0o755)
    env = {
        "SIP_TRUNK_STATE_DIR": str(tmp_path / "state"),
        "SIP_TRUNK_CONFIG_DIR": str(keys.parent),
        "SIP_TRUNK_PUBLIC_HOSTNAME": HOST,
        "SIP_TRUNK_TLS_CERT_FILE": str(keys / "asterisk.crt"),
        "SIP_TRUNK_TLS_KEY_FILE": str(keys / "asterisk.key"),
        "SIP_TRUNK_TLS_GROUP": "nogroup",
        "SIP_TRUNK_ASTERISK_CMD": str(fake),
        "SIP_TRUNK_CERTBOT_CMD": "/bin/false",  # the ACME path must not run
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {"cert": keys / "asterisk.crt", "key": keys / "asterisk.key", "calls": calls, "conf": keys.parent}


def use_secret(monkeypatch: pytest.MonkeyPatch, arn: str) -> None:
    monkeypatch.setenv("SIP_TRUNK_TLS_CERTIFICATE_SECRET_ARN", arn)


def run_agent(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["renew-cert"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), out + err


def reloads(host: dict[str, Any]) -> int:
    return len(host["calls"].read_text().splitlines()) if host["calls"].exists() else 0


def key_lines(key: str) -> list[str]:
    return [line for line in key.splitlines() if line and not line.startswith("-----")]


def test_installs_then_leaves_an_unchanged_secret_alone_then_picks_up_a_rotation(
    host: dict[str, Any],
    secrets: Any,
    test_ca: TestCa,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    value, chain, key = document(test_ca)
    arn = new_secret(secrets, value)
    use_secret(monkeypatch, arn)

    code, result, output = run_agent(capsys)

    assert code == 0, output
    assert (result["renewed"], result["reason"], result["source"], result["secret"]) == (True, "missing", "secret", arn)
    assert host["cert"].read_text() == chain  # leaf, then the intermediate, as the secret holds them
    assert host["key"].read_text() == key
    key_stat, cert_stat = host["key"].stat(), host["cert"].stat()
    assert (stat.S_IMODE(key_stat.st_mode), key_stat.st_uid, key_stat.st_gid) == (0o640, 0, 65534)
    assert stat.S_IMODE(cert_stat.st_mode) == 0o644
    assert not [p.name for p in host["key"].parent.iterdir() if p.name.startswith(".")], "a temporary file is left"
    assert [line.split(" -rx ")[-1] for line in host["calls"].read_text().splitlines()] == [
        "module reload res_pjsip.so"
    ]

    # unchanged: no write, no reload
    inodes = host["cert"].stat().st_ino, host["key"].stat().st_ino
    code, result, output = run_agent(capsys)
    assert code == 0, output
    assert (result["renewed"], result["reason"]) == (False, "unchanged")
    assert (host["cert"].stat().st_ino, host["key"].stat().st_ino) == inodes
    assert reloads(host) == 1

    # rotated (a new key and certificate, as a rotation makes them): installed and reloaded once
    rotated, new_chain, new_key = document(test_ca)
    secrets.put_secret_value(SecretId=arn, SecretString=rotated)
    code, result, output = run_agent(capsys)
    assert code == 0, output
    assert (result["renewed"], result["reason"]) == (True, "rotated")
    assert host["cert"].read_text() == new_chain
    assert host["key"].read_text() == new_key
    assert reloads(host) == 2
    # neither key ever appears in what the agent printed or logged
    logged = output + caplog.text
    assert all(line not in logged for line in key_lines(key) + key_lines(new_key))


@pytest.mark.parametrize(
    ("defect", "problem"),
    [("other-key", "key-mismatch"), ("other-name", "wrong-name"), ("expired", "expired"),
     ("garbage", "bad-certificate"), ("no-key-field", "missing-field")],
)  # fmt: skip
def test_a_bad_rotation_is_refused_and_the_installed_certificate_stays(
    host: dict[str, Any],
    secrets: Any,
    test_ca: TestCa,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    defect: str,
    problem: str,
) -> None:
    import datetime

    value, _, key = document(test_ca)
    arn = new_secret(secrets, value)
    use_secret(monkeypatch, arn)
    assert run_agent(capsys)[0] == 0
    before = host["cert"].read_bytes(), host["key"].read_bytes(), host["cert"].stat().st_ino

    cert, bad_key = test_ca.leaf_pem(HOST)
    now = datetime.datetime.now(datetime.UTC)
    bad = {
        "other-key": {"certificate": cert, "private_key": test_ca.leaf_pem(HOST)[1]},
        "other-name": dict(zip(("certificate", "private_key"), test_ca.leaf_pem("sip.example.org"), strict=True)),
        "expired": dict(zip(("certificate", "private_key"), test_ca.leaf_pem(
            HOST, not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(minutes=1)
        ), strict=True)),
        "garbage": {"certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
                    "private_key": bad_key},
        "no-key-field": {"certificate": cert},
    }[defect]  # fmt: skip
    secrets.put_secret_value(SecretId=arn, SecretString=json.dumps(bad))

    code, result, output = run_agent(capsys)

    assert code == 1, output
    assert result["error"].startswith(f"{problem}: "), result
    assert (host["cert"].read_bytes(), host["key"].read_bytes(), host["cert"].stat().st_ino) == before
    assert reloads(host) == 1  # only the first install's
    logged = output + caplog.text
    assert all(line not in logged for line in key_lines(bad.get("private_key", "")) + key_lines(key))


def test_the_secret_wins_over_the_zone_and_a_denied_read_is_named(
    host: dict[str, Any],
    secrets: Any,
    test_ca: TestCa,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # both configured: the secret's certificate is installed, certbot (/bin/false) never runs
    value, chain, _ = document(test_ca)
    use_secret(monkeypatch, new_secret(secrets, value))
    monkeypatch.setenv("SIP_TRUNK_ACME_HOSTED_ZONE_ID", "Z0123456789ABCDEFGHIJ")
    code, result, output = run_agent(capsys)
    assert code == 0, output
    assert result["source"] == "secret"
    assert host["cert"].read_text() == chain

    # a secret that does not exist: Secrets Manager's error code, nothing installed over the current one
    missing = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:gateway/none-AbCdEf"
    use_secret(monkeypatch, missing)
    code, result, _ = run_agent(capsys)
    assert code == 1
    assert result["error"] == f"unreadable: secret {missing}: ResourceNotFoundException"
    assert host["cert"].read_text() == chain


def test_the_host_role_reads_that_secret_and_no_other(secrets: Any, test_ca: TestCa) -> None:
    arn = new_secret(secrets, document(test_ca)[0])
    other = arn.rsplit(":", 1)[0] + ":other/secret-AbCdEf"
    names = host_names(build_config({}, {"SIP_TRUNK_TLS_CERTIFICATE_SECRET_ARN": arn}), REGION)
    role = principal_policies(HOST_ROLE, names)
    assert evaluate(role.policies, Request("secretsmanager:GetSecretValue", arn))
    assert not evaluate(role.policies, Request("secretsmanager:GetSecretValue", other))
    assert not evaluate(role.policies, Request("secretsmanager:PutSecretValue", arn))
    # the customer key: Decrypt only through Secrets Manager and only for that secret
    key = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    role = principal_policies(HOST_ROLE, {**names, "CertificateKmsKeyArn": key})
    via = {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}
    assert evaluate(role.policies, Request("kms:Decrypt", key, {**via, "kms:EncryptionContext:SecretARN": arn}))
    assert not evaluate(role.policies, Request("kms:Decrypt", key, {**via, "kms:EncryptionContext:SecretARN": other}))
    assert not evaluate(role.policies, Request("kms:Decrypt", key, via))  # no secret named
    direct = {"kms:EncryptionContext:SecretARN": arn}  # not through Secrets Manager
    assert not evaluate(role.policies, Request("kms:Decrypt", key, direct))
    # with no key given (the parameter empty) nothing admits this key through Secrets Manager
    names = host_names(build_config({}, {"SIP_TRUNK_TLS_CERTIFICATE_SECRET_ARN": arn}), REGION)
    role = principal_policies(HOST_ROLE, names)
    assert not evaluate(role.policies, Request("kms:Decrypt", key, {**via, "kms:EncryptionContext:SecretARN": arn}))


@pytest.mark.parametrize("good", [True, False], ids=["good-secret", "refused-secret"])
def test_the_first_boot_installs_the_secrets_certificate_before_the_config_that_loads_it(
    good: bool,
    host: dict[str, Any],
    secrets: Any,
    test_ca: TestCa,
    moto_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bootstrap with the lines the host stack's user data writes for TLS with the operator's secret (host name,
    empty zone, the secret's ARN): the certificate is in place before the first config is applied, and the cert
    timer is enabled. A refused secret (another name) is a boot warning, not a failed boot: the config is applied
    without a certificate (TCP serves) and the timer is enabled to try again."""
    value, chain, _ = document(test_ca) if good else document(test_ca, "sip.example.org")
    arn = new_secret(secrets, value)
    stack = f"tlssecret{'good' if good else 'bad'}"  # moto's backends are one per process: names of their own
    boot = first_boot(
        tmp_path, monkeypatch, moto_endpoint=moto_endpoint, region=REGION, stack=stack, table=f"{stack}-state",
        conf_dir=host["conf"], cert_file=host["cert"],
        tls_lines=f"SIP_TRUNK_PUBLIC_HOSTNAME={HOST}\nSIP_TRUNK_ACME_HOSTED_ZONE_ID=\n"
        f"SIP_TRUNK_TLS_CERTIFICATE_SECRET_ARN={arn}\n",
    )  # fmt: skip
    env_file, version, calls = boot.env_file, boot.version, boot.cli_calls

    code = main(["bootstrap", "--env-file", str(env_file)])

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, out
    assert out["apply"]["version"] == version, out
    applied = [line for line in calls.read_text().splitlines() if line.startswith("core reload")]
    assert applied, calls.read_text()
    assert Releases(tmp_path / "releases", host["conf"]).current_version() == version
    assert f"enable --now {CERT_TIMER}" in boot.host_commands.read_text()
    if not good:
        assert out["certificate"]["ok"] is False, out
        assert [w for w in out["warnings"] if w.startswith("certificate: wrong-name: ")], out["warnings"]
        assert all(line.endswith("|cert=no") for line in applied), calls.read_text()
        assert not host["cert"].exists()
        return
    assert (out["certificate"]["renewed"], out["certificate"]["source"]) == (True, "secret"), out
    assert all(line.endswith("|cert=yes") for line in applied), calls.read_text()
    assert host["cert"].read_text() == chain
    leaf = x509.load_pem_x509_certificate(host["cert"].read_bytes())
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [HOST]
