"""The Provision state machine, executed by moto with the real handlers."""

from __future__ import annotations

import json

import pytest
from support.moto_sfn import run

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
    assert output["verify"]["probe"]["answers"] if "answers" in output["verify"]["probe"] else True
    assert output["verify"]["probe"]["reachable"] is True
    assert output["sync"]["action"] == "skipped"
    assert set(output["durations_s"]) >= {"ValidateSettings", "RenderConfig", "LaunchHost", "ApplyConfig"}
    deployment = world.item("deployment", "current")
    assert deployment["active_version"] == version
    notes = world.notifications()
    assert len(notes) == 1
    assert "succeeded" in notes[0]["subject"]
