"""The documented AWS limits of `sip_trunk.limits`, enforced where the code calls AWS.

Each case gives an adapter (or `sip_trunk.configstore`) a value over one limit and a client that records
calls: the adapter must refuse with `AwsLimitExceeded` naming that limit before any call. That moto alone
accepts these values is shown in tests/integration/test_aws_limits_moto.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from sip_trunk import configstore, limits
from sip_trunk.aws.runcommand import SsmCommands
from sip_trunk.aws.ssm import SsmConfigStore
from sip_trunk.aws.stepfunctions import SfnExecutions
from sip_trunk.limits import AwsLimitExceeded, Limit
from sip_trunk.manifest import MANIFEST_NAME, Manifest

pytestmark = pytest.mark.unit

VERSION_PREFIX = "/sip-trunk/stk/asterisk"


class RecordingClient:
    """Any boto3 client: records each call and answers like a successful one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def __getattr__(self, operation: str) -> Any:
        def call(**kwargs: Any) -> dict[str, Any]:
            self.calls.append((operation, kwargs))
            return {"Command": {"CommandId": "c-1"}, "executionArn": "arn:execution"}

        return call


def config_set(files: dict[str, bytes]) -> tuple[dict[str, bytes], str]:
    manifest = Manifest.for_files(files)
    return {**files, MANIFEST_NAME: manifest.to_json()}, manifest.version


def refused(limit: Limit, exc: pytest.ExceptionInfo[AwsLimitExceeded]) -> None:
    assert exc.value.limit is limit
    assert limit.name in str(exc.value)
    assert limit.doc in str(exc.value)


@pytest.mark.parametrize("prefix", ["/aws-sip-trunk/asterisk", "aws-sip-trunk/asterisk", "/SSM-trunk/asterisk"])
def test_a_reserved_first_segment_is_refused_before_any_call(prefix: str) -> None:
    ssm = RecordingClient()
    files, version = config_set({"asterisk/rtp.conf": b"[general]\n"})
    with pytest.raises(AwsLimitExceeded) as exc:
        configstore.publish_config(ssm, prefix, files, [], version)
    refused(limits.SSM_RESERVED_PREFIX, exc)
    with pytest.raises(AwsLimitExceeded):
        SsmConfigStore(prefix, ssm).set_desired_version(version)
    assert ssm.calls == []


def test_names_that_only_contain_aws_or_ssm_later_are_accepted() -> None:
    for name in ["/sip-trunk/aws-sip-trunk/settings", "/trunk-ssm/x", "/awning/x", "/sip/aws"]:
        assert limits.check_parameter_name(name) == name


def test_a_hierarchy_deeper_than_fifteen_levels_is_refused() -> None:
    ssm = RecordingClient()
    prefix = "/" + "/".join(f"level{i}" for i in range(12))  # + version + asterisk/sub/rtp.conf = 16 levels
    files, version = config_set({"asterisk/sub/rtp.conf": b"[general]\n"})
    with pytest.raises(AwsLimitExceeded) as exc:
        configstore.publish_config(ssm, prefix, files, [], version)
    refused(limits.SSM_HIERARCHY_DEPTH, exc)
    assert ssm.calls == []
    assert limits.check_parameter_name("/" + "/".join(f"l{i}" for i in range(15)))


def test_a_name_too_long_with_its_arn_is_refused() -> None:
    ssm = RecordingClient()
    prefix = "/sip-trunk/" + "x" * 960
    files, version = config_set({"asterisk/rtp.conf": b"[general]\n"})
    with pytest.raises(AwsLimitExceeded) as exc:
        configstore.publish_config(ssm, prefix, files, [], version)
    refused(limits.SSM_NAME_LENGTH, exc)
    assert ssm.calls == []
    longest = "/" + "n" * (limits.SSM_NAME_LENGTH.value - limits.SSM_ARN_OVERHEAD - 1)
    assert limits.check_parameter_name(longest) == longest


def test_a_value_over_the_advanced_tier_is_refused_before_any_call() -> None:
    ssm = RecordingClient()
    with pytest.raises(AwsLimitExceeded) as exc:
        SsmConfigStore(VERSION_PREFIX, ssm).set_desired_version("v" * (limits.SSM_VALUE_ADVANCED.value + 1))
    refused(limits.SSM_VALUE_ADVANCED, exc)
    assert ssm.calls == []


def test_a_value_over_the_standard_tier_is_refused_in_that_tier() -> None:
    with pytest.raises(AwsLimitExceeded) as exc:
        limits.check_parameter_value("/p", "x" * 4097, "Standard")
    refused(limits.SSM_VALUE_STANDARD, exc)
    limits.check_parameter_value("/p", "x" * 4097, "Advanced")


@pytest.mark.parametrize(
    ("size", "tier"), [(1, "Standard"), (4096, "Standard"), (4097, "Advanced"), (8192, "Advanced")]
)
def test_each_value_goes_to_the_smallest_tier_that_holds_it(size: int, tier: str) -> None:
    assert limits.parameter_tier("x" * size) == tier


def test_multibyte_values_are_measured_in_bytes() -> None:
    with pytest.raises(AwsLimitExceeded):
        limits.parameter_tier("é" * 4097)  # 4,097 characters, 8,194 bytes


def test_published_values_and_tiers_stay_within_the_limits() -> None:
    ssm = RecordingClient()
    big = b"".join(b"exten => %d,1,NoOp()\n" % i for i in range(1200))  # ~27 KB
    files, version = config_set({"asterisk/extensions.conf": big, "asterisk/rtp.conf": b"[general]\n"})
    names = configstore.publish_config(ssm, VERSION_PREFIX, files, [], version)
    puts = [kwargs for op, kwargs in ssm.calls if op == "put_parameter"]
    assert [p["Name"] for p in puts] == names
    assert names[-1].endswith(MANIFEST_NAME)
    for put in puts:
        limits.check_parameter_value(put["Name"], put["Value"], put["Tier"])
        assert put["Tier"] == limits.parameter_tier(put["Value"])
    parts = [p for p in puts if ".part-" in p["Name"]]
    assert len(parts) == len(configstore.split_value(big))
    assert len(parts) > 3
    assert "".join(p["Value"] for p in parts).encode() == big
    assert all(p["Value"].endswith("\n") for p in parts)


@pytest.mark.parametrize(
    "data",
    [b"x" * 20000, ("é" * 9000).encode(), b"line\n" * 5000, b"", b"a" * 8192, b"a" * 8193],
)
def test_split_value_pieces_fit_and_join_back(data: bytes) -> None:
    pieces = configstore.split_value(data)
    assert b"".join(pieces) == data
    for piece in pieces:
        assert len(piece) <= limits.SSM_VALUE_ADVANCED.value
        piece.decode()  # never cut inside a UTF-8 character


def test_a_run_command_comment_is_cut_to_its_limit() -> None:
    ssm = RecordingClient()
    SsmCommands(ssm).send(["i-0123456789abcdef0"], ["true"], "e" * 80 + ": apply v0123456789abcdef")
    (operation, kwargs), *_ = ssm.calls
    assert operation == "send_command"
    assert len(kwargs["Comment"]) == limits.RUN_COMMAND_COMMENT.value
    assert kwargs["Comment"] == ("e" * 80 + ": apply v0123456789abcdef")[:100]


@pytest.mark.parametrize("name", ["h" * 81, "", "health:1", "health 1", "a/b", "a{b}", "tab\tname"])
def test_an_invalid_execution_name_is_refused_before_any_call(name: str) -> None:
    sfn = RecordingClient()
    with pytest.raises(AwsLimitExceeded) as exc:
        SfnExecutions(sfn).start("arn:aws:states:us-east-1:123456789012:stateMachine:stk-failover", name, {})
    refused(limits.SFN_EXECUTION_NAME, exc)
    assert sfn.calls == []


def test_a_valid_execution_name_is_started() -> None:
    sfn = RecordingClient()
    name = "health-" + "0123abcd-" * 8
    SfnExecutions(sfn).start("arn:aws:states:us-east-1:123456789012:stateMachine:stk-failover", name[:80], {})
    assert sfn.calls[0][1]["name"] == name[:80]


@pytest.mark.parametrize("subject", ["[sip-trunk] " + "s" * 200, "two\nlines", "caf\u00e9 \u2013 down", "tab\there"])
def test_sns_subjects_are_fitted(subject: str) -> None:
    fitted = limits.fit_sns_subject(subject)
    assert len(fitted) <= limits.SNS_SUBJECT.value
    assert fitted.isascii()
    assert fitted.isprintable()
    assert fitted[:3] == subject[:3]


def test_every_limit_names_its_aws_document() -> None:
    assert len({limit.name for limit in limits.LIMITS}) == len(limits.LIMITS)
    for limit in limits.LIMITS:
        assert limit.doc.startswith("https://docs.aws.amazon.com/"), limit


@pytest.mark.parametrize("stack", ["aws-sip-trunk", "SSM-trunk", "sip-trunk", "a" + "b" * 69])
def test_every_name_derived_from_a_stack_name_is_a_valid_parameter_name(stack: str) -> None:
    from sip_trunk.agent.config import AgentConfig

    derived = [configstore.stack_parameter(stack, leaf) for leaf in ("settings", "host-parameters")]
    prefix = AgentConfig(stack=stack).prefix
    assert prefix == configstore.stack_parameter(stack, "asterisk")
    for name in [*derived, f"{prefix}/v0123456789abcdef/fail2ban/filter.d/asterisk-sip-trunk.conf.part-001"]:
        assert limits.check_parameter_name(name) == name
