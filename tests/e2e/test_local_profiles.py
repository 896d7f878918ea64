"""Every samconfig.toml profile passes Provision in local mode: `sip-trunk local up --config-env NAME` creates the
root stack with the profile's stack name and parameter overrides (the template builds the settings from them),
the real Provision state machine provisions the hosts the profile asks for, and the carrier's call reaches the
agent on the profile's phone number. A profile the template refuses (a `Rules` assertion) is refused by local
mode with CloudFormation's own message, before anything is created.

One profile per test (each is a full `local up`, tens of seconds)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sip_trunk_local.orchestrator import read_events
from support.deploy import DAY_ONE_ANSWERS, SAMCONFIG, load_template, parameter_problems, parameter_values, profiles

pytestmark = pytest.mark.e2e

CLI = [sys.executable, "-m", "sip_trunk.cli"]


def sip_trunk(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False)


def deployed(template: dict[str, Any], env: str, path: Path = SAMCONFIG) -> tuple[str, dict[str, str]]:
    """The stack name and parameters `sam deploy --config-env env` sends (--guided's answers where it has none)."""
    profile = profiles(path)[env]
    parameters = dict(profile["parameters"])
    for name, spec in template["Parameters"].items():
        if "Default" not in spec:
            parameters.setdefault(name, DAY_ONE_ANSWERS[name])
    return str(profile["stack_name"]), parameters


def ready_summary(run_dir: Path) -> dict[str, Any]:
    events, _ = read_events(run_dir)
    ready = [e for e in events if e["kind"] == "ready"]
    assert ready, events[-5:]
    summary: dict[str, Any] = ready[0]["summary"]
    return summary


@pytest.mark.parametrize("env", sorted(profiles()))
def test_samconfig_profile_passes_provision_in_local_mode(env: str, local_run_dir: Callable[[str], Path]) -> None:
    # Given a profile that CloudFormation accepts (the answers `--guided` asks for where it leaves one open)
    template = load_template()
    stack, parameters = deployed(template, env)
    assert parameter_problems(template, parameters) == []
    high_availability = parameter_values(template, parameters)["HighAvailability"] == "true"
    run_dir = local_run_dir(env)

    # When local mode deploys it
    up = sip_trunk("local", "up", "--config-env", env, "--run-dir", str(run_dir), timeout=900)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert f"profile {env}" in up.stdout, up.stdout[:500]

    # Then the real Provision state machine provisioned the hosts the profile asks for
    summary = ready_summary(run_dir)
    assert "Provisioned" in summary["provision"]["states"], summary["provision"]
    assert summary["provision"]["version"].startswith("v")
    roles = sorted(h["role"] for h in summary["hosts"])
    assert roles == (["primary", "standby"] if high_availability else ["primary"]), summary["hosts"]
    # under the profile's stack name
    status = json.loads(sip_trunk("local", "status", "--run-dir", str(run_dir), timeout=60).stdout)
    assert status["stack"] == stack
    # and the carrier's call to the profile's number reached the agent, audio both ways
    call = summary["call"]
    assert call["did"] == parameters["ElevenLabsPhoneNumber"], call
    assert call["ok"], call
    assert call["audio_both_ways"], call


def test_a_profile_the_template_refuses_is_refused_in_local_mode(
    tmp_path: Path, local_run_dir: Callable[[str], Path]
) -> None:
    # Given a profile with TLS on but no hosted zone or DNS name, which the rule TlsNeedsHostnameAndCertificate refuses
    samconfig = tmp_path / "samconfig.toml"
    overrides = [*(f"{k}={v}" for k, v in profiles()["prod"]["parameters"].items()), "EnableTls=true",
                 "SipTransport=tls"]  # fmt: skip
    samconfig.write_text(
        SAMCONFIG.read_text()
        + '\n[tls.global.parameters]\nstack_name = "aws-sip-trunk-tls"\n\n[tls.deploy.parameters]\n'
        + f"parameter_overrides = {json.dumps(overrides)}\n"
    )
    template = load_template()
    _, parameters = deployed(template, "tls", samconfig)
    refused = parameter_problems(template, parameters)
    assert [p.split(":")[0] for p in refused] == ["rule TlsNeedsHostnameAndCertificate"]
    run_dir = local_run_dir("tls")

    # When local mode is asked to deploy it
    up = sip_trunk("local", "up", "--config-env", "tls", "--samconfig", str(samconfig), "--run-dir", str(run_dir))

    # Then it is refused with CloudFormation's message, and nothing was provisioned
    assert up.returncode == 1, up.stdout[-2000:] + up.stderr[-2000:]
    message = " ".join(up.stderr.split())
    assert "CloudFormation refuses stack aws-sip-trunk-tls" in message, up.stderr
    assert " ".join(refused[0].split()) in message, up.stderr
    events, _ = read_events(run_dir)
    started = [e["step"] for e in events if e.get("kind") == "step" and e["status"] == "start"]
    assert started == ["moto", "control-plane"], started
    failed = [e for e in events if e.get("kind") == "failed"]
    assert failed, events[-3:]
    assert failed[0]["problems"] == refused, failed


def test_an_unknown_profile_is_a_usage_error(local_run_dir: Callable[[str], Path]) -> None:
    run_dir = local_run_dir("unknown")
    up = sip_trunk("local", "up", "--config-env", "no-such-profile", "--run-dir", str(run_dir), timeout=60)
    assert up.returncode == 2, up.stdout + up.stderr
    assert "no profile 'no-such-profile'" in " ".join(up.stderr.split()), up.stderr
    assert not run_dir.exists()
