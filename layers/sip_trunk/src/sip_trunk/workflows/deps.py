"""Everything a workflow step may touch, in one place (built by `sip_trunk.aws.wiring`)."""

from __future__ import annotations

from dataclasses import dataclass

from sip_trunk.workflows.config import WorkflowConfig
from sip_trunk.workflows.ports import (
    Addresses,
    CertificateChecker,
    Commands,
    ConfigStore,
    ElevenLabsFactory,
    Executions,
    JsonParameters,
    ObjectStore,
    Prober,
    SecretResolver,
    SettingsSource,
    Stacks,
    StateStore,
)


@dataclass(frozen=True)
class Deps:
    config: WorkflowConfig
    settings: SettingsSource
    parameters: JsonParameters
    secrets: SecretResolver
    config_store: ConfigStore
    addresses: Addresses
    stacks: Stacks
    commands: Commands
    state: StateStore
    executions: Executions
    objects: ObjectStore
    prober: Prober
    elevenlabs: ElevenLabsFactory
    certificates: CertificateChecker
