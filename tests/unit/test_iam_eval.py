"""The permission proof's policy evaluator decides as AWS documents: each rule with the case that flips it."""

from __future__ import annotations

from typing import Any

import pytest
from support.iam_eval import Policy, Request, evaluate, evaluate_with_key_policy, wildcard_match

pytestmark = pytest.mark.unit

ROLE = "arn:aws:iam::123456789012:role/trunk-HostRole"
TABLE = "arn:aws:dynamodb:us-east-1:123456789012:table/trunk-state"


def policy(*statements: dict[str, Any]) -> list[Policy]:
    return [Policy("p", {"Version": "2012-10-17", "Statement": list(statements)})]


def allow(action: Any, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Sid": "S", "Effect": "Allow", "Action": action, "Resource": resource, **extra}


def test_allow_names_the_statement_and_anything_else_is_denied() -> None:
    p = policy(allow("dynamodb:PutItem", TABLE))
    decision = evaluate(p, Request("dynamodb:PutItem", TABLE))
    assert decision.allowed
    assert decision.allowed_by == ("p/S",)
    assert not evaluate(p, Request("dynamodb:GetItem", TABLE))
    assert not evaluate(p, Request("dynamodb:PutItem", TABLE + "-other"))


def test_explicit_deny_wins_over_allow() -> None:
    p = policy(allow("s3:*"), {"Sid": "NoTls", "Effect": "Deny", "Action": "s3:*", "Resource": "*"})
    decision = evaluate(p, Request("s3:GetObject", "arn:aws:s3:::b/k"))
    assert not decision.allowed
    assert decision.denied_by == "p/NoTls"


def test_actions_are_case_insensitive_resources_are_not() -> None:
    p = policy(allow("DynamoDB:putitem", "arn:aws:s3:::Bucket/*"))
    assert evaluate(p, Request("dynamodb:PutItem", "arn:aws:s3:::Bucket/k"))
    assert not evaluate(p, Request("dynamodb:PutItem", "arn:aws:s3:::bucket/k"))


def test_wildcards_span_slashes_and_colons_question_mark_is_one_character() -> None:
    assert wildcard_match(
        "arn:aws:ssm:*:*:parameter/sip-trunk/trunk/*", "arn:aws:ssm:r:1:parameter/sip-trunk/trunk/a/b"
    )
    assert wildcard_match("log-group:a?c", "log-group:abc")
    assert not wildcard_match("log-group:a?c", "log-group:abbc")
    assert not wildcard_match("key/[ab]", "key/a")  # brackets are literal in IAM


def test_not_action_and_not_resource() -> None:
    p = policy({"Effect": "Allow", "NotAction": "iam:*", "NotResource": "arn:aws:s3:::secret/*"})
    assert evaluate(p, Request("s3:GetObject", "arn:aws:s3:::open/k"))
    assert not evaluate(p, Request("iam:PassRole", "arn:aws:s3:::open/k"))
    assert not evaluate(p, Request("s3:GetObject", "arn:aws:s3:::secret/k"))


def test_string_equals_needs_the_key_and_any_listed_value() -> None:
    via = {"StringEquals": {"kms:ViaService": ["ssm.us-east-1.amazonaws.com", "s3.us-east-1.amazonaws.com"]}}
    p = policy(allow("kms:Decrypt", Condition=via))
    assert evaluate(p, Request("kms:Decrypt", "k", {"kms:ViaService": "s3.us-east-1.amazonaws.com"}))
    assert not evaluate(p, Request("kms:Decrypt", "k", {"kms:ViaService": "dynamodb.us-east-1.amazonaws.com"}))
    assert not evaluate(p, Request("kms:Decrypt", "k"))  # a direct call has no ViaService


def test_condition_keys_are_case_insensitive_values_are_not() -> None:
    p = policy(allow("cloudwatch:PutMetricData", Condition={"StringEquals": {"cloudwatch:namespace": "A/Host"}}))
    assert evaluate(p, Request("cloudwatch:PutMetricData", "*", {"CloudWatch:Namespace": "A/Host"}))
    assert not evaluate(p, Request("cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "a/host"}))


def test_string_not_equals_holds_when_the_key_is_absent_and_if_exists_relaxes_positive_operators() -> None:
    negated = policy(allow("s3:GetObject", Condition={"StringNotEquals": {"s3:prefix": "private/"}}))
    assert evaluate(negated, Request("s3:GetObject", "r"))
    assert not evaluate(negated, Request("s3:GetObject", "r", {"s3:prefix": "private/"}))
    if_exists = policy(allow("s3:GetObject", Condition={"StringEqualsIfExists": {"s3:prefix": "hosts/"}}))
    assert evaluate(if_exists, Request("s3:GetObject", "r"))
    assert not evaluate(if_exists, Request("s3:GetObject", "r", {"s3:prefix": "other/"}))


def test_string_like_prefix() -> None:
    p = policy(allow("s3:ListBucket", Condition={"StringLike": {"s3:prefix": ["hosts/*"]}}))
    assert evaluate(p, Request("s3:ListBucket", "b", {"s3:prefix": "hosts/i-1/"}))
    assert not evaluate(p, Request("s3:ListBucket", "b", {"s3:prefix": "templates/"}))
    assert not evaluate(p, Request("s3:ListBucket", "b"))  # listing the whole bucket


def test_for_all_values_every_value_must_match_and_an_absent_key_passes() -> None:
    leading = {"ForAllValues:StringLike": {"dynamodb:LeadingKeys": ["host#*"]}}
    p = policy(allow("dynamodb:PutItem", TABLE, Condition=leading))
    assert evaluate(p, Request("dynamodb:PutItem", TABLE, {"dynamodb:LeadingKeys": ["host#i-1"]}))
    assert not evaluate(p, Request("dynamodb:PutItem", TABLE, {"dynamodb:LeadingKeys": ["host#i-1", "deployment"]}))
    assert not evaluate(p, Request("dynamodb:PutItem", TABLE, {"dynamodb:LeadingKeys": ["deployment"]}))
    assert evaluate(p, Request("dynamodb:PutItem", TABLE))  # AWS's documented trap: no key, vacuously true


def test_for_any_value_one_value_is_enough_and_an_absent_key_fails() -> None:
    p = policy(allow("ec2:RunInstances", Condition={"ForAnyValue:StringEquals": {"aws:TagKeys": ["a", "b"]}}))
    assert evaluate(p, Request("ec2:RunInstances", "r", {"aws:TagKeys": ["z", "b"]}))
    assert not evaluate(p, Request("ec2:RunInstances", "r", {"aws:TagKeys": ["z"]}))
    assert not evaluate(p, Request("ec2:RunInstances", "r"))


def test_arn_like_matches_part_by_part() -> None:
    logs = {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": "arn:aws:logs:us-east-1:123456789012:log-group:*"}}
    p = policy(allow("kms:Decrypt", Condition=logs))
    group = "arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/x"
    assert evaluate(p, Request("kms:Decrypt", "k", {"kms:EncryptionContext:aws:logs:arn": group}))
    other_region = group.replace("us-east-1", "eu-west-1")
    assert not evaluate(p, Request("kms:Decrypt", "k", {"kms:EncryptionContext:aws:logs:arn": other_region}))


def test_every_operator_and_key_must_hold() -> None:
    both = {"StringEquals": {"iam:PassedToService": "cloudformation.amazonaws.com", "aws:RequestedRegion": "r"}}
    p = policy(allow("iam:PassRole", Condition=both))
    ctx = {"iam:PassedToService": "cloudformation.amazonaws.com", "aws:RequestedRegion": "r"}
    assert evaluate(p, Request("iam:PassRole", "role", ctx))
    assert not evaluate(p, Request("iam:PassRole", "role", {**ctx, "iam:PassedToService": "ec2.amazonaws.com"}))


def test_bool_and_null() -> None:
    deny_plain = {
        "Effect": "Deny",
        "Action": "s3:*",
        "Resource": "*",
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    p = policy(allow("s3:*"), deny_plain)
    assert evaluate(p, Request("s3:GetObject", "r", {"aws:SecureTransport": "true"}))
    assert not evaluate(p, Request("s3:GetObject", "r", {"aws:SecureTransport": "false"}))
    untagged = policy(allow("ec2:RunInstances", Condition={"Null": {"aws:RequestTag/stack": "false"}}))
    assert evaluate(untagged, Request("ec2:RunInstances", "r", {"aws:RequestTag/stack": "trunk"}))
    assert not evaluate(untagged, Request("ec2:RunInstances", "r"))


def test_an_unknown_operator_raises_instead_of_guessing() -> None:
    p = policy(allow("s3:GetObject", Condition={"DateLessThan": {"aws:CurrentTime": "2030-01-01"}}))
    with pytest.raises(NotImplementedError, match="DateLessThan"):
        evaluate(p, Request("s3:GetObject", "r", {"aws:CurrentTime": "2026-01-01"}))


KEY_POLICY = Policy(
    "StackKey",
    {
        "Statement": [
            {
                "Sid": "AccountAdministers",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "Services",
                "Effect": "Allow",
                "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "kms:Decrypt",
                "Resource": "*",
            },
        ]
    },
)


def test_key_policy_delegating_to_the_account_needs_the_callers_own_allow() -> None:
    key = "arn:aws:kms:us-east-1:123456789012:key/k"
    via = {"kms:ViaService": "dynamodb.us-east-1.amazonaws.com"}
    request = Request("kms:Decrypt", key, via, principal=ROLE)
    own = policy(allow("kms:Decrypt", "arn:aws:kms:us-east-1:123456789012:key/*", Condition={"StringEquals": via}))
    decision = evaluate_with_key_policy(own, KEY_POLICY, request)
    assert decision.allowed
    assert "StackKey/AccountAdministers" in decision.allowed_by
    assert not evaluate_with_key_policy(policy(allow("s3:GetObject")), KEY_POLICY, request)
    stranger = Request("kms:Decrypt", key, via, principal="arn:aws:iam::999999999999:role/x")
    assert not evaluate_with_key_policy(own, KEY_POLICY, stranger)
