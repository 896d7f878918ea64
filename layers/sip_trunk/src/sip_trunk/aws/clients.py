"""boto3 clients, created lazily and cached per process, and the translation of AWS errors every adapter shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from sip_trunk.errors import AwsThrottled

_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20)


@cache
def client(service: str) -> Any:
    """A shared client for `service` (typed `Any`: each adapter narrows what it uses)."""
    return boto3.client(service, config=_CONFIG)  # type: ignore[call-overload]


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore `ClientError` (empty for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "EC2ThrottledException",
    }
)
"""The codes botocore's standard retry mode treats as throttling, less `LimitExceededException` (a quota in
CloudFormation and SSM, which waiting does not lift) and the transaction-conflict codes."""


@contextmanager
def aws_call(what: str) -> Iterator[None]:
    """Around every AWS call of an adapter: throttling that outlived the SDK's retries becomes the retryable
    `AwsThrottled`; every other error passes unchanged (the adapter translates the few it knows first)."""
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if code in THROTTLING_CODES:
            raise AwsThrottled(f"{what}: AWS throttled the call ({code})") from exc
        raise


def reset() -> None:
    client.cache_clear()
