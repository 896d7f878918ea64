"""``sip-trunk-agent renew-cert`` against an ACME server and Route 53, offline.

Pebble (the ACME test server, Debian's package) runs on 127.0.0.1 with ``PEBBLE_VA_ALWAYS_VALID=1``, so it never
resolves the challenge; Route 53 is a moto server; certbot and its Route 53 plugin are the real ones. Asterisk's
CLI is a script that records what the agent asked of it (the adapter itself runs against a real Asterisk in
``tests/asterisk``).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cryptography import x509
from sip_trunk.agent.__main__ import main
from sip_trunk.agent.bootstrap import CERT_TIMER
from sip_trunk.agent.config import build_config
from sip_trunk.agent.releases import Releases
from sip_trunk_local.sipp import free_port
from support.certificates import TestCa
from support.first_boot import first_boot
from support.iam_eval import Request, evaluate
from support.iam_proof import HOST as HOST_ROLE
from support.iam_proof import host_names, principal_policies

pytestmark = pytest.mark.integration

HOST = "sip.example.com"
ZONE = "example.com"
REGION = "eu-west-1"
CERTBOT = Path(sys.executable).with_name("certbot")


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def pebble(test_ca: TestCa, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Pebble's ACME directory URL; its HTTPS certificate comes from the test CA."""
    binary = shutil.which("pebble")
    assert binary, "pebble is not installed (apt-get install pebble): see docs/TESTING.md"
    work = tmp_path_factory.mktemp("pebble")
    cert, key = test_ca.issue("localhost", days=30)
    port = free_port()
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{port}",
            "managementListenAddress": f"127.0.0.1:{free_port()}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": free_port(),
            "tlsPort": free_port(),
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (work / "pebble.json").write_text(json.dumps(config))
    env = {**os.environ, "PEBBLE_VA_ALWAYS_VALID": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_VA_NOSLEEP": "1"}
    log = (work / "pebble.log").open("wb")
    proc = subprocess.Popen([binary, "-config", str(work / "pebble.json")], stdout=log, stderr=log, env=env)
    url = f"https://localhost:{port}/dir"
    context = ssl.create_default_context(cafile=test_ca.ca_file)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url, context=context, timeout=2) as response:
                    assert "newOrder" in json.load(response)
                break
            except OSError:
                assert proc.poll() is None, (work / "pebble.log").read_text()
                assert time.monotonic() < deadline, "pebble did not answer in 20 s"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@pytest.fixture
def route53(moto_endpoint: str) -> Iterator[tuple[Any, str]]:
    client = boto3.client(
        "route53", region_name=REGION, endpoint_url=moto_endpoint, aws_access_key_id="t", aws_secret_access_key="t"
    )
    zone_id = client.create_hosted_zone(Name=ZONE, CallerReference=str(time.time_ns()))["HostedZone"]["Id"]
    yield client, zone_id.split("/")[-1]
    for rrset in client.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]:
        if rrset["Type"] not in ("SOA", "NS"):
            client.change_resource_record_sets(
                HostedZoneId=zone_id, ChangeBatch={"Changes": [{"Action": "DELETE", "ResourceRecordSet": rrset}]}
            )
    client.delete_hosted_zone(Id=zone_id)


@pytest.fixture
def changes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[dict[str, Any]]]]:
    """Every change batch the moto server applied (it runs in this process): (zone id, changes)."""
    from moto.route53.models import Route53Backend

    seen: list[tuple[str, list[dict[str, Any]]]] = []
    real = Route53Backend.change_resource_record_sets

    def record(self: Route53Backend, zoneid: str, change_list: list[dict[str, Any]]) -> None:
        seen.append((zoneid, change_list))
        real(self, zoneid, change_list)

    monkeypatch.setattr(Route53Backend, "change_resource_record_sets", record)
    return seen


@pytest.fixture
def host(
    tmp_path: Path,
    pebble: str,
    moto_endpoint: str,
    route53: tuple[Any, str],
    test_ca: TestCa,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """The agent's settings and environment as a host's agent.env would give them, and a recording asterisk."""
    assert CERTBOT.exists(), f"{CERTBOT}: certbot is a dev dependency (make dev)"
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
        "SIP_TRUNK_ACME_DIRECTORY": pebble,
        "SIP_TRUNK_ACME_HOSTED_ZONE_ID": route53[1],
        "SIP_TRUNK_CERTBOT_CMD": str(CERTBOT),
        "SIP_TRUNK_ASTERISK_CMD": str(fake),
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_ENDPOINT_URL_ROUTE_53": moto_endpoint,  # boto3's per-service endpoint, as certbot's plugin reads it
        "AWS_ENDPOINT_URL": moto_endpoint,
        "REQUESTS_CA_BUNDLE": str(test_ca.ca_file),  # certbot trusts pebble's HTTPS through its CA-bundle option
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return {"cert": keys / "asterisk.crt", "key": keys / "asterisk.key", "calls": calls, "conf": keys.parent}


def run_agent(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code = main(["renew-cert"])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), out + err


def key_lines(key_file: Path) -> list[str]:
    return [line for line in key_file.read_text().splitlines() if line and not line.startswith("-----")]


def san(cert_file: Path) -> list[str]:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_obtains_installs_and_reloads_then_does_nothing_while_fresh(
    host: dict[str, Any],
    route53: tuple[Any, str],
    changes: list[tuple[str, list[dict[str, Any]]]],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    code, result, output = run_agent(capsys)

    assert code == 0, output
    assert result["renewed"] is True
    assert result["reason"] == "missing"
    assert san(host["cert"]) == [HOST]
    # the key matches the certificate, is root:nogroup 0640, the certificate 0644
    cert = x509.load_pem_x509_certificate(host["cert"].read_bytes())
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(host["key"].read_bytes(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    key_stat, cert_stat = host["key"].stat(), host["cert"].stat()
    assert (stat.S_IMODE(key_stat.st_mode), key_stat.st_uid, key_stat.st_gid) == (0o640, 0, 65534)
    assert stat.S_IMODE(cert_stat.st_mode) == 0o644
    assert not [p.name for p in host["key"].parent.iterdir() if p.name.startswith(".")], "a temporary file is left"
    # the challenge went into the configured zone and was removed again
    zone_id, name = route53[1], f"_acme-challenge.{HOST}"
    actions = [
        (c["Action"], c["ResourceRecordSet"]["Name"].rstrip("."), c["ResourceRecordSet"]["Type"])
        for zid, batch in changes
        for c in batch
    ]
    assert actions == [("UPSERT", name, "TXT"), ("DELETE", name, "TXT")]
    assert {zid.split("/")[-1] for zid, _ in changes} == {zone_id}
    left = route53[0].list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    assert [r["Type"] for r in left if r["Name"].rstrip(".") == name] == []
    # Asterisk was asked to reload res_pjsip
    assert host["calls"].read_text().splitlines()[-1].endswith("-rx module reload res_pjsip.so")
    # the key never appears in what the agent printed or logged
    logged = output + caplog.text
    assert all(line not in logged for line in key_lines(host["key"]))

    # a second run while the certificate is fresh changes nothing: no ACME order, no DNS change, no reload
    inode = host["cert"].stat().st_ino
    changes.clear()
    code, result, output = run_agent(capsys)
    assert code == 0, output
    assert result == {"command": "renew-cert", "hostname": HOST, "ok": True, "reason": "valid", "renewed": False}
    assert host["cert"].stat().st_ino == inode
    assert changes == []
    assert len(host["calls"].read_text().splitlines()) == 1


def test_a_certificate_expiring_in_ten_days_is_renewed(
    host: dict[str, Any],
    test_ca: TestCa,
    changes: list[tuple[str, list[dict[str, Any]]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    old_cert, old_key = test_ca.issue(HOST, days=10)
    shutil.copy(old_cert, host["cert"])
    shutil.copy(old_key, host["key"])

    code, result, output = run_agent(capsys)

    assert code == 0, output
    assert result["renewed"] is True
    assert result["reason"] == "expiring"
    new = x509.load_pem_x509_certificate(host["cert"].read_bytes())
    assert new.issuer != test_ca.cert.subject, "still the old certificate"
    assert san(host["cert"]) == [HOST]
    assert host["key"].read_bytes() != old_key.read_bytes()
    assert [c["Action"] for _, batch in changes for c in batch] == ["UPSERT", "DELETE"]


def test_a_certificate_for_another_name_is_replaced(
    host: dict[str, Any], test_ca: TestCa, capsys: pytest.CaptureFixture[str]
) -> None:
    other_cert, other_key = test_ca.issue("other.example.com", days=80)
    shutil.copy(other_cert, host["cert"])
    shutil.copy(other_key, host["key"])

    code, result, output = run_agent(capsys)

    assert code == 0, output
    assert result["reason"] == "other-name"
    assert san(host["cert"]) == [HOST]


def test_a_host_name_outside_the_configured_zone_is_refused_before_any_order(
    host: dict[str, Any],
    changes: list[tuple[str, list[dict[str, Any]]]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIP_TRUNK_PUBLIC_HOSTNAME", "sip.example.org")

    code, result, _ = run_agent(capsys)

    assert code == 1
    assert "not in hosted zone" in result["error"]
    assert changes == []
    assert not host["cert"].exists()
    assert not host["calls"].exists()


def route53_request(zone_id: str, batch: list[dict[str, Any]]) -> Request:
    """ChangeResourceRecordSets as IAM authorizes it, with Route 53's record-set condition keys."""
    records = [c["ResourceRecordSet"] for c in batch]
    return Request(
        "route53:ChangeResourceRecordSets",
        f"arn:aws:route53:::hostedzone/{zone_id.split('/')[-1]}",
        {
            "route53:ChangeResourceRecordSetsActions": [c["Action"] for c in batch],
            "route53:ChangeResourceRecordSetsRecordTypes": [r["Type"] for r in records],
            "route53:ChangeResourceRecordSetsNormalizedRecordNames": [r["Name"].rstrip(".").lower() for r in records],
        },
    )


def test_the_host_role_allows_the_challenge_records_certbot_writes_and_nothing_else(
    host: dict[str, Any],
    route53: tuple[Any, str],
    changes: list[tuple[str, list[dict[str, Any]]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """certbot runs in its own process, out of the permission proof's sight: its change batches, as moto applied
    them, are evaluated against stacks/host.yaml's HostRole with the zone LaunchHost passes."""
    code, _, output = run_agent(capsys)
    assert code == 0, output
    zone_id = route53[1]
    names = host_names(build_config({}, {"SIP_TRUNK_ACME_HOSTED_ZONE_ID": zone_id}), REGION)
    role = principal_policies(HOST_ROLE, names)

    assert len(changes) == 2
    for zid, batch in changes:
        assert evaluate(role.policies, route53_request(zid, batch)), batch
    assert evaluate(role.policies, Request("route53:ListHostedZones", "*"))
    assert evaluate(role.policies, Request("route53:GetChange", "arn:aws:route53:::change/C0123456789"))
    # negative controls: the gateway's own A record, and a challenge in another zone
    a_record = [{"Action": "UPSERT", "ResourceRecordSet": {"Name": HOST, "Type": "A"}}]
    assert not evaluate(role.policies, route53_request(zone_id, a_record))
    assert not evaluate(role.policies, route53_request("Z0THERZONE", changes[0][1]))


def test_the_first_boot_obtains_the_certificate_before_the_config_that_loads_it(
    host: dict[str, Any],
    moto_endpoint: str,
    route53: tuple[Any, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """bootstrap with the two lines the host stack's user data writes for TLS (host name and zone): the real
    certbot obtains the certificate before the first config is applied, and the applied release carries it at the
    path the TLS transport names. Negative control: bootstrap without its certificate step reports no
    certificate and applies the config while none is in place (its reload records ``cert=no``)."""
    boot = first_boot(
        tmp_path, monkeypatch, moto_endpoint=moto_endpoint, region=REGION, stack="tlsboot", table="state",
        conf_dir=host["conf"], cert_file=host["cert"],
        tls_lines=f"SIP_TRUNK_PUBLIC_HOSTNAME={HOST}\nSIP_TRUNK_ACME_HOSTED_ZONE_ID={route53[1]}\n",  # TLS on
    )  # fmt: skip
    env_file, version, calls = boot.env_file, boot.version, boot.cli_calls

    code = main(["bootstrap", "--env-file", str(env_file)])

    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, out
    assert out["certificate"]["renewed"] is True, out
    assert out["apply"]["version"] == version, out
    applied = [line for line in calls.read_text().splitlines() if line.startswith("core reload")]
    assert applied, calls.read_text()
    assert all(line.endswith("|cert=yes") for line in applied), calls.read_text()
    # the live config is the applied release, and it carries the certificate and key at the transport's paths
    live = Releases(tmp_path / "releases", host["conf"])
    assert live.current_version() == version
    assert san(host["cert"]) == [HOST]
    assert host["key"].read_bytes().startswith(b"-----BEGIN")
    assert f"enable --now {CERT_TIMER}" in boot.host_commands.read_text()
