"""Documented AWS limits the code can reach that boto3 does not check before it calls AWS.

botocore validates types and minimum lengths only; these limits (name prefixes, value sizes, lengths,
depths) are the service's, answered with an error at run time. Each is checked here, where the adapters
(and `sip_trunk.configstore`) call AWS, and a value over the limit raises `AwsLimitExceeded` naming the limit
before any request leaves. moto does not enforce most of them (see tests/unit/test_aws_limits.py).

Standard library only: the host agent imports this through `sip_trunk.configstore`. The workflows may
use it to fit a value they hand to a state machine (the SNS subject).

Considered and not listed, because the code cannot reach them: DynamoDB's 400 KB item (the largest item,
a provision history record, holds a Step Functions cause of at most 32 KB); CloudFormation stack names
(128) and parameter values (4,096 bytes) (the host stack is `<stack>-host` and the stack name is bounded
by the 80-character state machine names `<stack>-provision`); TemplateBody (51,200 bytes) (the host
template goes by TemplateURL, 1 MB); tags (one per stack); Step Functions input (256 KB) (the health
check's two-field payload); Secrets Manager values (64 KB) (read only); CloudWatch dimensions (30) and
EMF limits (fixed dimensions; Powertools checks its own); S3 keys (1,024 bytes); GetCommandInvocation's
first 24,000 characters of output (the adapter keeps the last 500 of them, for messages only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sip_trunk.errors import AwsLimitExceeded as AwsLimitExceeded

_SSM_PUT = "https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_PutParameter.html"
_SSM_TIERS = "https://docs.aws.amazon.com/systems-manager/latest/userguide/parameter-store-advanced-parameters.html"
_RUN_COMMAND = "https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_SendCommand.html"
_SFN_START = "https://docs.aws.amazon.com/step-functions/latest/apireference/API_StartExecution.html"
_SNS_PUBLISH = "https://docs.aws.amazon.com/sns/latest/api/API_Publish.html"


@dataclass(frozen=True)
class Limit:
    """One documented limit: `name` (stable, used in errors and tests), its value and where it is documented."""

    name: str
    value: int
    unit: str
    doc: str


SSM_RESERVED_PREFIX = Limit("ssm.parameter-name.reserved-prefix", 0, "names starting 'aws'/'ssm'", _SSM_PUT)
"""A parameter name can't be prefixed with "aws" or "ssm" (case-insensitive), with or without a leading `/`."""
SSM_NAME_LENGTH = Limit("ssm.parameter-name.length", 1011, "characters including the parameter ARN", _SSM_PUT)
"""The maximum length for a parameter name, including the full length of the parameter ARN, is 1011."""
SSM_HIERARCHY_DEPTH = Limit("ssm.parameter-name.depth", 15, "levels", _SSM_PUT)
"""Parameter hierarchies are limited to a maximum depth of fifteen levels."""
SSM_VALUE_STANDARD = Limit("ssm.parameter-value.standard", 4096, "bytes", _SSM_TIERS)
"""Standard parameters: value up to 4 KB."""
SSM_VALUE_ADVANCED = Limit("ssm.parameter-value.advanced", 8192, "bytes", _SSM_TIERS)
"""Advanced parameters: value up to 8 KB."""
RUN_COMMAND_COMMENT = Limit("ssm.send-command.comment", 100, "characters", _RUN_COMMAND)
"""User-specified information about the command; maximum length 100."""
SFN_EXECUTION_NAME = Limit("states.execution-name.length", 80, "characters", _SFN_START)
"""An execution name: 1-80 characters, none of whitespace, brackets, wildcards, `"#%\\^|~`$&,;:/` or controls."""
SNS_SUBJECT = Limit("sns.publish.subject", 100, "ASCII characters, no line breaks", _SNS_PUBLISH)
"""Subjects must be ASCII text that begins with a letter, number or punctuation mark, without line breaks
or control characters, and at most 100 characters long."""

LIMITS = (
    SSM_RESERVED_PREFIX,
    SSM_NAME_LENGTH,
    SSM_HIERARCHY_DEPTH,
    SSM_VALUE_STANDARD,
    SSM_VALUE_ADVANCED,
    RUN_COMMAND_COMMENT,
    SFN_EXECUTION_NAME,
    SNS_SUBJECT,
)

SSM_ARN_OVERHEAD = len("arn:aws-us-gov:ssm:ap-southeast-5:123456789012:parameter")
"""The longest ARN prefix in front of a name (partition `aws-us-gov`, a 14-character Region): counted
against `SSM_NAME_LENGTH` so that a name valid here is valid in every Region."""

_SFN_NAME_FORBIDDEN = re.compile(r"[\s<>{}\[\]?*\"#%\\^|~`$&,;:/\x00-\x1f\x7f-\x9f]")


def check_parameter_name(name: str) -> str:
    """`name` if SSM accepts it as a parameter name (reserved first segment, depth, length); else raise."""
    first = name.lstrip("/").split("/", 1)[0].lower()
    if first.startswith(("aws", "ssm")):
        raise AwsLimitExceeded(SSM_RESERVED_PREFIX, f"parameter {name!r} starts with a reserved segment")
    depth = len([part for part in name.split("/") if part])
    if depth > SSM_HIERARCHY_DEPTH.value:
        raise AwsLimitExceeded(SSM_HIERARCHY_DEPTH, f"parameter {name[:120]!r} is {depth} levels deep")
    if SSM_ARN_OVERHEAD + len(name) > SSM_NAME_LENGTH.value:
        raise AwsLimitExceeded(SSM_NAME_LENGTH, f"parameter name of {len(name)} characters (+ its ARN)")
    return name


def parameter_tier(value: str) -> str:
    """The smallest tier that holds `value` ("Standard" or "Advanced"); raise when no tier does."""
    size = len(value.encode())
    if size <= SSM_VALUE_STANDARD.value:
        return "Standard"
    if size <= SSM_VALUE_ADVANCED.value:
        return "Advanced"
    raise AwsLimitExceeded(SSM_VALUE_ADVANCED, f"parameter value of {size} bytes")


def check_parameter_value(name: str, value: str, tier: str) -> None:
    """Raise when `value` does not fit `tier` ("Standard" when not given, as SSM defaults)."""
    limit = SSM_VALUE_ADVANCED if tier == "Advanced" else SSM_VALUE_STANDARD
    size = len(value.encode())
    if size > limit.value:
        raise AwsLimitExceeded(limit, f"value of {name!r} is {size} bytes ({tier or 'Standard'} tier)")


def fit_command_comment(comment: str) -> str:
    """Run Command's comment is informational: cut to its limit rather than refuse the command."""
    return comment[: RUN_COMMAND_COMMENT.value]


def check_execution_name(name: str) -> str:
    """`name` if Step Functions accepts it as an execution name; else raise."""
    if not 1 <= len(name) <= SFN_EXECUTION_NAME.value:
        raise AwsLimitExceeded(SFN_EXECUTION_NAME, f"execution name of {len(name)} characters")
    bad = _SFN_NAME_FORBIDDEN.search(name)
    if bad:
        raise AwsLimitExceeded(SFN_EXECUTION_NAME, f"execution name {name!r} contains {bad.group()!r}")
    return name


def fit_sns_subject(subject: str) -> str:
    """An e-mail subject SNS accepts: printable ASCII, line breaks and controls as spaces, cut to the limit."""
    text = "".join(ch if " " <= ch <= "~" else ("?" if ord(ch) > 127 else " ") for ch in subject)
    return text[: SNS_SUBJECT.value]
