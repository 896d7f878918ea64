"""The Provision state machine, executed by moto with the real handlers."""

from __future__ import annotations

import json
import ssl

import pytest
from sip_trunk.elevenlabs import ElevenLabsClient
from support.certificates import TestCa
from support.moto_sfn import SipResponder, run, states_entered
from support.world import API_KEY, World

pytestmark = pytest.mark.statemachine


def test_provision_happy_path(machines):
    # Given an account with settings, secrets, an Elastic IP and a healthy host agent
    world = machines.world
    # When Provision runs from the console with an empty input
    result = run(machines.sfn, machines.provision, {})
    # Then it succeeds and the host stack serves the desired version behind the Elastic IP
    assert result["status"] == "SUCCEEDED", result
    output = json.loads(result["output"])
    version = output["version"]
    assert world.desired_version() == version
    assert world.holder() == output["stack"]["primary_instance_id"]
    assert output["verify"]["probe"]["reachable"] is True
    assert output["verify"]["probe"]["status_code"] == 200
    assert output["sync"]["action"] == "skipped"
    assert set(output["durations_s"]) >= {"ValidateSettings", "RenderConfig", "LaunchHost", "ApplyConfig"}
    deployment = world.item("deployment", "current")
    assert deployment["active_version"] == version
    notes = world.notifications()
    assert len(notes) == 1
    assert "succeeded" in notes[0]["subject"]


def test_provision_sets_the_roles_on_both_hosts(machines):
    # Given a fresh account (first deployment: the stack's primary slot is the primary)
    world = machines.world
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then after the stack is ready each host was told its role through Run Command, before the apply
    assert result["status"] == "SUCCEEDED", result
    stack = json.loads(result["output"])["stack"]
    primary, standby = stack["primary_instance_id"], stack["standby_instance_id"]
    peer = world.private_ip(primary)
    assert world.roles == {primary: ("primary", None), standby: ("standby", peer)}
    assert [(r["instance_id"], r["role"], r["sent"]) for r in stack["roles"]] == [
        (primary, "primary", True),
        (standby, "standby", True),
    ]
    commands = [c for _, c in world.sent]
    assert commands.index(f"sip-trunk-agent set-role --role standby --peer-address {peer}") < commands.index(
        f"sip-trunk-agent apply --version {json.loads(result['output'])['version']}"
    )
    # And the notification names the roles
    assert f"{standby} standby watching {peer}" in world.notifications()[0]["message"]


def test_config_only_change_does_not_touch_the_host_stack(machines):
    # Given a deployed version
    world = machines.world
    first = run(machines.sfn, machines.provision, {})
    assert first["status"] == "SUCCEEDED", first
    first_out = json.loads(first["output"])
    hosts = {first_out["stack"]["primary_instance_id"], first_out["stack"]["standby_instance_id"]}
    events_before = world.stack_events()
    world.notifications()
    # When only the settings change (a new config version) and Provision runs again
    world.put_settings(phone_number="+14155550199")
    second = run(machines.sfn, machines.provision, {})
    # Then the host stack is not updated (ConfigVersion keeps its launch value: no user-data change, no
    # stop/start), the same hosts serve, and they got the new version through Run Command
    assert second["status"] == "SUCCEEDED", second
    out = json.loads(second["output"])
    assert out["version"] != first_out["version"]
    assert machines.harness.calls("launch_host")[-1].result["operation"] == "unchanged"
    assert world.stack_events() == events_before
    assert world.stack_parameters()["ConfigVersion"] == first_out["version"]
    assert {out["stack"]["primary_instance_id"], out["stack"]["standby_instance_id"]} == hosts
    applied = {i for i, c in world.sent if c == f"sip-trunk-agent apply --version {out['version']}"}
    assert applied == hosts
    assert world.desired_version() == out["version"]
    assert world.item("deployment", "current")["active_version"] == out["version"]


def test_an_image_rollout_replaces_the_standby_which_then_watches_the_primary(machines):
    # Given a deployment, and a new image published under the image parameter's name
    world = machines.world
    first = json.loads(run(machines.sfn, machines.provision, {})["output"])["stack"]
    primary, old_standby = first["primary_instance_id"], first["standby_instance_id"]
    World.publish_image("ami-0bbbbbbbbbbbbbbbb")
    # When a Provision runs without asking for the rollout, then one that asks for it
    plain = run(machines.sfn, machines.provision, {"reason": "after an image build"})
    assert machines.harness.calls("launch_host")[-1].result["image"]["pending"] == ["primary", "standby"]
    world.expected_interruptions = {"StandbyInstance"}
    result = run(machines.sfn, machines.provision, {"reason": "new image", "rollout_image": True})
    # Then the first changed nothing; the second replaced the standby only, which got its role with the
    # primary's address (its user data names none), the current version, and passed verification
    assert plain["status"] == "SUCCEEDED", plain
    assert result["status"] == "SUCCEEDED", result
    out = json.loads(result["output"])
    assert out["stack"]["primary_instance_id"] == primary
    new_standby = out["stack"]["standby_instance_id"]
    assert new_standby != old_standby
    assert world.roles[new_standby] == ("standby", world.private_ip(primary))
    assert f"sip-trunk-agent apply --version {out['version']}" in [c for i, c in world.sent if i == new_standby]
    assert world.holder() == primary
    assert machines.harness.calls("launch_host")[-1].result["image"]["pending"] == ["primary"]
    assert [(i.resource, i.impact) for i in world.interruptions()] == [("StandbyInstance", "replacement")]


def _failure(machines, result):
    assert result["status"] == "FAILED", result
    notes = machines.world.notifications()
    assert len(notes) == 1, notes
    return notes[0]


def test_rerun_with_unchanged_settings_changes_nothing(machines):
    # Given a first successful provision
    world = machines.world
    first = run(machines.sfn, machines.provision, {})
    assert first["status"] == "SUCCEEDED"
    world.notifications()
    params_before = world.ssm_versions()
    commands_before = len(machines.harness.calls("apply_config"))
    sent_before = len(world.sent_commands)
    # When Provision runs again with the same settings
    second = run(machines.sfn, machines.provision, {})
    # Then it succeeds without publishing, updating the host stack, sending an apply command or moving the
    # address (the roles are sent again: set-role is idempotent)
    assert second["status"] == "SUCCEEDED", second
    assert machines.harness.calls("launch_host")[-1].result["operation"] == "unchanged"
    assert not any("apply" in c for c in world.sent_commands[sent_before:])
    out = json.loads(second["output"])
    assert out["version"] == json.loads(first["output"])["version"]
    assert world.ssm_versions() == params_before
    apply = machines.harness.calls("apply_config")[commands_before:]
    assert [c.result["skipped"] for c in apply] == [True]
    assert machines.harness.calls("render_config")[-1].result["published"] is False
    assert "no change" in world.notifications()[0]["message"]


def test_invalid_settings_fail_at_validate_and_change_nothing(machines):
    # Given a settings document with an invalid phone number
    world = machines.world
    world.put_settings(phone_number="4155550100")
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then it fails at ValidateSettings, names the field, and no stack or config was created
    note = _failure(machines, result)
    assert "ValidateSettings" in note["subject"]
    assert "SettingsInvalid" in note["message"]
    assert "phone_number" in note["message"]
    assert world.desired_version() is None
    assert machines.harness.calls("launch_host") == []


def test_stack_failure_restores_the_desired_version(machines):
    # Given a deployed version, then a host template CloudFormation refuses
    world = machines.world
    assert run(machines.sfn, machines.provision, {})["status"] == "SUCCEEDED"
    world.notifications()
    previous = world.desired_version()
    world.put_settings(phone_number="+14155550199")
    world.break_host_template()
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then LaunchHost fails, the pointer is back on the previous version, and the notification says so
    note = _failure(machines, result)
    assert "LaunchHost" in note["subject"]
    assert "StackFailed" in note["message"]
    assert world.desired_version() == previous
    assert f"restored to {previous}" in note["message"]


def test_apply_failure_rolls_hosts_back(machines, monkeypatch):
    # Given a deployed version, and hosts whose agent fails the next apply
    world = machines.world
    assert run(machines.sfn, machines.provision, {})["status"] == "SUCCEEDED"
    world.notifications()
    previous = world.desired_version()
    world.put_settings(phone_number="+14155550199")
    world.fail_commands(monkeypatch, "sip-trunk-agent apply: asterisk refused the new pjsip.conf")
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then CheckApply fails; pointer restored and the hosts are told to re-apply the previous version
    note = _failure(machines, result)
    assert "CheckApply" in note["subject"]
    assert "ApplyFailed" in note["message"]
    assert "refused the new pjsip.conf" in note["message"]
    assert world.desired_version() == previous
    assert world.sent_commands[-1] == f"sip-trunk-agent apply --version {previous}"


def test_verification_that_times_out(machines):
    # Given hosts whose agent never reports the new version
    world = machines.world
    world.agent.healthy = False
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then VerifyTrunk retries with backoff (recorded, not slept) until the deadline, then fails
    note = _failure(machines, result)
    assert "VerifyTrunk" in note["subject"]
    assert "VerificationTimedOut" in note["message"]
    errors = [c.error for c in machines.harness.calls("verify_trunk")]
    assert errors[-1] == "VerificationTimedOut"
    assert set(errors[:-1]) == {"TrunkNotVerified"}
    assert machines.harness.retry_sleeps[:3] == [5, 10, 20]
    assert world.desired_version() is None  # first deployment: the pointer is cleared


def test_verification_retry_that_succeeds(machines):
    # Given an agent that reports 12 s after the apply command
    machines.world.agent.report_delay_s = 12
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then VerifyTrunk fails at first, is retried, and the execution succeeds
    assert result["status"] == "SUCCEEDED", result
    errors = [c.error for c in machines.harness.calls("verify_trunk")]
    assert errors[0] == "TrunkNotVerified"
    assert errors[-1] is None
    assert states_entered(machines.sfn, result["executionArn"]).count("VerifyTrunk") == 1


def test_sip_not_answering_fails_verification(machines):
    # Given a host that reports the version but whose SIP port does not answer on the Elastic IP
    machines.world.down.add("*")
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then verification names the address
    note = _failure(machines, result)
    assert "does not answer SIP OPTIONS" in note["message"]


def test_elevenlabs_number_is_created_then_unchanged(machines_with_api, elevenlabs):
    # Given an ElevenLabs API key and a number not imported yet
    machines = machines_with_api
    # When Provision runs twice
    first = run(machines.sfn, machines.provision, {})
    second = run(machines.sfn, machines.provision, {})
    # Then the number is created pointing at the Elastic IP, and the second run changes nothing
    assert first["status"] == "SUCCEEDED", first
    assert json.loads(first["output"])["sync"]["action"] == "created"
    assert json.loads(second["output"])["sync"]["action"] == "unchanged"
    patches = [r for r in elevenlabs.requests if r.method in {"POST", "PATCH"}]
    assert len(patches) == 1
    from sip_trunk.elevenlabs import ElevenLabsClient
    from support.world import API_KEY, INBOUND_PASSWORD

    number = ElevenLabsClient(API_KEY, elevenlabs.url).find_by_number("+14155550100")
    assert number.outbound.address == machines.world.address
    assert number.outbound.transport == "tcp"
    assert elevenlabs.stored_password(number.phone_number_id) == INBOUND_PASSWORD


def _fail_when_syncing(machines, elevenlabs, count):
    """Make ElevenLabs fail `count` requests from the first SyncElevenLabs invocation on."""
    armed = []

    def arm(name, event):
        if name == "sync_elevenlabs" and not armed:
            armed.append(True)
            elevenlabs.fail_next(count, 503)

    machines.harness.before.append(arm)


def test_elevenlabs_outage_retry_succeeds(machines_with_api, elevenlabs):
    # Given ElevenLabs answering 503 to the first three requests (the client's own retries give up)
    machines = machines_with_api
    _fail_when_syncing(machines, elevenlabs, 3)
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then the ASL retries SyncElevenLabs after its back-off and the execution succeeds
    assert result["status"] == "SUCCEEDED", result
    errors = [c.error for c in machines.harness.calls("sync_elevenlabs")]
    assert errors == ["ElevenLabsUnavailable", None]
    assert 10 in machines.harness.retry_sleeps


def test_elevenlabs_outage_retries_exhausted(machines_with_api, elevenlabs):
    # Given ElevenLabs answering 503 to everything
    machines = machines_with_api
    _fail_when_syncing(machines, elevenlabs, 1000)
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then SyncElevenLabs is tried 1 + 3 times and the failure notification names it
    note = _failure(machines, result)
    assert "SyncElevenLabs" in note["subject"]
    assert "ElevenLabsUnavailable" in note["message"]
    assert [c.error for c in machines.harness.calls("sync_elevenlabs")] == ["ElevenLabsUnavailable"] * 4


def test_elevenlabs_rejected_key_is_fatal(machines_with_api, elevenlabs, monkeypatch):
    # Given a wrong API key stored in Secrets Manager
    machines = machines_with_api
    machines.world.put_api_key("sk_wrong_key_000000000")
    # When Provision runs
    result = run(machines.sfn, machines.provision, {})
    # Then the failure is not retried and the notification names the auth error
    note = _failure(machines, result)
    assert "ElevenLabsAuthError" in note["message"]


# --- TLS: the certificate ElevenLabs checks, and the number pointed at its name ----------------------
CERT_HOST = "sip.gateway.example"


def _tls_gateway(machines, monkeypatch, cert) -> SipResponder:
    """The Elastic IP and CERT_HOST both reach a SIP responder on 127.0.0.1 that speaks TLS with `cert`."""
    world = machines.world
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*cert)
    responder = SipResponder(world.answering, tls=context)
    monkeypatch.setenv("PROBE_TARGETS", json.dumps({world.address: responder.target, CERT_HOST: responder.target}))
    world.put_settings(transport="tls", network={"public_hostname": CERT_HOST}, tls={"enabled": True})
    return responder


def test_provision_over_tls_checks_the_certificate_and_points_the_number_at_its_name(
    machines_with_api, elevenlabs, monkeypatch, tmp_path
):
    # Given transport tls, and a gateway certificate for its host name from a CA the system store trusts
    machines = machines_with_api
    ca = TestCa(tmp_path / "ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))
    responder = _tls_gateway(machines, monkeypatch, ca.issue(CERT_HOST, days=60))
    # When Provision runs
    try:
        result = run(machines.sfn, machines.provision, {})
    finally:
        responder.close()
    # Then VerifyTrunk reports the certificate, and the number dials its name with the name as a remote domain
    assert result["status"] == "SUCCEEDED", result
    output = json.loads(result["output"])
    cert = output["verify"]["certificate"]
    assert (cert["checked"], cert["verified"], cert["subject_names"], cert["issuer"]) == (
        True,
        True,
        [CERT_HOST],
        "Test Root CA",
    )
    assert cert["days_left"] in (59, 60)
    number = ElevenLabsClient(API_KEY, elevenlabs.url).find_by_number("+14155550100")
    assert number is not None
    assert number.outbound is not None
    assert number.inbound_trunk is not None
    assert (number.outbound.address, number.outbound.transport) == (CERT_HOST, "tls")
    assert number.inbound_trunk.remote_domains == [CERT_HOST]


def test_provision_over_tls_with_an_untrusted_certificate_fails_verification(
    machines_with_api, elevenlabs, monkeypatch, tmp_path
):
    # Given a gateway certificate from a CA nobody trusts
    machines = machines_with_api
    responder = _tls_gateway(machines, monkeypatch, TestCa(tmp_path / "impostor", name="Impostor CA").issue(CERT_HOST))
    # When Provision runs
    try:
        result = run(machines.sfn, machines.provision, {})
    finally:
        responder.close()
    # Then VerifyTrunk retries, gives up, and the notification says why; the number is never touched
    note = _failure(machines, result)
    assert "VerificationTimedOut" in note["message"]
    assert f"the certificate on {CERT_HOST}:5061 is refused" in note["message"]
    assert {c.error for c in machines.harness.calls("verify_trunk")} == {"TrunkNotVerified", "VerificationTimedOut"}
    assert [r for r in elevenlabs.requests if r.method in {"POST", "PATCH"}] == []
