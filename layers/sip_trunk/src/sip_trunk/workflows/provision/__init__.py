"""The Provision workflow: one module per state (or poll loop) of `statemachines/provision.asl.yaml`.

Order: validate → render into the config store → launch/update the host stack → wait for it, then set the
hosts' roles → apply the version on the hosts → verify → sync the ElevenLabs number → record (success or
failure) → notify. A config version reaches the hosts only through ApplyConfig (Run Command); the host stack
is updated only when its template or its other parameters change, so a config push never restarts a host.
Every function is safe to re-run with the same input; a re-run with unchanged settings changes nothing
(it re-sends the hosts' roles, which is idempotent).

validate (ValidateSettings) → render (RenderConfig) → launch (LaunchHost, CheckHostStack) → apply (ApplyConfig,
CheckApply) → verify (VerifyTrunk) → sync (SyncElevenLabs) → record (RecordDeployment). The handlers import
the steps from here.
"""

from __future__ import annotations

from sip_trunk.workflows.certificate import CertificateCheck
from sip_trunk.workflows.provision.apply import (
    ApplyCheck,
    ApplyCheckInput,
    ApplyInput,
    ApplyStarted,
    apply_command,
    apply_config,
    check_apply,
)
from sip_trunk.workflows.provision.launch import (
    CONFIG_VERSION,
    LaunchInput,
    LaunchResult,
    StackCheck,
    StackCheckInput,
    check_host_stack,
    host_stack_parameters,
    host_template,
    launch_host,
    private_addresses,
    publish_host_template,
    template_location,
    template_parameters,
)
from sip_trunk.workflows.provision.record import (
    _REASONS,
    STEP_OF_STATE,
    RecordInput,
    RecordResult,
    record_deployment,
    step_durations,
)
from sip_trunk.workflows.provision.render import VERSION_PATTERN, RenderResult, render_config
from sip_trunk.workflows.provision.sync import (
    NumberSync,
    SyncInput,
    SyncOutcome,
    desired_trunk,
    desired_trunks,
    sync_elevenlabs,
)
from sip_trunk.workflows.provision.validate import ProvisionRequest, ValidateResult, validate_settings
from sip_trunk.workflows.provision.verify import (
    ElevenLabsCheck,
    HostCheck,
    NumberCheck,
    VerifyInput,
    VerifyResult,
    verify_trunk,
)

__all__ = [
    "CONFIG_VERSION",
    "STEP_OF_STATE",
    "VERSION_PATTERN",
    "_REASONS",
    "ApplyCheck",
    "ApplyCheckInput",
    "ApplyInput",
    "ApplyStarted",
    "CertificateCheck",
    "ElevenLabsCheck",
    "HostCheck",
    "LaunchInput",
    "LaunchResult",
    "NumberCheck",
    "NumberSync",
    "ProvisionRequest",
    "RecordInput",
    "RecordResult",
    "RenderResult",
    "StackCheck",
    "StackCheckInput",
    "SyncInput",
    "SyncOutcome",
    "ValidateResult",
    "VerifyInput",
    "VerifyResult",
    "apply_command",
    "apply_config",
    "check_apply",
    "check_host_stack",
    "desired_trunk",
    "desired_trunks",
    "host_stack_parameters",
    "host_template",
    "launch_host",
    "private_addresses",
    "publish_host_template",
    "record_deployment",
    "render_config",
    "step_durations",
    "sync_elevenlabs",
    "template_location",
    "template_parameters",
    "validate_settings",
    "verify_trunk",
]
