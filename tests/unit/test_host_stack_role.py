"""HostStackRole (template.yaml) lets CloudFormation create, read, update and delete every resource of
stacks/host.yaml, and allows nothing the host stack does not need.

What CloudFormation calls comes from AWS, not from this project: the resource handlers' permission lists in the
registry schemas cfn-lint ships, the tag actions for the stack tags LaunchHost sets (CloudFormation copies them
onto each taggable resource), `iam:PassRole` of the host role, and the alarm's service-linked role. Each is
turned into requests on representative ARNs of this deployment and evaluated against the role's policy as
CloudFormation receives it (template.yaml parsed by cfn-lint, intrinsics resolved).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode
from sip_trunk.aws.cloudformation import STACK_TAGS
from support.handler_permissions import (
    Request,
    action_matches,
    allowed,
    arn_matches,
    condition_holds,
    handler_permissions,
    missing,
    resolve,
    statement_matches,
    tag_permissions,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
STACK = "sip-prod"  # the root stack; LaunchHost names the host stack "<root>-host"
HOST_STACK = f"{STACK}-host"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
PSEUDO = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT, "AWS::Partition": "aws", "AWS::URLSuffix": "amazonaws.com"}
ROOT_REFS = {**PSEUDO, "AWS::StackName": STACK}
ROOT_ATTRS = {
    "BackupBucket.Arn": f"arn:aws:s3:::{STACK}-backups-0a1b2c3d",
    "StackKey.Arn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0a1b2c3d-0000-0000-0000-000000000000",
}
EVENTS_SLR = f"arn:aws:iam::{ACCOUNT}:role/aws-service-role/events.amazonaws.com/AWSServiceRoleForCloudWatchEvents"

# Handler permissions that act only on a property host.yaml does not set; each is a grant the host stack would
# never use and that reaches beyond it (attach any volume of the account, run any SSM document on the host,
# change the role's permissions boundary). test_unused_properties_stay_unset keeps the list honest.
UNUSED_PROPERTY_ACTIONS: dict[tuple[str, str], set[str]] = {
    ("AWS::EC2::Instance", "Volumes"): {"ec2:AttachVolume", "ec2:DetachVolume"},
    ("AWS::EC2::Instance", "SsmAssociations"): {"ssm:CreateAssociation", "ssm:DeleteAssociation"},
    ("AWS::IAM::Role", "PermissionsBoundary"): {"iam:PutRolePermissionsBoundary", "iam:DeleteRolePermissionsBoundary"},
}

# Not resource handlers: CloudFormation itself reads the host template (SSE-KMS with the stack key) from the bucket.
# (The template holds no `{{resolve:ssm:...}}` reference: LaunchHost passes the image as an AMI id.)
TEMPLATE_ACTIONS = {"s3:GetObject", "kms:Decrypt"}


def load(path: Path) -> dict[str, Any]:
    template, matches = decode(str(path))
    assert not matches, f"{path.name} does not parse: {matches}"
    plain: dict[str, Any] = json.loads(json.dumps(template))  # plain types (cfn-lint's nodes carry positions)
    return plain


def host_stack_statements(root: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """HostStackRole's permissions as IAM receives them: every inline policy, intrinsics resolved."""
    role = (root or load(ROOT / "template.yaml"))["Resources"]["HostStackRole"]["Properties"]
    assert not role.get("ManagedPolicyArns"), "HostStackRole's permissions are all inline and evaluated here"
    documents = [resolve(p["PolicyDocument"], ROOT_REFS, ROOT_ATTRS) for p in role["Policies"]]
    return [statement for document in documents for statement in document["Statement"]]


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def ec2(kind: str, ident: str, account: str = ACCOUNT) -> str:
    return f"arn:aws:ec2:{REGION}:{account}:{kind}/{ident}"


def tags_context(prefix: str, tags: dict[str, str]) -> dict[str, str]:
    return {f"{prefix}/{k}": v for k, v in tags.items()}


class HostStack:
    """Representative ARNs and tags of one deployed host stack (stacks/host.yaml as <root>-host)."""

    def __init__(self, host: dict[str, Any]) -> None:
        self.template = host
        res = host["Resources"]
        refs = {**PSEUDO, "AWS::StackName": HOST_STACK, **{p: f"<{p}>" for p in host["Parameters"]}}
        refs |= {"RootStackName": STACK, "NotificationTopicArn": f"arn:aws:sns:{REGION}:{ACCOUNT}:{STACK}-alarms"}
        self.refs = refs

        def value(node: Any) -> Any:
            return resolve(node, refs)

        role, profile = res["HostRole"]["Properties"], res["HostInstanceProfile"]["Properties"]
        self.role = f"arn:aws:iam::{ACCOUNT}:role{value(role['Path'])}{HOST_STACK}-HostRole-1A2B3C4D5E6F"
        self.profile = (
            f"arn:aws:iam::{ACCOUNT}:instance-profile{value(profile['Path'])}{HOST_STACK}-HostInstanceProfile-1A2B3C"
        )
        self.managed_policies = [value(arn) for arn in role.get("ManagedPolicyArns", [])]
        instances = [r["Properties"] for r in res.values() if r["Type"] == "AWS::EC2::Instance"]
        self.instance_tags = [{t["Key"]: t["Value"] for t in value(i["Tags"])} | STACK_TAGS for i in instances]
        specs = value(res["LaunchTemplate"]["Properties"]["LaunchTemplateData"]["TagSpecifications"])
        self.volume_tags = {t["Key"]: t["Value"] for s in specs if s["ResourceType"] == "volume" for t in s["Tags"]}
        alarms = [r["Properties"] for r in res.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
        self.alarms = [f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:{value(a['AlarmName'])}" for a in alarms]
        actions = [str(value(action)) for a in alarms for action in a.get("AlarmActions", [])]
        self.alarm_ec2_actions = any(":automate:" in a and a.endswith((":recover", ":stop", ":terminate", ":reboot"))
                                     for a in actions)  # fmt: skip

    def targets(self) -> dict[str, list[tuple[str, dict[str, str]]]]:
        """IAM action -> the (resource ARN, condition keys) it is authorized on for this stack."""
        arns = [ec2("instance", f"i-0123456789abcdef{n}") for n in range(len(self.instance_tags))]
        instances = [(a, tags_context("aws:ResourceTag", t)) for a, t in zip(arns, self.instance_tags, strict=True)]
        new_instances = [(a, tags_context("aws:RequestTag", t)) for a, t in zip(arns, self.instance_tags, strict=True)]
        new_volume = (ec2("volume", "vol-0123456789abcdef0"), tags_context("aws:RequestTag", self.volume_tags))
        none: dict[str, str] = {}
        template = (ec2("launch-template", "lt-0123456789abcdef0"), none)
        at_launch = {"ec2:CreateAction": "RunInstances"}
        launch = [
            *new_instances,
            new_volume,
            (ec2("network-interface", "eni-0123456789abcdef0"), {}),
            (ec2("subnet", "subnet-0123456789abcdef0"), {}),  # the network stack's subnet and security group
            (ec2("security-group", "sg-0123456789abcdef0"), {}),
            (ec2("image", "ami-0123456789abcdef0", account=""), {}),
            template,
        ]
        role = (self.role, tags_context("aws:ResourceTag", STACK_TAGS))
        anything = [("*", none)]
        found: dict[str, list[tuple[str, dict[str, str]]]] = {
            "ec2:RunInstances": launch,
            "ec2:CreateTags": [
                *[(arn, context | at_launch) for arn, context in new_instances],
                (new_volume[0], new_volume[1] | at_launch),
                (template[0], {"ec2:CreateAction": "CreateLaunchTemplate"}),
                *instances,  # stack tag changes on update
                template,
            ],
            "ec2:DeleteTags": [*instances, template],
            "ec2:CreateLaunchTemplate": [template],
            "ec2:CreateLaunchTemplateVersion": [template],
            "ec2:DeleteLaunchTemplate": [template],
            "iam:CreateRole": [(self.role, tags_context("aws:RequestTag", STACK_TAGS))],
            "iam:AttachRolePolicy": [(self.role, {"iam:PolicyARN": p}) for p in self.managed_policies],
            "iam:DetachRolePolicy": [(self.role, {"iam:PolicyARN": p}) for p in self.managed_policies],
            # RunInstances/AssociateIamInstanceProfile hand the role to EC2; the instance profile handler's
            # check hands it to no service, so iam:PassedToService is absent there.
            "iam:PassRole": [(self.role, {"iam:PassedToService": "ec2.amazonaws.com"}), (self.role, {})],
            "ssm:DescribeAssociation": instances,
        }
        for action in INSTANCE_ACTIONS:
            found.setdefault(action, instances)
        for action in ROLE_ACTIONS:
            found.setdefault(action, [role])
        for action in PROFILE_ACTIONS:
            found.setdefault(action, [(self.profile, {})])
        for action in ALARM_ACTIONS:
            found.setdefault(action, [(alarm, {}) for alarm in self.alarms])
        for action in NO_RESOURCE_TYPES:
            found.setdefault(action, anything)
        return found


# Actions authorized on the instance only (IAM service authorization reference: resource type `instance`).
INSTANCE_ACTIONS = {
    "ec2:AssociateIamInstanceProfile",
    "ec2:DescribeInstanceAttribute",
    "ec2:DisassociateIamInstanceProfile",
    "ec2:ModifyInstanceAttribute",
    "ec2:ModifyInstanceCreditSpecification",
    "ec2:ModifyInstanceMaintenanceOptions",
    "ec2:ModifyInstanceMetadataOptions",
    "ec2:ModifyInstancePlacement",
    "ec2:ModifyPrivateDnsNameOptions",
    "ec2:MonitorInstances",
    "ec2:ReplaceIamInstanceProfileAssociation",
    "ec2:StartInstances",
    "ec2:StopInstances",
    "ec2:TerminateInstances",
    "ec2:UnmonitorInstances",
}
ROLE_ACTIONS = {
    "iam:DeleteRole",
    "iam:DeleteRolePolicy",
    "iam:GetRole",
    "iam:GetRolePolicy",
    "iam:ListAttachedRolePolicies",
    "iam:ListRolePolicies",
    "iam:ListRoleTags",
    "iam:PutRolePolicy",
    "iam:TagRole",
    "iam:UntagRole",
    "iam:UpdateAssumeRolePolicy",
    "iam:UpdateRole",
    "iam:UpdateRoleDescription",
}
PROFILE_ACTIONS = {
    "iam:AddRoleToInstanceProfile",
    "iam:CreateInstanceProfile",
    "iam:DeleteInstanceProfile",
    "iam:GetInstanceProfile",
    "iam:RemoveRoleFromInstanceProfile",
}
ALARM_ACTIONS = {
    "cloudwatch:DeleteAlarms",
    "cloudwatch:DescribeAlarms",
    "cloudwatch:ListTagsForResource",
    "cloudwatch:PutMetricAlarm",
    "cloudwatch:TagResource",
    "cloudwatch:UntagResource",
}
# Actions with no resource-level permissions: a policy can grant them only on Resource "*".
NO_RESOURCE_TYPES = {
    "ec2:DescribeIamInstanceProfileAssociations",
    "ec2:DescribeInstanceCreditSpecifications",
    "ec2:DescribeInstances",
    "ec2:DescribeKeyPairs",
    "ec2:DescribeLaunchTemplateVersions",
    "ec2:DescribeLaunchTemplates",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSubnets",
    "ec2:DescribeVolumes",
    "ec2:DescribeVpcs",
    "ssm:ListAssociations",
}


def required_actions(host: dict[str, Any]) -> dict[str, dict[str, set[str]]]:
    """IAM action -> {resource type or reason -> the handlers (operations) that call it} for this host stack."""
    why: dict[str, dict[str, set[str]]] = {}

    def need(action: str, source: str, operation: str) -> None:
        why.setdefault(action, {}).setdefault(source, set()).add(operation)

    for resource in host["Resources"].values():
        kind = resource["Type"]
        skipped = {a for (k, _), acts in UNUSED_PROPERTY_ACTIONS.items() if k == kind for a in acts}
        for op, actions in handler_permissions(kind).items():
            for action in set(actions) - skipped:
                need(action, kind, op)
        for action in tag_permissions(kind):
            need(action, kind, "stack tags")
    if HostStack(host).alarm_ec2_actions:
        need("iam:CreateServiceLinkedRole", "AWS::CloudWatch::Alarm", "EC2 action, first alarm of the account")
    for action in TEMPLATE_ACTIONS:
        need(action, "template", "host template")
    return why


def describe(sources: dict[str, set[str]]) -> str:
    return "; ".join(f"{source} {'/'.join(sorted(ops))}" for source, ops in sorted(sources.items()))


def requests(host: dict[str, Any]) -> list[Request]:
    stack = HostStack(host)
    targets = stack.targets() | {
        "iam:CreateServiceLinkedRole": [(EVENTS_SLR, {"iam:AWSServiceName": "events.amazonaws.com"})],
        "s3:GetObject": [(f"{ROOT_ATTRS['BackupBucket.Arn']}/templates/host.yaml", {})],
        "kms:Decrypt": [(ROOT_ATTRS["StackKey.Arn"], {})],
    }
    needed = required_actions(host)
    unmodelled = sorted(set(needed) - set(targets))
    assert not unmodelled, f"no resource model for {unmodelled}: add their ARNs to HostStack.targets"
    return [
        Request(action, arn, context, why=describe(needed[action]))
        for action in sorted(needed)
        for arn, context in targets[action]
    ]


HOST = load(ROOT / "stacks" / "host.yaml")


def test_host_stack_role_allows_everything_cloudformation_calls_for_the_host_stack() -> None:
    gaps = missing(host_stack_statements(), requests(HOST))
    assert not gaps, f"HostStackRole lacks {len(gaps)} permission(s):\n" + "\n".join(gaps)


def test_removing_any_statement_fails_the_check_naming_its_action() -> None:
    # The planted defect, once per statement: each one is needed, and the check says for what.
    statements, wanted = host_stack_statements(), requests(HOST)
    for index, statement in enumerate(statements):
        planted = statements[:index] + statements[index + 1 :]
        gaps = missing(planted, wanted)
        names = {a.lower() for a in as_list(statement["Action"])}
        assert gaps, f"statement {statement.get('Sid', index)} is not needed by any request"
        assert any(gap.split(" ", 1)[0].lower() in names for gap in gaps), (statement.get("Sid"), gaps)


def test_every_allowed_action_is_one_cloudformation_calls() -> None:
    needed = {a.lower() for a in required_actions(HOST)}
    for statement in host_stack_statements():
        for action in as_list(statement["Action"]):
            assert "*" not in action, f"{statement.get('Sid')}: wildcard action {action}"
            assert action.lower() in needed, f"{statement.get('Sid')}: {action} is not called for the host stack"


def test_resource_star_only_for_actions_without_resource_types() -> None:
    for statement in host_stack_statements():
        if "*" in as_list(statement["Resource"]):
            actions = as_list(statement["Action"])
            assert set(actions) <= NO_RESOURCE_TYPES, statement.get("Sid")


def test_unused_properties_stay_unset() -> None:
    for (kind, prop), actions in UNUSED_PROPERTY_ACTIONS.items():
        of_kind = [r for r in HOST["Resources"].values() if r["Type"] == kind]
        assert of_kind, f"no {kind} in host.yaml: drop the {prop} entry"
        assert all(prop not in r.get("Properties", {}) for r in of_kind), f"{kind}.{prop} is set: grant {actions}"
        listed = {a for perms in handler_permissions(kind).values() for a in perms}
        assert actions <= listed, f"{kind}'s handlers no longer call {actions - listed}"


def test_only_cloudformation_of_this_account_assumes_the_role() -> None:
    trust = resolve(
        load(ROOT / "template.yaml")["Resources"]["HostStackRole"]["Properties"]["AssumeRolePolicyDocument"],
        ROOT_REFS,
    )
    assert trust["Statement"] == [
        {
            "Effect": "Allow",
            "Principal": {"Service": "cloudformation.amazonaws.com"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEqualsIfExists": {"aws:SourceAccount": ACCOUNT}},
        }
    ]


def test_the_host_role_goes_only_to_ec2() -> None:
    statements, role = host_stack_statements(), HostStack(HOST).role
    assert allowed(statements, Request("iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"}))
    assert not allowed(statements, Request("iam:PassRole", role, {"iam:PassedToService": "lambda.amazonaws.com"}))
    other = role.replace(f"/{STACK}-host-agent/", "/other-host-agent/").replace(HOST_STACK, "other-host")
    assert not allowed(statements, Request("iam:PassRole", other, {"iam:PassedToService": "ec2.amazonaws.com"}))


def test_instances_of_other_stacks_are_out_of_reach() -> None:
    statements = host_stack_statements()
    foreign = {"aws:ResourceTag/aws-sip-trunk:stack": "other"}
    for action in ("ec2:TerminateInstances", "ec2:ModifyInstanceAttribute", "ec2:CreateTags", "ec2:DeleteTags"):
        assert not allowed(statements, Request(action, ec2("instance", "i-0fedcba9876543210"), foreign)), action


# --- the evaluator itself: each rule the check relies on, with the case that must not match ------------------


@pytest.mark.parametrize(
    ("pattern", "arn", "expected"),
    [
        ("arn:aws:iam::1:role/sip-prod-host-*", "arn:aws:iam::1:role/sip-prod-host-agent/x", True),
        ("arn:aws:iam::1:role/sip-prod-host-*", "arn:aws:iam::1:role/sip-prod-other", False),
        ("arn:aws:ec2:eu-west-1:1:*", "arn:aws:ec2:eu-west-1:1:instance/i-1", True),
        ("arn:aws:ec2:eu-west-1:1:*", "arn:aws:ec2:eu-west-1::image/ami-1", False),  # account segment differs
        ("arn:aws:ec2:*:1:instance/*", "arn:aws:ec2:eu-west-1:1:instance/i-1", True),
        ("arn:aws:ec2:eu-*:1:instance/*", "arn:aws:ec2:us-east-1:1:instance/i-1", False),
        ("arn:aws:s3:::b/templates/*", "arn:aws:s3:::b/hosts/x", False),
        ("arn:aws:cloudwatch:r:1:alarm:a-?", "arn:aws:cloudwatch:r:1:alarm:a-b", True),
        ("arn:aws:cloudwatch:r:1:alarm:a-?", "arn:aws:cloudwatch:r:1:alarm:a-bc", False),
        ("arn:aws:iam::1:role/*", "*", False),  # an action without resource types needs Resource "*"
        ("*", "*", True),
    ],
)
def test_arn_matching(pattern: str, arn: str, expected: bool) -> None:
    assert arn_matches(pattern, arn) is expected


def test_action_matching_is_case_insensitive_with_wildcards() -> None:
    assert action_matches("EC2:describe*", "ec2:DescribeInstances")
    assert not action_matches("ec2:Describe*", "ec2:DeleteTags")
    assert not action_matches("iam:PassRole", "iam:PassRoles")


@pytest.mark.parametrize(
    ("condition", "context", "expected"),
    [
        ({"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}, {}, False),
        ({"StringEqualsIfExists": {"iam:PassedToService": "ec2.amazonaws.com"}}, {}, True),
        ({"StringEqualsIfExists": {"iam:PassedToService": "ec2.amazonaws.com"}}, {"iam:PassedToService": "x"}, False),
        ({"StringEquals": {"ec2:CreateAction": ["RunInstances", "X"]}}, {"ec2:createaction": "RunInstances"}, True),
        ({"StringLike": {"aws:ResourceTag/k": "sip-*"}}, {"aws:ResourceTag/k": "other"}, False),
        (
            {"ArnEquals": {"iam:PolicyARN": "arn:aws:iam::aws:policy/A"}},
            {"iam:PolicyARN": "arn:aws:iam::aws:policy/AB"},
            False,
        ),
    ],
)
def test_conditions(condition: dict[str, Any], context: dict[str, str], expected: bool) -> None:
    assert condition_holds(condition, context) is expected


def test_deny_wins_and_unsupported_elements_raise() -> None:
    request = Request("ec2:TerminateInstances", ec2("instance", "i-1"))
    allow: dict[str, Any] = {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}
    deny: dict[str, Any] = {"Effect": "Deny", "Action": "ec2:TerminateInstances", "Resource": "*"}
    assert allowed([allow], request)
    assert not allowed([allow, deny], request)
    assert not allowed([], request)
    with pytest.raises(NotImplementedError):
        statement_matches({"Effect": "Allow", "NotAction": "iam:*", "Resource": "*"}, request)
    with pytest.raises(NotImplementedError):
        condition_holds({"NumericLessThan": {"k": "1"}}, {"k": "0"})
