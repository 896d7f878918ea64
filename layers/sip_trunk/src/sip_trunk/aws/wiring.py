"""Builds the adapters the handlers inject into the workflows, once per container."""

from __future__ import annotations

from functools import lru_cache

from pydantic import SecretStr

from sip_trunk.aws.clients import reset as reset_clients
from sip_trunk.aws.cloudformation import CfnStacks
from sip_trunk.aws.dynamodb import DynamoStateStore
from sip_trunk.aws.ec2 import Ec2Addresses
from sip_trunk.aws.runcommand import SsmCommands
from sip_trunk.aws.s3 import S3Objects
from sip_trunk.aws.ssm import JsonParameterReader, ParameterSecretResolver, SsmConfigStore, SsmSettingsSource
from sip_trunk.aws.stepfunctions import SfnExecutions
from sip_trunk.aws.vpcprobe import VpcProber
from sip_trunk.elevenlabs import ElevenLabsClient, PhoneNumberApi
from sip_trunk.environment import load_config
from sip_trunk.sip import ProbeResult, ProbeTarget, check_certificate, probe_options
from sip_trunk.workflows import clock
from sip_trunk.workflows.config import WorkflowConfig
from sip_trunk.workflows.deps import Deps


def sip_probe(target: ProbeTarget, timeout_s: float) -> ProbeResult:
    # A liveness probe of our own address: the certificate names a host name, not the Elastic IP.
    return probe_options(target, timeout_s, verify=False)


def build_deps(config: WorkflowConfig) -> Deps:
    def elevenlabs(api_key: str) -> PhoneNumberApi:
        return ElevenLabsClient(
            SecretStr(api_key), config.elevenlabs_api_url, max_attempts=3, backoff_max_s=2.0, sleep=clock.sleep
        )

    return Deps(
        config=config,
        settings=SsmSettingsSource(config.settings_parameter, config.operator_settings_parameter),
        parameters=JsonParameterReader(),
        secrets=ParameterSecretResolver(),
        config_store=SsmConfigStore(config.config_prefix),
        addresses=Ec2Addresses(),
        stacks=CfnStacks(),
        commands=SsmCommands(timeout_s=config.apply_timeout_s),
        state=DynamoStateStore(config.state_table),
        executions=SfnExecutions(),
        objects=S3Objects(),
        prober=VpcProber(config.probe_function) if config.probe_function else sip_probe,
        elevenlabs=elevenlabs,
        certificates=check_certificate,  # the system trust store, as ElevenLabs; no CA setting exists
    )


@lru_cache(maxsize=1)
def default_deps() -> Deps:
    return build_deps(load_config())


def reset() -> None:
    """Forget cached configuration, adapters and clients (tests, between moto contexts)."""
    default_deps.cache_clear()
    load_config.cache_clear()
    reset_clients()
