"""boto3 clients, created lazily and cached per process."""

from __future__ import annotations

from functools import cache
from typing import Any

import boto3
from botocore.config import Config

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


def reset() -> None:
    client.cache_clear()
