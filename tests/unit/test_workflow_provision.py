"""The Provision workflow's steps (`sip_trunk.workflows.provision`) over in-memory fakes of the ports."""

from __future__ import annotations

from typing import Any

import pytest
from sip_trunk.errors import (
    ApplyFailed,
    SettingsInvalid,
    StackFailed,
    StackTimedOut,
    TrunkNotVerified,
    VerificationTimedOut,
)
from sip_trunk.sip import CertificateReport, CertificateTarget
from sip_trunk.workflows import clock as workflow_clock
from sip_trunk.workflows import provision
from sip_trunk.workflows.common import ExecutionRef
from sip_trunk.workflows.ports import StackInfo
from sip_trunk.workflows.state import Deployment
from support.fakes import (
    ALLOCATION,
    API_KEY,
    PRIMARY,
    PRIVATE_IPS,
    PUBLIC_IP,
    STANDBY,
    FakeCertificates,
    FakeSettings,
    FakeWorld,
    ManualClock,
    host_outputs,
    settings_document,
    workflow_config,
)

pytestmark = pytest.mark.unit

EXECUTION = ExecutionRef(name="provision-1", arn="arn:aws:states:us-east-1:123456789012:execution:p:provision-1")
VERSION = "v0123456789abcdef"
PREVIOUS = "vfedcba9876543210"
HOST_STACK = "sip-test-host"
PROBED = "127.0.0.1"
"""Where the test config's PROBE_TARGETS sends probes of the Elastic IP."""


def render(version: str = VERSION, previous: str | None = None) -> provision.RenderResult:
    return provision.RenderResult(
        version=version, previous_version=previous, public_address=PUBLIC_IP, published=True, files=10
    )


def ready_stack(primary: str = PRIMARY, standby: str | None = STANDBY) -> provision.StackCheck:
    return provision.StackCheck(
        ready=True, status="CREATE_COMPLETE", primary_instance_id=primary, standby_instance_id=standby
    )


# --- ValidateSettings ------------------------------------------------------------------------------


def test_validate_reports_the_settings_without_secrets() -> None:
    world = FakeWorld()
    result = provision.validate_settings(world.deps)
    assert (result.transport, result.sip_port, result.secrets, result.elevenlabs_api) == ("tcp", 5060, 2, False)
    assert len(result.settings_sha256) == 64


def test_validate_names_a_missing_secret() -> None:
    # Given the inbound password's secret does not exist
    world = FakeWorld()
    del world.secrets.values["secretsmanager:sip-test/sip/inbound-password"]
    # When validated, Then SettingsInvalid names the reference (never a value)
    with pytest.raises(SettingsInvalid, match="secretsmanager:sip-test/sip/inbound-password"):
        provision.validate_settings(world.deps)


def test_validate_refuses_an_invalid_document() -> None:
    world = FakeWorld(settings=FakeSettings(settings_document(transport="carrier-pigeon")))
    with pytest.raises(SettingsInvalid):
        provision.validate_settings(world.deps)


# --- RenderConfig ----------------------------------------------------------------------------------


def test_first_render_publishes_and_sets_the_desired_version() -> None:
    world = FakeWorld()
    result = provision.render_config(world.deps)
    assert result.published
    assert result.previous_version is None
    assert result.public_address == PUBLIC_IP  # the Elastic IP: the settings name no public address
    assert world.config_store.published == [result.version]
    assert world.config_store.desired == result.version


def test_rendering_unchanged_settings_again_publishes_nothing() -> None:
    world = FakeWorld()
    first = provision.render_config(world.deps)
    again = provision.render_config(world.deps)
    assert again.version == first.version
    assert not again.published
    assert again.previous_version == first.version
    assert world.config_store.published == [first.version]


# --- LaunchHost ------------------------------------------------------------------------------------


def test_launch_creates_the_stack_with_the_config_version(clock: ManualClock) -> None:
    world = FakeWorld()
    result = provision.launch_host(world.deps, provision.LaunchInput(execution=EXECUTION, render=render()))
    assert (result.stack_name, result.operation) == (HOST_STACK, "created")
    assert result.deadline == clock.now() + world.config.stack_timeout_s
    assert world.stacks.calls == [("create", HOST_STACK, {"ConfigVersion": VERSION}, ())]


def test_launch_passes_the_root_stacks_host_parameters() -> None:
    world = FakeWorld()
    world.config = world.config.model_copy(update={"host_parameters_parameter": "/sip-test/host-parameters"})
    world.parameters.values["/sip-test/host-parameters"] = {"ImageId": "ami-1", "ConfigVersion": "ignored"}
    provision.launch_host(world.deps, provision.LaunchInput(execution=EXECUTION, render=render()))
    assert world.stacks.calls[0][2] == {"ImageId": "ami-1", "ConfigVersion": VERSION}


def test_launch_keeps_the_deployed_config_version_on_update() -> None:
    # Given a host stack created with an older version
    world = FakeWorld()
    world.stacks.stacks[HOST_STACK] = StackInfo(
        name=HOST_STACK, status="CREATE_COMPLETE", parameters={"ConfigVersion": PREVIOUS}
    )
    # When a new version is launched
    result = provision.launch_host(world.deps, provision.LaunchInput(execution=EXECUTION, render=render()))
    # Then the update keeps the previous value, so nothing changes and no host restarts
    assert result.operation == "unchanged"
    assert world.stacks.calls == [("update", HOST_STACK, {}, ("ConfigVersion",))]


# --- LaunchHost: the image ----------------------------------------------------------------------------

IMAGE_PARAMETER = "/images/asterisk"
OLD_AMI, NEW_AMI = "ami-0aaaaaaaaaaaaaaaa", "ami-0bbbbbbbbbbbbbbbb"
HOST_PARAMETERS = "/sip-test/host-parameters"


def image_world(ami: str = OLD_AMI) -> FakeWorld:
    """The root stack's document names the image pipeline's parameter, which holds `ami` now."""
    world = FakeWorld()
    world.config = world.config.model_copy(update={"host_parameters_parameter": HOST_PARAMETERS})
    world.parameters.values[HOST_PARAMETERS] = {
        "RootStackName": "sip-test",
        "ImageSource": "ssm-parameter",
        "Image": IMAGE_PARAMETER,
        "LayerVersionArn": "arn:aws:lambda:us-east-1:123456789012:layer:sip-test-sip-trunk:7",
    }
    world.parameters.values[IMAGE_PARAMETER] = ami
    return world


def deployed(world: FakeWorld, primary_image: str, standby_image: str, serving: str = PRIMARY) -> None:
    """A ready high-availability host stack with these slot images; `serving` holds the primary role."""
    world.stacks.stacks[HOST_STACK] = StackInfo(
        name=HOST_STACK,
        status="UPDATE_COMPLETE",
        outputs=host_outputs(),
        parameters={
            "RootStackName": "sip-test",
            "ConfigVersion": PREVIOUS,
            "PrimaryImageId": primary_image,
            "StandbyImageId": standby_image,
        },
    )
    other = STANDBY if serving == PRIMARY else PRIMARY
    world.state.deployment = Deployment(primary_instance_id=serving, standby_instance_id=other)


def launch(world: FakeWorld, **request: Any) -> provision.LaunchResult:
    return provision.launch_host(
        world.deps,
        provision.LaunchInput(execution=EXECUTION, render=render(), request=provision.ProvisionRequest(**request)),
    )


def test_a_create_resolves_the_image_parameter_and_puts_the_ami_on_both_slots() -> None:
    world = image_world()
    result = launch(world)
    ((operation, _, params, _),) = world.stacks.calls
    assert operation == "create"
    assert (params["PrimaryImageId"], params["StandbyImageId"]) == (OLD_AMI, OLD_AMI)
    # the reference and the layer's ARN are not host stack parameters (a code deploy changes no parameter)
    assert not {"ImageSource", "Image", "LayerVersionArn"} & set(params)
    assert result.image is not None
    assert result.image.target == OLD_AMI


def test_a_new_image_under_the_same_parameter_replaces_nothing_without_a_rollout() -> None:
    # Given both slots on the old image, and the pipeline has since written a new one to the same parameter
    world = image_world(NEW_AMI)
    deployed(world, OLD_AMI, OLD_AMI)
    # When a Provision runs without asking for a rollout
    result = launch(world)
    # Then each slot keeps its image (an image change replaces an instance) and the new one is pending
    ((_, _, params, _),) = world.stacks.calls
    assert (params["PrimaryImageId"], params["StandbyImageId"]) == (OLD_AMI, OLD_AMI)
    assert result.operation == "unchanged"
    assert result.image is not None
    assert (result.image.target, result.image.replaced, result.image.pending) == (NEW_AMI, [], ["primary", "standby"])


def test_a_rollout_replaces_the_standbys_slot_then_after_a_failover_the_other() -> None:
    # Given both slots on the old image, the primary slot serving, and a new image in the parameter
    world = image_world(NEW_AMI)
    deployed(world, OLD_AMI, OLD_AMI, serving=PRIMARY)
    # When a Provision asks for the rollout
    first = launch(world, rollout_image=True)
    # Then only the standby's slot gets the new image: the serving host keeps running
    assert world.stacks.calls[-1][2]["StandbyImageId"] == NEW_AMI
    assert world.stacks.calls[-1][2]["PrimaryImageId"] == OLD_AMI
    assert first.image is not None
    assert (first.image.replaced, first.image.pending) == (["standby"], ["primary"])

    # Given a failover made the standby slot's (new) host the primary
    deployed(world, OLD_AMI, NEW_AMI, serving=STANDBY)
    # When the rollout is asked for again
    second = launch(world, rollout_image=True)
    # Then the primary slot, now the standby, gets it, and nothing is left
    params = world.stacks.calls[-1][2]
    assert (params["PrimaryImageId"], params["StandbyImageId"]) == (NEW_AMI, NEW_AMI)
    assert second.image is not None
    assert (second.image.replaced, second.image.pending) == (["primary"], [])


def test_a_rollout_never_replaces_the_serving_host_while_there_is_a_standby() -> None:
    # Given the standby slot already on the new image and the primary slot still serving the old one
    world = image_world(NEW_AMI)
    deployed(world, OLD_AMI, NEW_AMI, serving=PRIMARY)
    result = launch(world, rollout_image=True)
    # Then nothing is replaced: the primary slot waits for a failover
    assert result.operation == "unchanged"
    assert result.image is not None
    assert (result.image.replaced, result.image.pending) == ([], ["primary"])


def test_a_rollout_on_a_single_host_replaces_it() -> None:
    world = image_world(NEW_AMI)
    world.stacks.stacks[HOST_STACK] = StackInfo(
        name=HOST_STACK,
        status="UPDATE_COMPLETE",
        outputs=host_outputs(standby=None),
        parameters={"ConfigVersion": PREVIOUS, "PrimaryImageId": OLD_AMI, "StandbyImageId": OLD_AMI},
    )
    result = launch(world, rollout_image=True)
    assert world.stacks.calls[-1][2]["PrimaryImageId"] == NEW_AMI
    assert result.image is not None
    assert (result.image.replaced, result.image.pending) == (["primary"], [])


def test_an_image_parameter_that_holds_no_ami_id_is_refused() -> None:
    world = image_world("not-an-image")
    with pytest.raises(SettingsInvalid, match="not an AMI id"):
        launch(world)
    assert world.stacks.calls == []


def test_launch_while_the_stack_is_busy_waits() -> None:
    world = FakeWorld()
    world.stacks.stacks[HOST_STACK] = StackInfo(name=HOST_STACK, status="UPDATE_IN_PROGRESS")
    result = provision.launch_host(world.deps, provision.LaunchInput(execution=EXECUTION, render=render()))
    assert result.operation == "in_progress"
    assert world.stacks.calls == []


def test_launch_refuses_a_rolled_back_stack() -> None:
    world = FakeWorld()
    world.stacks.stacks[HOST_STACK] = StackInfo(name=HOST_STACK, status="ROLLBACK_COMPLETE", reason="boom")
    with pytest.raises(StackFailed, match="ROLLBACK_COMPLETE"):
        provision.launch_host(world.deps, provision.LaunchInput(execution=EXECUTION, render=render()))


def test_launch_reports_a_refused_template_as_stack_failed() -> None:
    world = FakeWorld()
    world.stacks.rejects = "Template format error"
    with pytest.raises(StackFailed, match="cannot create sip-test-host: ValidationError: Template format error"):
        provision.launch_host(world.deps, provision.LaunchInput(execution=EXECUTION, render=render()))


def test_launch_without_a_template_url_is_invalid_settings() -> None:
    world = FakeWorld()
    world.config = world.config.model_copy(update={"host_template_url": ""})
    with pytest.raises(SettingsInvalid, match="HOST_TEMPLATE_URL"):
        provision.launch_host(world.deps, provision.LaunchInput(execution=EXECUTION, render=render()))


# --- CheckHostStack --------------------------------------------------------------------------------


def check_input(deadline: float) -> provision.StackCheckInput:
    launch = provision.LaunchResult(stack_name=HOST_STACK, operation="created", deadline=deadline)
    return provision.StackCheckInput(execution=EXECUTION, launch=launch)


def test_check_stack_polls_until_complete(clock: ManualClock) -> None:
    world = FakeWorld()
    world.stacks.stacks[HOST_STACK] = StackInfo(name=HOST_STACK, status="CREATE_IN_PROGRESS")
    result = provision.check_host_stack(world.deps, check_input(clock.now() + 60))
    assert (result.ready, result.status) == (False, "CREATE_IN_PROGRESS")
    clock.advance(61)
    with pytest.raises(StackTimedOut):
        provision.check_host_stack(world.deps, check_input(clock.now() - 1))


def test_ready_stack_gets_the_address_and_both_roles(clock: ManualClock) -> None:
    # Given the host stack finished creating
    world = FakeWorld()
    world.stacks.stacks[HOST_STACK] = StackInfo(name=HOST_STACK, status="CREATE_COMPLETE", outputs=host_outputs())
    # When checked
    result = provision.check_host_stack(world.deps, check_input(clock.now() + 60))
    # Then the Elastic IP is on the primary, which is told its role, and the standby watches it
    assert result.ready
    assert result.address_associated
    assert world.ec2.associations == [(ALLOCATION, PRIMARY)]
    assert world.commands.lines() == [
        "sip-trunk-agent set-role --role primary",
        f"sip-trunk-agent set-role --role standby --peer-address {PRIVATE_IPS[PRIMARY]}",
    ]
    assert [(r.instance_id, r.sent) for r in result.roles] == [(PRIMARY, True), (STANDBY, True)]


def test_ready_stack_keeps_the_roles_a_failover_swapped(clock: ManualClock) -> None:
    # Given a failover made the stack's standby slot the primary
    world = FakeWorld()
    world.deployed(primary=STANDBY, standby=PRIMARY)
    world.stacks.stacks[HOST_STACK] = StackInfo(name=HOST_STACK, status="UPDATE_COMPLETE", outputs=host_outputs())
    # When checked
    result = provision.check_host_stack(world.deps, check_input(clock.now() + 60))
    # Then the table's primary stays primary and the address is not moved
    assert (result.primary_instance_id, result.standby_instance_id) == (STANDBY, PRIMARY)
    assert not result.address_associated
    assert world.ec2.associations == []
    assert world.commands.sent[1].commands == (
        f"sip-trunk-agent set-role --role standby --peer-address {PRIVATE_IPS[STANDBY]}",
    )


def test_a_host_run_command_cannot_reach_is_reported_not_raised(clock: ManualClock) -> None:
    world = FakeWorld()
    world.stacks.stacks[HOST_STACK] = StackInfo(name=HOST_STACK, status="CREATE_COMPLETE", outputs=host_outputs())
    world.commands.unreachable.add(STANDBY)
    result = provision.check_host_stack(world.deps, check_input(clock.now() + 60))
    standby = result.roles[1]
    assert (standby.instance_id, standby.sent) == (STANDBY, False)
    assert standby.detail.startswith("HostUnreachable")


def test_failed_stack_is_stack_failed(clock: ManualClock) -> None:
    world = FakeWorld()
    world.stacks.stacks[HOST_STACK] = StackInfo(name=HOST_STACK, status="UPDATE_ROLLBACK_COMPLETE", reason="bad AMI")
    with pytest.raises(StackFailed, match="bad AMI"):
        provision.check_host_stack(world.deps, check_input(clock.now() + 60))


# --- ApplyConfig / CheckApply ----------------------------------------------------------------------


def test_apply_is_skipped_when_every_host_runs_the_version(clock: ManualClock) -> None:
    world = FakeWorld()
    for host in (PRIMARY, STANDBY):
        world.state.beat(host, clock.now(), VERSION)
    result = provision.apply_config(world.deps, provision.ApplyInput(render=render(), stack=ready_stack()))
    assert result.skipped
    assert result.command_id is None
    assert world.commands.sent == []


def test_apply_sends_the_version_to_both_hosts(clock: ManualClock) -> None:
    # Given the standby still runs the previous version
    world = FakeWorld()
    world.state.beat(PRIMARY, clock.now(), VERSION)
    world.state.beat(STANDBY, clock.now(), PREVIOUS)
    # When applied
    result = provision.apply_config(
        world.deps, provision.ApplyInput(execution=EXECUTION, render=render(), stack=ready_stack())
    )
    # Then one command tells both hosts to apply the version
    assert not result.skipped
    sent = world.commands.sent
    assert [(c.instance_ids, c.commands) for c in sent] == [
        ((PRIMARY, STANDBY), (f"sip-trunk-agent apply --version {VERSION}",))
    ]
    assert result.command_id == sent[0].command_id


def test_apply_refuses_a_version_that_is_not_a_version_id() -> None:
    with pytest.raises(SettingsInvalid):
        provision.apply_command("v1; rm -rf /")


def started(clock: ManualClock, skipped: bool = False) -> provision.ApplyCheckInput:
    apply = provision.ApplyStarted(
        version=VERSION,
        instance_ids=[PRIMARY, STANDBY],
        command_id=None if skipped else "cmd-1",
        skipped=skipped,
        deadline=clock.now() + 60,
    )
    return provision.ApplyCheckInput(apply=apply)


def test_check_apply_is_done_when_every_host_succeeded(clock: ManualClock) -> None:
    world = FakeWorld()
    world.commands.outcome = {PRIMARY: "Success", STANDBY: "InProgress"}
    assert not provision.check_apply(world.deps, started(clock)).done
    world.commands.outcome[STANDBY] = "Success"
    assert provision.check_apply(world.deps, started(clock)).statuses == {PRIMARY: "Success", STANDBY: "Success"}
    assert provision.check_apply(world.deps, started(clock, skipped=True)).statuses == {
        PRIMARY: "AlreadyCurrent",
        STANDBY: "AlreadyCurrent",
    }


def test_check_apply_fails_on_a_failed_host_and_at_the_deadline(clock: ManualClock) -> None:
    world = FakeWorld()
    world.commands.outcome = {PRIMARY: "Success", STANDBY: "Failed"}
    world.commands.output = "pjsip.conf: syntax error"
    with pytest.raises(ApplyFailed, match=f"{STANDBY}: Failed pjsip.conf: syntax error"):
        provision.check_apply(world.deps, started(clock))
    world.commands.outcome[STANDBY] = "InProgress"
    request = started(clock)
    clock.advance(61)
    with pytest.raises(ApplyFailed, match="deadline"):
        provision.check_apply(world.deps, request)


# --- VerifyTrunk -----------------------------------------------------------------------------------


def verify_input(entered_at: float) -> provision.VerifyInput:
    return provision.VerifyInput(render=render(), stack=ready_stack(), entered_at=workflow_clock.iso(entered_at))


def test_verify_passes_when_hosts_run_the_version_and_the_address_answers(clock: ManualClock) -> None:
    world = FakeWorld()
    for host in (PRIMARY, STANDBY):
        world.state.beat(host, clock.now(), VERSION, qualify="Reachable")
    world.prober.answers[PROBED] = 200
    result = provision.verify_trunk(world.deps, verify_input(clock.now()))
    assert all(h.ok for h in result.hosts)
    assert result.probe.answers
    assert result.qualify == {PRIMARY: "Reachable", STANDBY: "Reachable"}
    assert not result.elevenlabs.checked  # no API key configured


def test_verify_is_retried_until_the_deadline_then_times_out(clock: ManualClock) -> None:
    # Given the standby still reports the previous version
    world = FakeWorld()
    world.state.beat(PRIMARY, clock.now(), VERSION)
    world.state.beat(STANDBY, clock.now(), PREVIOUS)
    world.prober.answers[PROBED] = 200
    entered = clock.now()
    # When verified before the deadline, Then it asks to be retried, naming the host
    with pytest.raises(TrunkNotVerified, match=f"{STANDBY} runs {PREVIOUS}"):
        provision.verify_trunk(world.deps, verify_input(entered))
    # And after the deadline it gives up
    clock.advance(world.config.verify_timeout_s)
    with pytest.raises(VerificationTimedOut):
        provision.verify_trunk(world.deps, verify_input(entered))


def test_verify_gates_on_the_address_answering_sip(clock: ManualClock) -> None:
    world = FakeWorld()
    for host in (PRIMARY, STANDBY):
        world.state.beat(host, clock.now(), VERSION)
    world.prober.answers[PROBED] = 503
    with pytest.raises(TrunkNotVerified, match=f"{PUBLIC_IP} does not answer SIP OPTIONS"):
        provision.verify_trunk(world.deps, verify_input(clock.now()))


# --- VerifyTrunk: the certificate ElevenLabs checks (transport tls) --------------------------------------
CERT_HOST = "sip.gateway.example"
DAY = 86_400


def tls_verify_world(clock: ManualClock, *, days_left: float = 90, verified: bool = True, **config: Any) -> FakeWorld:
    """Both hosts run the version, the address answers, and CERT_HOST presents a certificate `days_left` valid."""
    document = settings_document(transport="tls")
    document["network"] |= {"public_hostname": CERT_HOST}
    document["tls"] = {"enabled": True}
    mapping = {PUBLIC_IP: "127.0.0.1:5099", CERT_HOST: "127.0.0.1:5098"}
    world = FakeWorld(config=workflow_config(PROBE_TARGETS=mapping, **config), settings=FakeSettings(document))
    for host in (PRIMARY, STANDBY):
        world.state.beat(host, clock.now(), VERSION)
    world.prober.answers[PROBED] = 200
    target = CertificateTarget(server_name=CERT_HOST, host="127.0.0.1", port=5098)
    world.certificates = FakeCertificates(
        {
            CERT_HOST: CertificateReport(
                target=target,
                verified=verified,
                subject_names=(CERT_HOST,) if verified else ("other.example",),
                issuer="Test CA",
                not_after=clock.now() + days_left * DAY,
                tls_version="TLSv1.3",
                error=None if verified else "certificate rejected: Hostname mismatch",
            )
        }
    )
    return world


def test_verify_over_tls_reports_the_certificate_it_checked(clock: ManualClock) -> None:
    world = tls_verify_world(clock, days_left=90.5)
    cert = provision.verify_trunk(world.deps, verify_input(clock.now())).certificate
    assert (cert.checked, cert.verified, cert.server_name, cert.port, cert.days_left) == (
        True,
        True,
        CERT_HOST,
        5061,
        90,
    )
    assert (cert.subject_names, cert.issuer, cert.tls_version) == ([CERT_HOST], "Test CA", "TLSv1.3")
    assert cert.not_after == workflow_clock.iso(clock.now() + 90.5 * DAY)
    # The handshake named the host ElevenLabs dials, at the address the test mapped it to
    assert world.certificates.checked == [CertificateTarget(server_name=CERT_HOST, host="127.0.0.1", port=5098)]  # type: ignore[attr-defined]


def test_verify_over_tls_refuses_a_certificate_elevenlabs_would_refuse(clock: ManualClock) -> None:
    world = tls_verify_world(clock, verified=False)
    with pytest.raises(TrunkNotVerified) as caught:
        provision.verify_trunk(world.deps, verify_input(clock.now()))
    assert str(caught.value) == (
        f"version {VERSION} not verified: the certificate on {CERT_HOST}:5061 is refused: "
        "certificate rejected: Hostname mismatch (it names other.example)"
    )


@pytest.mark.parametrize(("days_left", "min_days", "passes"), [(13.9, 14, False), (14.0, 14, True), (20, 30, False)])
def test_verify_over_tls_refuses_a_certificate_about_to_expire(
    clock: ManualClock, days_left: float, min_days: int, passes: bool
) -> None:
    world = tls_verify_world(clock, days_left=days_left, CERTIFICATE_MIN_DAYS=min_days)
    if passes:
        assert provision.verify_trunk(world.deps, verify_input(clock.now())).certificate.verified
        return
    with pytest.raises(TrunkNotVerified, match=rf"expires in {int(days_left)} days .*at least {min_days} days"):
        provision.verify_trunk(world.deps, verify_input(clock.now()))


def test_verify_over_tls_with_nothing_listening_names_the_host(clock: ManualClock) -> None:
    world = tls_verify_world(clock)
    world.certificates = FakeCertificates()
    with pytest.raises(TrunkNotVerified, match=f"the certificate on {CERT_HOST}:5061 is refused: connection refused"):
        provision.verify_trunk(world.deps, verify_input(clock.now()))


def test_verify_over_tcp_checks_no_certificate(clock: ManualClock) -> None:
    world = FakeWorld()
    for host in (PRIMARY, STANDBY):
        world.state.beat(host, clock.now(), VERSION)
    world.prober.answers[PROBED] = 200
    cert = provision.verify_trunk(world.deps, verify_input(clock.now())).certificate
    assert (cert.checked, cert.note) == (False, "transport is tcp, not tls")
    assert world.certificates.checked == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("config", "note"),
    [
        ({"PROBE_FUNCTION": "sip-test-probe"}, "not checked: the hosts admit SIP only from named networks"),
        ({"PROBE_TARGETS": {PUBLIC_IP: "127.0.0.1:5099"}}, "not mapped"),
    ],
)
def test_verify_over_tls_contacts_no_host_it_cannot_or_must_not_reach(
    clock: ManualClock, config: dict[str, Any], note: str
) -> None:
    world = tls_verify_world(clock, verified=False)
    world.config = workflow_config(**{"PROBE_TARGETS": world.config.probe_targets, **config})
    cert = provision.verify_trunk(world.deps, verify_input(clock.now())).certificate
    assert not cert.checked
    assert cert.note.startswith(note)
    assert world.certificates.checked == []  # type: ignore[attr-defined]


# --- SyncElevenLabs --------------------------------------------------------------------------------


def with_api_key() -> FakeWorld:
    return FakeWorld(settings=FakeSettings(settings_document(api_key=True)))


def test_sync_without_an_api_key_is_skipped() -> None:
    world = FakeWorld()
    assert provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render())).action == "skipped"
    assert world.elevenlabs.keys == []


def test_sync_imports_the_number_then_finds_it_unchanged() -> None:
    world = with_api_key()
    first = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    assert first.action == "created"
    assert world.elevenlabs.keys == [API_KEY]
    created = world.elevenlabs.created[0]
    assert (created.address, created.transport, created.username) == (PUBLIC_IP, "tcp", "elevenlabs-in")
    again = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    assert again.action == "unchanged"
    assert again.phone_number_id == first.phone_number_id
    assert again.credentials_hash == first.credentials_hash


def test_sync_pushes_a_changed_password() -> None:
    # Given the number was synced with the current passwords, then the inbound password changed
    world = with_api_key()
    first = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    world.deployed()
    assert world.state.deployment is not None
    world.state.deployment = world.state.deployment.model_copy(update={"credentials_hash": first.credentials_hash})
    world.secrets.values["secretsmanager:sip-test/sip/inbound-password"] = "a-new-inbound-password"
    # When synced
    result = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    # Then the number is updated with the new password
    assert result.action == "updated"
    password = world.elevenlabs.updated[-1][1].password
    assert password.get_secret_value() == "a-new-inbound-password"


GATEWAY_HOST = "sip.gateway.example"


def tls_world(tls_port: int = 5061) -> FakeWorld:
    """ElevenLabs over TLS to the gateway's host name (settings require the name with tls)."""
    document = settings_document(api_key=True, transport="tls")
    document["network"] |= {"public_hostname": GATEWAY_HOST, "tls_port": tls_port}
    document["tls"] = {"enabled": True}
    return FakeWorld(settings=FakeSettings(document))


def test_sync_over_tls_imports_the_host_name_and_lists_it_in_remote_domains() -> None:
    world = tls_world()
    first = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    created = world.elevenlabs.created[0]
    # ElevenLabs dials the name on the certificate, never the Elastic IP, and accepts BYE/REFER from it
    assert (created.address, created.transport) == (GATEWAY_HOST, "tls")
    assert created.remote_domains == (GATEWAY_HOST,)
    assert created.request_body()["inbound_trunk_config"]["remote_domains"] == [GATEWAY_HOST]
    again = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    assert (first.action, again.action) == ("created", "unchanged")


def test_sync_over_tls_on_another_port_names_it() -> None:
    world = tls_world(tls_port=5071)
    provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    assert world.elevenlabs.created[0].address == f"{GATEWAY_HOST}:5071"


def test_sync_over_tcp_keeps_the_elastic_ip_and_sends_no_remote_domains() -> None:
    world = with_api_key()
    world.settings.document["network"]["public_hostname"] = GATEWAY_HOST
    provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    created = world.elevenlabs.created[0]
    assert (created.address, created.transport, created.remote_domains) == (PUBLIC_IP, "tcp", ())
    assert "remote_domains" not in created.request_body()["inbound_trunk_config"]


def test_sync_switching_to_tls_repoints_the_number_and_adds_the_domain() -> None:
    # Given a number synced over TCP to the Elastic IP
    world = tls_world()
    tcp = with_api_key()
    provision.sync_elevenlabs(tcp.deps, provision.SyncInput(render=render()))
    world.elevenlabs = tcp.elevenlabs
    # When synced with transport tls
    result = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    # Then address, transport and remote domains converge in one update
    assert result.action == "updated"
    assert set(result.changed_fields) == {
        "outbound_trunk.address",
        "outbound_trunk.transport",
        "inbound_trunk.remote_domains",
    }
    assert provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render())).action == "unchanged"


# --- RecordDeployment ------------------------------------------------------------------------------


def success_state() -> dict[str, Any]:
    return {
        "render": render(previous=PREVIOUS).model_dump(),
        "stack": ready_stack().model_dump(),
        "sync": {"action": "skipped"},
    }


def test_record_success_writes_the_deployment_and_its_durations(clock: ManualClock) -> None:
    # Given the execution's history
    world = FakeWorld()
    world.executions.histories[EXECUTION.arn] = [
        {"type": "TaskStateEntered", "timestamp": 100.0, "state": "LaunchHost"},
        {"type": "TaskStateExited", "timestamp": 101.0, "state": "LaunchHost"},
        {"type": "TaskStateEntered", "timestamp": 102.0, "state": "CheckHostStack"},
        {"type": "TaskStateExited", "timestamp": 130.5, "state": "CheckHostStack"},
    ]
    # When a success is recorded
    result = provision.record_deployment(
        world.deps, provision.RecordInput(execution=EXECUTION, outcome="succeeded", state=success_state())
    )
    # Then the table names the version and the hosts, and the history has the step durations
    deployment = world.state.deployment
    assert deployment is not None
    assert (deployment.active_version, deployment.primary_instance_id, deployment.standby_instance_id) == (
        VERSION,
        PRIMARY,
        STANDBY,
    )
    assert result.durations_s == {"LaunchHost": 30.5}
    assert world.state.history == [
        (
            workflow_clock.iso(clock.now()),
            "provision-1",
            {"outcome": "succeeded", "version": VERSION, "durations_s": {"LaunchHost": 30.5}},
        )
    ]
    assert f"version {VERSION} deployed" in result.message


def test_record_success_when_durations_are_throttled_records_without_them() -> None:
    world = FakeWorld()
    world.executions.faults.fail("history", "ThrottlingException")
    result = provision.record_deployment(
        world.deps, provision.RecordInput(execution=EXECUTION, outcome="succeeded", state=success_state())
    )
    assert result.durations_s == {}
    assert world.state.deployment is not None


def test_record_success_does_not_hide_a_denied_history_read() -> None:
    from botocore.exceptions import ClientError

    world = FakeWorld()
    world.executions.faults.fail("history", "AccessDeniedException")
    with pytest.raises(ClientError):
        provision.record_deployment(
            world.deps, provision.RecordInput(execution=EXECUTION, outcome="succeeded", state=success_state())
        )


def failure_state(previous: str | None) -> dict[str, Any]:
    cause = '{"errorMessage": "pjsip.conf: syntax error", "errorType": "ApplyFailed"}'
    apply = provision.ApplyStarted(
        version=VERSION, instance_ids=[PRIMARY, STANDBY], command_id="cmd-0", skipped=False, deadline=0
    )
    return {
        "render": render(previous=previous).model_dump(),
        "apply": apply.model_dump(),
        "failure": {"ApplyConfig": {"Error": "ApplyFailed", "Cause": cause}},
    }


def test_record_failure_restores_the_previous_version_on_the_hosts() -> None:
    # Given the apply of a new version failed
    world = FakeWorld()
    world.deployed(version=PREVIOUS)
    world.config_store.desired = VERSION
    # When the failure is recorded
    result = provision.record_deployment(
        world.deps, provision.RecordInput(execution=EXECUTION, outcome="failed", state=failure_state(PREVIOUS))
    )
    # Then the desired version is the previous one and the hosts are told to re-apply it
    assert world.config_store.desired == PREVIOUS
    assert [(c.instance_ids, c.commands) for c in world.commands.sent] == [
        ((PRIMARY, STANDBY), (f"sip-trunk-agent apply --version {PREVIOUS}",))
    ]
    assert (result.failed_step, result.error) == ("ApplyConfig", "ApplyFailed")
    assert result.reason == "the host agent could not apply the configuration"
    assert "Error: ApplyFailed: pjsip.conf: syntax error" in result.message
    assert world.state.deployment is not None
    assert world.state.deployment.last_outcome == "failed"


def test_record_failure_of_the_first_version_clears_the_desired_version() -> None:
    world = FakeWorld()
    world.config_store.desired = VERSION
    result = provision.record_deployment(
        world.deps, provision.RecordInput(execution=EXECUTION, outcome="failed", state=failure_state(None))
    )
    assert world.config_store.desired is None
    assert world.commands.sent == []
    assert result.actions == ["desired version cleared (there was no previous version)"]


def test_template_location_reads_both_url_styles() -> None:
    assert provision.template_location("https://b.s3.us-east-1.amazonaws.com/t/host.yaml") == ("b", "t/host.yaml")
    assert provision.template_location("https://s3.us-east-1.amazonaws.com/b/t/host.yaml") == ("b", "t/host.yaml")


def test_template_parameters_reads_intrinsic_tags() -> None:
    body = b"Parameters:\n  ConfigVersion: {Type: String}\nResources:\n  X: {Properties: {A: !Ref ConfigVersion}}\n"
    assert provision.template_parameters(body) == {"ConfigVersion"}
    assert provision.template_parameters(b": : :") is None


def test_sync_restricting_inbound_to_the_gateway_allowlists_the_elastic_ip_even_over_tls() -> None:
    # Given the setting on, over TLS (the address ElevenLabs dials is the host name, not the IP)
    world = tls_world()
    world.settings.document["elevenlabs"]["restrict_inbound_to_gateway"] = True
    # When synced twice, Then the number accepts calls only from the Elastic IP, and the second run is a no-op
    first = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    created = world.elevenlabs.created[0]
    assert created.allowed_addresses == (f"{PUBLIC_IP}/32",)
    assert created.request_body()["inbound_trunk_config"]["allowed_addresses"] == [f"{PUBLIC_IP}/32"]
    again = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    assert (first.action, again.action) == ("created", "unchanged")


def test_sync_turning_the_restriction_on_names_only_the_allowlist() -> None:
    world = with_api_key()
    provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    world.settings.document["elevenlabs"]["restrict_inbound_to_gateway"] = True
    outcome = provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    assert (outcome.action, outcome.changed_fields) == ("updated", ["inbound_trunk.allowed_addresses"])
    assert world.elevenlabs.update_bodies[0]["inbound_trunk_config"]["allowed_addresses"] == [f"{PUBLIC_IP}/32"]


def test_sync_without_the_restriction_sends_no_allowlist_of_its_own() -> None:
    world = with_api_key()
    provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    assert world.elevenlabs.created[0].allowed_addresses is None
    assert "allowed_addresses" not in world.elevenlabs.created[0].request_body()["inbound_trunk_config"]


def test_sync_sets_each_directions_media_encryption_on_the_trunk_that_carries_it() -> None:
    """The gateway's inbound direction (ElevenLabs calls it) is the number's outbound trunk, and the other way
    round. Negative control: a sync that passed the settings' inbound value to the inbound trunk sends
    ``required`` where ``allowed`` is expected and fails the body assertion."""
    world = tls_world()
    world.settings.document["elevenlabs"] |= {
        "media_encryption_inbound": "required",
        "media_encryption_outbound": "allowed",
    }
    provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render()))
    body = world.elevenlabs.created[0].request_body()
    assert body["outbound_trunk_config"]["media_encryption"] == "required"  # ElevenLabs -> gateway
    assert body["inbound_trunk_config"]["media_encryption"] == "allowed"  # gateway -> ElevenLabs
    # and the number as created is in sync: the next run changes nothing
    assert provision.sync_elevenlabs(world.deps, provision.SyncInput(render=render())).action == "unchanged"
