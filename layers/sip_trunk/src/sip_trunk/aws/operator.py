"""What `sip-trunk push`/`pull`/`calls` need from an account, with the operator's own credentials and region.

boto3 only (no Powertools): the CLI installs without the Lambda extras."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import boto3
from botocore.config import Config

from sip_trunk.aws.clients import error_code
from sip_trunk.aws.cloudformation import CfnStacks

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20)

SecretState = Literal["found", "missing", "unknown"]
ExecutionStatus = Literal["RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE"]


class SettingsParameters:
    """The template's and the operator's settings parameters (String, JSON)."""

    def __init__(self, ssm: Any) -> None:
        self.ssm = ssm

    def get(self, name: str) -> tuple[str, int] | None:
        """(value, version), or None when the parameter does not exist."""
        try:
            param = self.ssm.get_parameter(Name=name)["Parameter"]
        except Exception as exc:
            if error_code(exc) == "ParameterNotFound":
                return None
            raise
        return str(param["Value"]), int(param["Version"])

    def put(self, name: str, value: str, description: str) -> int:
        """Store `value`; the tier follows its size (Standard up to 4 KB, Advanced up to 8 KB). The new version."""
        response = self.ssm.put_parameter(
            Name=name,
            Value=value,
            Type="String",
            Tier="Intelligent-Tiering",
            Overwrite=True,
            Description=description,
        )
        return int(response["Version"])


class SecretChecks:
    """Whether a secret reference names an existing secret. Never reads a value."""

    def __init__(self, ssm: Any, secretsmanager: Any) -> None:
        self.ssm = ssm
        self.secretsmanager = secretsmanager

    def state(self, ref: str) -> SecretState:
        try:
            if ref.startswith("ssm:"):
                # Without decryption: a SecureString comes back as ciphertext, which is not looked at.
                self.ssm.get_parameter(Name=ref[len("ssm:") :], WithDecryption=False)
            else:
                self.secretsmanager.describe_secret(SecretId=ref[len("secretsmanager:") :])
        except Exception as exc:
            code = error_code(exc)
            if code in {"ParameterNotFound", "ResourceNotFoundException"}:
                return "missing"
            if code in {"AccessDeniedException", "AccessDenied"}:
                return "unknown"
            raise
        return "found"


@dataclass(frozen=True)
class ExecutionState:
    status: ExecutionStatus
    error: str = ""
    cause: str = ""


class ProvisionExecutions:
    def __init__(self, sfn: Any) -> None:
        self.sfn = sfn

    def start(self, state_machine_arn: str, name: str, payload: str) -> str:
        return str(
            self.sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=payload)["executionArn"]
        )

    def describe(self, execution_arn: str) -> ExecutionState:
        response = self.sfn.describe_execution(executionArn=execution_arn)
        return ExecutionState(
            status=response["status"], error=response.get("error", ""), cause=response.get("cause", "")
        )

    def entered_states(self, execution_arn: str) -> list[str]:
        """The states the execution has entered so far, in order."""
        names: list[str] = []
        for page in self.sfn.get_paginator("get_execution_history").paginate(executionArn=execution_arn):
            for event in page["events"]:
                entered = event.get("stateEnteredEventDetails")
                if entered:
                    names.append(str(entered["name"]))
        return names


class BucketObjects:
    """Listing and reading objects (the call records in the backup bucket: ``sip_trunk.callrecords``)."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3

    def keys(self, bucket: str, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(str(item["Key"]) for item in page.get("Contents", []))
        return keys

    def read(self, bucket: str, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body


@dataclass(frozen=True)
class OperatorAws:
    region: str
    stacks: CfnStacks
    parameters: SettingsParameters
    secrets: SecretChecks
    executions: ProvisionExecutions
    objects: BucketObjects


def operator_aws(region: str | None) -> OperatorAws:
    """Adapters over the operator's credentials; the region from `--region` or the usual AWS configuration."""
    session = boto3.session.Session(region_name=region)
    if session.region_name is None:
        raise ValueError("no AWS region: pass --region or set AWS_REGION / a profile's region")

    def make(service: str) -> Any:
        return session.client(service, config=_CONFIG)  # type: ignore[call-overload]

    ssm = make("ssm")
    return OperatorAws(
        region=str(session.region_name),
        stacks=CfnStacks(make("cloudformation")),
        parameters=SettingsParameters(ssm),
        secrets=SecretChecks(ssm, make("secretsmanager")),
        executions=ProvisionExecutions(make("stepfunctions")),
        objects=BucketObjects(make("s3")),
    )
