"""Fixtures: moto with the state-machine executor, the real handlers, the emulated account."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import boto3
import pytest
from moto import mock_aws
from support.moto_sfn import REGION, STATEMACHINES, Harness, create_state_machine, substitutions
from support.world import CONFIG_PREFIX, STACK, TABLE, World, build_world

MOTO_CONFIG: Any = {"stepfunctions": {"execute_state_machine": True}, "lambda": {"use_docker": False}}


@dataclass
class Machines:
    """The state machines, created on first use (parsing an ASL costs moto a few hundred ms)."""

    sfn: Any
    subs: dict[str, str]
    harness: Harness
    world: World

    @cached_property
    def provision(self) -> str:
        return create_state_machine(self.sfn, f"{STACK}-provision", STATEMACHINES / "provision.asl.yaml", self.subs)

    @cached_property
    def failover(self) -> str:
        return create_state_machine(self.sfn, f"{STACK}-failover", STATEMACHINES / "failover.asl.yaml", self.subs)


def _machines(monkeypatch: pytest.MonkeyPatch, world: World) -> Iterator[Machines]:
    harness = Harness()
    world.clock = harness.clock
    harness.before.append(lambda name, event: world.tick())
    world.deliver_commands()
    sfn = boto3.client("stepfunctions", region_name=REGION)
    subs = substitutions(
        {
            "NotificationTopicArn": world.topic_arn,
            "StateTableName": TABLE,
            "ConfigPrefix": CONFIG_PREFIX,
            "FailoverStateMachineArn": world.env["FAILOVER_STATE_MACHINE_ARN"],
        }
    )
    with harness.installed(monkeypatch):
        yield Machines(sfn=sfn, subs=subs, harness=harness, world=world)


@pytest.fixture
def machines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Machines]:
    with mock_aws(config=MOTO_CONFIG), build_world(monkeypatch) as world:
        yield from _machines(monkeypatch, world)


@pytest.fixture
def elevenlabs() -> Iterator[Any]:
    from sip_trunk_local.elevenlabs_api import ElevenLabsStandIn
    from support.world import API_KEY

    with ElevenLabsStandIn(API_KEY) as api:
        yield api


@pytest.fixture
def machines_with_api(monkeypatch: pytest.MonkeyPatch, elevenlabs: Any) -> Iterator[Machines]:
    with mock_aws(config=MOTO_CONFIG), build_world(monkeypatch, api_key=True, api_url=elevenlabs.url) as world:
        yield from _machines(monkeypatch, world)
