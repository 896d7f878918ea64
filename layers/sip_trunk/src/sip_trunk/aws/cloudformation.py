"""CloudFormation: the host stack the Provision workflow launches and updates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from sip_trunk.aws.clients import aws_call, client, error_code
from sip_trunk.errors import StackRejected
from sip_trunk.workflows.ports import StackInfo

REJECTED = frozenset({"ValidationError", "InsufficientCapabilitiesException", "AlreadyExistsException"})
"""CreateStack/UpdateStack codes that refuse the template, its parameters or the stack's state."""
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
STACK_TAGS = {"sip-trunk:role": "host"}
"""The host stack's tags. CloudFormation copies them onto every taggable resource, so the service role needs the
resources' tag actions (template.yaml HostStackRole)."""


def _parameters(parameters: Mapping[str, str], keep_previous: Sequence[str] = ()) -> list[dict[str, Any]]:
    given: list[dict[str, Any]] = [
        {"ParameterKey": k, "ParameterValue": v} for k, v in sorted(parameters.items()) if k not in keep_previous
    ]
    return given + [{"ParameterKey": k, "UsePreviousValue": True} for k in sorted(set(keep_previous))]


class CfnStacks:
    def __init__(self, cfn: Any | None = None) -> None:
        self._cfn = cfn

    @property
    def cfn(self) -> Any:
        return self._cfn or client("cloudformation")

    def describe(self, name: str) -> StackInfo | None:
        try:
            with aws_call("DescribeStacks"):
                stack = self.cfn.describe_stacks(StackName=name)["Stacks"][0]
        except ClientError as exc:
            if error_code(exc) == "ValidationError" and "does not exist" in str(exc):
                return None
            raise
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])}
        return StackInfo(
            name=name,
            status=stack["StackStatus"],
            reason=stack.get("StackStatusReason", ""),
            outputs=outputs,
            parameters=parameters,
        )

    def create(self, name: str, template_url: str, parameters: Mapping[str, str], role_arn: str = "") -> None:
        try:
            with aws_call("CreateStack"):
                self.cfn.create_stack(
                    StackName=name,
                    TemplateURL=template_url,
                    Parameters=_parameters(parameters),
                    Capabilities=CAPABILITIES,
                    OnFailure="ROLLBACK",
                    Tags=[{"Key": k, "Value": v} for k, v in STACK_TAGS.items()],
                    **({"RoleARN": role_arn} if role_arn else {}),
                )
        except ClientError as exc:
            if error_code(exc) in REJECTED:
                raise StackRejected(str(exc)) from exc
            raise

    def update(
        self,
        name: str,
        template_url: str,
        parameters: Mapping[str, str],
        role_arn: str = "",
        keep_previous: Sequence[str] = (),
    ) -> bool:
        try:
            with aws_call("UpdateStack"):
                self.cfn.update_stack(
                    StackName=name,
                    TemplateURL=template_url,
                    Parameters=_parameters(parameters, keep_previous),
                    Capabilities=CAPABILITIES,
                    **({"RoleARN": role_arn} if role_arn else {}),
                )
        except ClientError as exc:
            if error_code(exc) == "ValidationError" and "No updates are to be performed" in str(exc):
                return False
            if error_code(exc) in REJECTED:
                raise StackRejected(str(exc)) from exc
            raise
        return True
