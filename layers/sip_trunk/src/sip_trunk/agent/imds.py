"""The EC2 instance metadata service, version 2 only: a session token (PUT), then GETs that carry it.

The base URL is injectable (``--imds-url`` / ``SIP_TRUNK_IMDS_URL``) so tests talk to a stand-in on 127.0.0.1.
Instance tags are readable because the launch template sets ``InstanceMetadataTags: enabled``.
"""

from __future__ import annotations

import functools
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable

log = logging.getLogger(__name__)

TOKEN_TTL_S = 300
ROLE_TAG = "aws-sip-trunk:role"


class ImdsError(Exception):
    """The metadata service did not answer (or refused) after the retries."""


class Imds:
    def __init__(
        self,
        base_url: str = "http://169.254.169.254",
        *,
        timeout_s: float = 2.0,
        attempts: int = 5,
        backoff_s: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"IMDS URL must be http(s): {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.sleep = sleep
        self._token: str | None = None
        self._token_at = 0.0

    def _open(self, request: urllib.request.Request) -> bytes:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:  # noqa: S310 - scheme checked above
            data: bytes = resp.read()
            return data

    def _retry(self, what: str, call: Callable[[], bytes]) -> bytes:
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                return call()
            except urllib.error.HTTPError as exc:
                if exc.code in (401, 403, 404):  # an answer, not an outage: retrying will not change it
                    raise
                last = exc
            except OSError as exc:  # URLError, timeouts, refused connections
                last = exc
            if attempt + 1 < self.attempts:
                self.sleep(self.backoff_s * (2**attempt))
        raise ImdsError(f"{what}: {last}")

    def token(self) -> str:
        if self._token is None or time.monotonic() - self._token_at > TOKEN_TTL_S - 30:
            request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
                f"{self.base_url}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
            )
            try:
                self._token = self._retry("IMDSv2 token", functools.partial(self._open, request)).decode().strip()
            except urllib.error.HTTPError as exc:
                raise ImdsError(f"IMDSv2 token refused: HTTP {exc.code}") from exc
            self._token_at = time.monotonic()
        return self._token

    def get(self, path: str) -> str | None:
        """``/latest/meta-data/<path>``; None when the service answers 404 (no such item)."""
        url = f"{self.base_url}/latest/meta-data/{path.lstrip('/')}"
        for refreshed in (False, True):
            token = self.token()
            request = urllib.request.Request(url, headers={"X-aws-ec2-metadata-token": token})  # noqa: S310
            try:
                return self._retry(f"IMDS {path}", functools.partial(self._open, request)).decode().strip()
            except urllib.error.HTTPError as exc:
                if exc.code == 404:
                    return None
                if exc.code == 401 and not refreshed:  # token expired: fetch a new one once
                    self._token = None
                    continue
                raise ImdsError(f"IMDS {path}: HTTP {exc.code}") from exc
        raise ImdsError(f"IMDS {path}: token refused twice")

    def instance_id(self) -> str:
        value = self.get("instance-id")
        if not value:
            raise ImdsError("IMDS has no instance-id")
        return value

    def tag(self, key: str) -> str | None:
        return self.get(f"tags/instance/{urllib.parse.quote(key, safe='')}")

    def role(self) -> str | None:
        return self.tag(ROLE_TAG)
