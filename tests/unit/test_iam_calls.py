"""The permission proof's mapping of an API call to the authorizations AWS performs for it."""

from __future__ import annotations

from typing import Any

import pytest
from support.iam_proof import Call, function_names, principal_of, requests_for

pytestmark = pytest.mark.unit

REGION = "us-east-1"
NAMES = function_names({"STACK_NAME": "trunk"}, REGION)
ROLE = "arn:aws:iam::123456789012:role/trunk-X"


def needs(service: str, operation: str, **params: Any) -> list[tuple[str, str, dict[str, Any]]]:
    call = Call("XFunctionRole", service, operation, params, REGION, NAMES)
    return [(r.action, r.resource, dict(r.context)) for r in requests_for(call, ROLE)]


def actions(service: str, operation: str, **params: Any) -> list[tuple[str, str]]:
    return [(a, r) for a, r, _ in needs(service, operation, **params)]


KEY = NAMES["StackKey.Arn"]


def test_a_table_write_needs_the_table_key_through_dynamodb() -> None:
    (put, kms) = needs("dynamodb", "PutItem", TableName="trunk-state", Item={"pk": {"S": "host#i-1"}})
    assert put[:2] == ("dynamodb:PutItem", "arn:aws:dynamodb:us-east-1:123456789012:table/trunk-state")
    assert put[2]["dynamodb:LeadingKeys"] == ["host#i-1"]
    assert kms[:2] == ("kms:Decrypt", KEY)
    assert kms[2]["kms:ViaService"] == "dynamodb.us-east-1.amazonaws.com"


def test_a_table_the_template_does_not_encrypt_needs_no_key() -> None:
    assert actions("dynamodb", "GetItem", TableName="other", Key={"pk": "x"}) == [
        ("dynamodb:GetItem", "arn:aws:dynamodb:us-east-1:123456789012:table/other")
    ]


def test_head_object_is_get_object_plus_list_bucket_and_a_put_needs_a_data_key() -> None:
    assert actions("s3", "HeadObject", Bucket="trunk-backups", Key="templates/host.yaml") == [
        ("s3:GetObject", "arn:aws:s3:::trunk-backups/templates/host.yaml"),
        ("s3:ListBucket", "arn:aws:s3:::trunk-backups"),
    ]
    assert actions("s3", "PutObject", Bucket="trunk-backups", Key="trunk/x.json") == [
        ("s3:PutObject", "arn:aws:s3:::trunk-backups/trunk/x.json"),
        ("kms:GenerateDataKey", KEY),
    ]


def test_create_stack_passes_its_role_and_reads_its_template_as_the_caller() -> None:
    role = "arn:aws:iam::123456789012:role/trunk-HostStackRole"
    got = needs(
        "cloudformation",
        "CreateStack",
        StackName="trunk-host",
        RoleARN=role,
        TemplateURL="https://trunk-backups.s3.us-east-1.amazonaws.com/templates/host.yaml",
    )
    assert [(a, r) for a, r, _ in got] == [
        ("cloudformation:CreateStack", "arn:aws:cloudformation:us-east-1:123456789012:stack/trunk-host/0a1b2c3d"),
        ("iam:PassRole", role),
        ("s3:GetObject", "arn:aws:s3:::trunk-backups/templates/host.yaml"),
        ("kms:Decrypt", KEY),
    ]
    assert got[1][2]["iam:PassedToService"] == "cloudformation.amazonaws.com"


def test_publishing_to_the_encrypted_topic_needs_both_key_actions() -> None:
    topic = NAMES["NotificationTopic"]
    assert actions("sns", "Publish", TopicArn=topic) == [
        ("sns:Publish", topic),
        ("kms:GenerateDataKey", KEY),
        ("kms:Decrypt", KEY),
    ]


def test_a_secret_of_the_stack_needs_the_key_and_get_parameters_by_path_is_the_paths_arn() -> None:
    assert actions("secretsmanager", "GetSecretValue", SecretId="trunk/sip/inbound-password") == [
        (
            "secretsmanager:GetSecretValue",
            "arn:aws:secretsmanager:us-east-1:123456789012:secret:trunk/sip/inbound-password-AbCdEf",
        ),
        ("kms:Decrypt", KEY),
    ]
    assert actions("ssm", "GetParametersByPath", Path="/sip-trunk/trunk/asterisk/") == [
        ("ssm:GetParametersByPath", "arn:aws:ssm:us-east-1:123456789012:parameter/sip-trunk/trunk/asterisk")
    ]


def test_invoking_a_function_by_name_is_authorized_on_its_arn() -> None:
    # PROBE_FUNCTION holds `!Ref SipProbeFunction`, a name; the policy names `!GetAtt SipProbeFunction.Arn`
    arn = "arn:aws:lambda:us-east-1:123456789012:function:trunk-SipProbeFunction-X1"
    assert actions("lambda", "Invoke", FunctionName="trunk-SipProbeFunction-X1") == [("lambda:InvokeFunction", arn)]
    assert actions("lambda", "Invoke", FunctionName=arn) == [("lambda:InvokeFunction", arn)]


def test_an_operation_the_mapping_does_not_know_fails_loudly() -> None:
    with pytest.raises(AssertionError, match="teach requests_for"):
        needs("iam", "CreateUser", UserName="x")


def test_the_tests_own_calls_have_no_principal() -> None:
    import sys

    assert principal_of(sys._getframe()) == ("", None)
