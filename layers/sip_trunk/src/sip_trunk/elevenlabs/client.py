"""The HTTP client for the ElevenLabs endpoints the gateway needs, with retries and redaction.

Only the standard library does HTTP here: the Lambda layer stays small and has no HTTP dependency to patch.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from sip_trunk.elevenlabs.errors import (
    ElevenLabsAuthError,
    ElevenLabsError,
    ElevenLabsNotFound,
    ElevenLabsRateLimited,
    ElevenLabsRetryableError,
    ElevenLabsUnavailable,
    ElevenLabsValidationError,
)
from sip_trunk.elevenlabs.models import REDACTED, CreatedPhoneNumber, DesiredTrunk, OutboundCallResult, PhoneNumber

__all__ = ["DEFAULT_BASE_URL", "ElevenLabsClient"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
PHONE_NUMBERS_PATH = "/v1/convai/phone-numbers"
OUTBOUND_CALL_PATH = "/v1/convai/sip-trunk/outbound-call"

_M = TypeVar("_M", bound=BaseModel)


# --------------------------------------------------------------------------------------------- client
class ElevenLabsClient:
    """Thin, retrying client for the endpoints the gateway needs.

    Retries 429 and 503 (honouring `Retry-After` in seconds), other 5xx, timeouts and connection errors
    with exponential backoff and full jitter. POSTs (create, outbound call) are not idempotent on the server,
    so they are retried only when the request cannot have been acted on (429, 503, connection refused);
    `ensure_trunk` covers the rest.
    """

    def __init__(
        self,
        api_key: str | SecretStr,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout_s: float = 10.0,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        max_retry_after_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if not key.get_secret_value():
            raise ValueError("api_key must not be empty")
        scheme = urllib.parse.urlsplit(base_url).scheme
        if scheme not in {"https", "http"}:
            raise ValueError("base_url must be an http(s) URL")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self._api_key = key
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"ElevenLabsClient(base_url={self.base_url!r}, api_key='{REDACTED}')"

    # ------------------------------------------------------------------------------------ endpoints
    def get_phone_number(self, phone_number_id: str) -> PhoneNumber:
        data = self._request("GET", f"{PHONE_NUMBERS_PATH}/{_segment(phone_number_id)}")
        return _parse(PhoneNumber, data)

    def list_phone_numbers(self) -> list[PhoneNumber]:
        data = self._request("GET", PHONE_NUMBERS_PATH)
        if not isinstance(data, list):
            raise ElevenLabsError("GET phone-numbers: expected a JSON list")
        return [_parse(PhoneNumber, item) for item in data]

    def find_by_number(self, e164: str) -> PhoneNumber | None:
        """The list view may omit trunk details, so the match is re-read by id."""
        for item in self.list_phone_numbers():
            if item.phone_number == e164:
                return self.get_phone_number(item.phone_number_id)
        return None

    def create_sip_trunk_phone_number(self, desired: DesiredTrunk) -> str:
        body = {"provider": "sip_trunk", "phone_number": desired.phone_number, **desired.request_body()}
        data = self._request("POST", PHONE_NUMBERS_PATH, body=body, secrets=desired.secrets())
        return _parse(CreatedPhoneNumber, data).phone_number_id

    def update_phone_number(
        self, phone_number_id: str, desired: DesiredTrunk, current: PhoneNumber | None = None
    ) -> PhoneNumber:
        """PATCH the number: with `current` (the number as read) a read-merge-write, else the whole trunk."""
        path = f"{PHONE_NUMBERS_PATH}/{_segment(phone_number_id)}"
        body = desired.request_body() if current is None else desired.update_body(current)
        data = self._request("PATCH", path, body=body, secrets=desired.secrets())
        return _parse(PhoneNumber, data)

    def outbound_call(self, agent_id: str, agent_phone_number_id: str, to_number: str) -> OutboundCallResult:
        body = {"agent_id": agent_id, "agent_phone_number_id": agent_phone_number_id, "to_number": to_number}
        return _parse(OutboundCallResult, self._request("POST", OUTBOUND_CALL_PATH, body=body))

    # ------------------------------------------------------------------------------------ transport
    def _request(
        self, method: str, path: str, *, body: dict[str, Any] | None = None, secrets: Iterable[str] = ()
    ) -> Any:
        hidden = [self._api_key.get_secret_value(), *secrets]
        idempotent = method != "POST"
        data = None if body is None else json.dumps(body).encode()
        headers = {"xi-api-key": self._api_key.get_secret_value(), "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        what = f"{method} {path}"
        attempt = 0
        while True:
            attempt += 1
            # The scheme was checked in __init__ (http/https only), hence the S310 waivers.
            request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)  # noqa: S310
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
                    raw = response.read()
                return json.loads(raw) if raw else None
            except urllib.error.HTTPError as exc:
                status = exc.code
                payload = _read_error_body(exc)
                retry_after = _retry_after(exc.headers.get("Retry-After"))
                exc.close()
                retryable = status == 429 or status == 503 or (status >= 500 and idempotent)
                if not retryable:
                    raise _http_error(what, status, payload, hidden) from None
                if attempt >= self.max_attempts:
                    cls: type[ElevenLabsRetryableError] = (
                        ElevenLabsRateLimited if status == 429 else ElevenLabsUnavailable
                    )
                    raise cls(
                        _redact(f"{what}: HTTP {status} after {attempt} attempts", hidden), status=status
                    ) from None
                delay = self._delay(attempt, retry_after)
                reason = f"HTTP {status}"
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = _redact(_describe(exc), hidden)
                refused = isinstance(_root(exc), ConnectionRefusedError)
                if not (idempotent or refused) or attempt >= self.max_attempts:
                    raise ElevenLabsUnavailable(f"{what}: {reason} after {attempt} attempts") from None
                delay = self._delay(attempt, None)
            logger.warning(
                "ElevenLabs %s: %s; retry %d/%d in %.2fs", what, reason, attempt, self.max_attempts - 1, delay
            )
            self._sleep(delay)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)  # noqa: S311 -- jitter, not cryptography


# ------------------------------------------------------------------------------------------- helpers
def _segment(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _parse(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        # Pydantic's message echoes the input; keep only where and what.
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ElevenLabsError(f"unexpected {model.__name__} response ({where})") from None


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def _read_error_body(exc: urllib.error.HTTPError) -> Any:
    try:
        raw = exc.read()
    except OSError:
        return None
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode("utf-8", "replace")[:200]


def _retry_after(value: str | None) -> float | None:
    """Seconds form only; an HTTP-date falls back to our own backoff."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _detail(payload: Any) -> str:
    """The API's explanation without the `input` FastAPI echoes back (it may hold a password)."""
    if isinstance(payload, dict):
        detail = payload.get("detail", payload)
        if isinstance(detail, list):
            parts = []
            for item in detail:
                if isinstance(item, dict):
                    loc = ".".join(str(p) for p in item.get("loc", []))
                    parts.append(f"{loc}: {item.get('msg', '')}" if loc else str(item.get("msg", "")))
            return "; ".join(parts)
        if isinstance(detail, dict):
            return str(detail.get("message") or detail.get("status") or "")
        return str(detail)
    if isinstance(payload, str):
        return payload
    return ""


def _http_error(what: str, status: int, payload: Any, hidden: list[str]) -> ElevenLabsError:
    detail = _redact(_detail(payload), hidden)
    message = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
    if status in (401, 403):
        return ElevenLabsAuthError(message, status=status)
    if status == 404:
        return ElevenLabsNotFound(message, status=status)
    if status == 422:
        return ElevenLabsValidationError(message, status=status, detail=detail)
    if status >= 500:
        return ElevenLabsUnavailable(message, status=status)
    return ElevenLabsError(message, status=status)


def _root(exc: BaseException) -> BaseException:
    reason = getattr(exc, "reason", None)
    return reason if isinstance(reason, BaseException) else exc


def _describe(exc: BaseException) -> str:
    root = _root(exc)
    return f"{type(root).__name__}: {root}" if str(root) else type(root).__name__
