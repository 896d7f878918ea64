"""The SAM transform of template.yaml, offline, for tests that check the generated IAM and wiring."""

from __future__ import annotations

import copy
from typing import Any


def sam_transform(template: dict[str, Any]) -> dict[str, Any]:
    """samtranslator's output for `template`, with local code/definition paths made S3-like (no upload)."""
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(template)
    for res in template["Resources"].values():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            props["CodeUri"] = "s3://artifacts/code.zip"
        elif res["Type"] == "AWS::Serverless::LayerVersion":
            props["ContentUri"] = "s3://artifacts/layer.zip"
        elif res["Type"] == "AWS::Serverless::StateMachine":
            props["DefinitionUri"] = "s3://artifacts/definition.json"

    class NoManagedPolicies:
        def load(self) -> dict[str, str]:
            return {}

    result: dict[str, Any] = transform(template, {}, NoManagedPolicies())
    return result
