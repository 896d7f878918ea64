"""Client for the ElevenLabs Agents phone-number and SIP-trunk API, and the trunk reconciler.

The gateway is only useful if the ElevenLabs phone number points at our Elastic IP with the transport and
digest credentials Asterisk expects, so provisioning compares the number's live configuration with the
desired one and converges it (`ensure_trunk`), and the verification step reuses `diff_trunk`.

Field names follow the public API reference (api-reference/phone-numbers/{create,get,update,list} and
sip-trunk/outbound-call). Requests send `inbound_trunk_config`/`outbound_trunk_config`; responses describe
them as `inbound_trunk`/`outbound_trunk` and never return passwords, only `has_auth_credentials`.

Only the standard library does HTTP here: the Lambda layer stays small and has no HTTP dependency to patch.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

__all__ = [
    "DEFAULT_BASE_URL",
    "AssignedAgent",
    "DesiredTrunk",
    "ElevenLabsAuthError",
    "ElevenLabsClient",
    "ElevenLabsError",
    "ElevenLabsNotFound",
    "ElevenLabsRateLimited",
    "ElevenLabsRetryableError",
    "ElevenLabsUnavailable",
    "ElevenLabsValidationError",
    "InboundTrunk",
    "OutboundCallResult",
    "OutboundTrunk",
    "PhoneNumber",
    "PhoneNumberApi",
    "SyncResult",
    "TrunkConflictError",
    "TrunkMismatch",
    "diff_trunk",
    "ensure_trunk",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
PHONE_NUMBERS_PATH = "/v1/convai/phone-numbers"
OUTBOUND_CALL_PATH = "/v1/convai/sip-trunk/outbound-call"

Transport = Literal["tcp", "tls"]
MediaEncryption = Literal["disabled", "allowed", "required"]

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
# host[:port]: a DNS name or IPv4 address, optional port. No scheme, user, path or parameters: ElevenLabs
# builds the SIP URI itself and anything else would end up in the Request-URI.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_ADDRESS = re.compile(rf"^(?=[^:]{{1,253}}(?::|$)){_LABEL}(?:\.{_LABEL})*(?::\d{{1,5}})?$")
_REDACTED = "***"
_M = TypeVar("_M", bound=BaseModel)


# --------------------------------------------------------------------------------------------- errors
class ElevenLabsError(Exception):
    """Any failure talking to ElevenLabs; messages never carry the API key or SIP passwords."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"


class ElevenLabsAuthError(ElevenLabsError):
    """401/403: the key is wrong or lacks the convai scope; retrying cannot help."""


class ElevenLabsNotFound(ElevenLabsError):
    """404: the phone number (or agent) id does not exist in this workspace."""


class ElevenLabsValidationError(ElevenLabsError):
    """422: the API rejected the body; `detail` is the API's explanation with inputs stripped."""

    def __init__(self, message: str, *, status: int | None = 422, detail: str = "") -> None:
        super().__init__(message, status=status)
        self.detail = detail


class ElevenLabsRetryableError(ElevenLabsError):
    """Transient failure that outlived our retries; a state machine `Retry` may try again later."""


class ElevenLabsRateLimited(ElevenLabsRetryableError):
    """429 on every attempt."""


class ElevenLabsUnavailable(ElevenLabsRetryableError):
    """5xx, timeouts or connection errors on every attempt."""


class TrunkConflictError(ElevenLabsError):
    """The number exists but is not a SIP-trunk number (e.g. imported from Twilio); PATCH cannot fix that."""


# ---------------------------------------------------------------------------------------- API models
class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OutboundTrunk(_ApiModel):
    """`outbound_trunk` of a phone number: where ElevenLabs sends INVITEs (our gateway).

    Relied on: address, transport, media_encryption, has_auth_credentials, username.
    """

    address: str
    transport: str = "auto"
    media_encryption: str = "allowed"
    has_auth_credentials: bool = False
    username: str | None = None


class InboundTrunk(_ApiModel):
    """`inbound_trunk` of a phone number: how ElevenLabs accepts our INVITEs.

    Relied on: media_encryption, has_auth_credentials, username.
    """

    media_encryption: str = "allowed"
    has_auth_credentials: bool = False
    username: str | None = None
    allowed_addresses: list[str] | None = None


class AssignedAgent(_ApiModel):
    """Relied on: agent_id."""

    agent_id: str
    agent_name: str | None = None


class PhoneNumber(_ApiModel):
    """A phone number as GET/list return it.

    Relied on: phone_number_id, phone_number, label, provider, assigned_agent.agent_id, outbound_trunk
    (falling back to the deprecated `provider_config`, which older responses use), inbound_trunk.
    """

    phone_number_id: str
    phone_number: str
    label: str = ""
    provider: str = "sip_trunk"
    assigned_agent: AssignedAgent | None = None
    outbound_trunk: OutboundTrunk | None = None
    provider_config: OutboundTrunk | None = None
    inbound_trunk: InboundTrunk | None = None

    @property
    def outbound(self) -> OutboundTrunk | None:
        return self.outbound_trunk or self.provider_config


class _Created(_ApiModel):
    phone_number_id: str


class OutboundCallResult(_ApiModel):
    """Relied on: success, conversation_id, sip_call_id (the last two are null when the call failed)."""

    success: bool
    message: str = ""
    conversation_id: str | None = None
    sip_call_id: str | None = None


# ------------------------------------------------------------------------------------ desired state
class DesiredTrunk(BaseModel):
    """What the ElevenLabs phone number must look like for calls to reach our gateway and back.

    `username`/`password` are what ElevenLabs presents to Asterisk (outbound trunk digest); the optional
    inbound pair is what Asterisk presents to ElevenLabs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    phone_number: str
    label: str = Field(min_length=1, max_length=200)
    address: str
    transport: Transport = "tcp"
    media_encryption: MediaEncryption = "disabled"
    username: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._~+-]+$")
    password: SecretStr
    inbound_username: str | None = Field(default=None, min_length=1, max_length=128)
    inbound_password: SecretStr | None = None
    agent_id: str | None = Field(default=None, min_length=1)

    @field_validator("phone_number")
    @classmethod
    def _e164(cls, value: str) -> str:
        if not _E164.fullmatch(value):
            raise ValueError("phone_number must be E.164, e.g. +14155550100")
        return value

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not _ADDRESS.fullmatch(value):
            raise ValueError("address must be host[:port] with no scheme, user or parameters")
        if ":" in value and not 0 < int(value.rsplit(":", 1)[1]) < 65536:
            raise ValueError("address port must be 1-65535")
        return value

    @field_validator("password", "inbound_password")
    @classmethod
    def _non_empty_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            raise ValueError("password must not be empty")
        return value

    @model_validator(mode="after")
    def _inbound_pair(self) -> DesiredTrunk:
        if (self.inbound_username is None) != (self.inbound_password is None):
            raise ValueError("inbound_username and inbound_password go together")
        return self

    def secrets(self) -> list[str]:
        """Values that must never reach a message or log."""
        found = [self.password.get_secret_value()]
        if self.inbound_password is not None:
            found.append(self.inbound_password.get_secret_value())
        return found

    def request_body(self) -> dict[str, Any]:
        """Body shared by create and update: the whole trunk, so an update converges every field."""
        inbound: dict[str, Any] = {"media_encryption": self.media_encryption}
        if self.inbound_username is not None and self.inbound_password is not None:
            inbound["credentials"] = {
                "username": self.inbound_username,
                "password": self.inbound_password.get_secret_value(),
            }
        body: dict[str, Any] = {
            "label": self.label,
            "inbound_trunk_config": inbound,
            "outbound_trunk_config": {
                "address": self.address,
                "transport": self.transport,
                "media_encryption": self.media_encryption,
                "credentials": {"username": self.username, "password": self.password.get_secret_value()},
            },
        }
        if self.agent_id is not None:
            body["agent_id"] = self.agent_id
        return body


class TrunkMismatch(BaseModel):
    """One field whose live value differs; password fields only ever say `***` / `missing` / `unknown`."""

    model_config = ConfigDict(frozen=True)

    field: str
    desired: str | None
    actual: str | None


class SyncResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Literal["created", "updated", "unchanged"]
    phone_number_id: str
    mismatches: list[TrunkMismatch] = Field(default_factory=list)


def diff_trunk(
    desired: DesiredTrunk, actual: PhoneNumber, *, assume_password_changed: bool = False
) -> list[TrunkMismatch]:
    """Fields to change so `actual` serves `desired`.

    The API never returns passwords, so a configured password counts as equal unless the caller knows it
    rotated (`assume_password_changed`); otherwise every run would PATCH and nothing would be idempotent.
    """
    out: list[TrunkMismatch] = []

    def check(field: str, want: str | None, have: str | None) -> None:
        if want != have:
            out.append(TrunkMismatch(field=field, desired=want, actual=have))

    def check_password(field: str, has_credentials: bool) -> None:
        if not has_credentials:
            out.append(TrunkMismatch(field=field, desired=_REDACTED, actual="missing"))
        elif assume_password_changed:
            out.append(TrunkMismatch(field=field, desired=_REDACTED, actual="unknown"))

    check("provider", "sip_trunk", actual.provider)
    check("phone_number", desired.phone_number, actual.phone_number)
    check("label", desired.label, actual.label)
    if desired.agent_id is not None:
        check("agent_id", desired.agent_id, actual.assigned_agent.agent_id if actual.assigned_agent else None)

    outbound = actual.outbound
    if outbound is None:
        out.append(TrunkMismatch(field="outbound_trunk", desired=desired.address, actual=None))
    else:
        check("outbound_trunk.address", desired.address, outbound.address)
        check("outbound_trunk.transport", desired.transport, outbound.transport)
        check("outbound_trunk.media_encryption", desired.media_encryption, outbound.media_encryption)
        check("outbound_trunk.username", desired.username, outbound.username)
        check_password("outbound_trunk.password", outbound.has_auth_credentials)

    inbound = actual.inbound_trunk
    check("inbound_trunk.media_encryption", desired.media_encryption, inbound.media_encryption if inbound else None)
    if desired.inbound_username is not None:
        check("inbound_trunk.username", desired.inbound_username, inbound.username if inbound else None)
        check_password("inbound_trunk.password", bool(inbound and inbound.has_auth_credentials))
    return out


class PhoneNumberApi(Protocol):
    """The slice of the client `ensure_trunk` needs (a fake implements it in unit tests)."""

    def find_by_number(self, e164: str) -> PhoneNumber | None: ...

    def get_phone_number(self, phone_number_id: str) -> PhoneNumber: ...

    def create_sip_trunk_phone_number(self, desired: DesiredTrunk) -> str: ...

    def update_phone_number(self, phone_number_id: str, desired: DesiredTrunk) -> PhoneNumber: ...


def find_trunk(api: PhoneNumberApi, desired: DesiredTrunk, phone_number_id: str | None = None) -> PhoneNumber | None:
    """The number as ElevenLabs holds it: by its configured id when there is one, else by number.

    A configured id that does not exist raises ElevenLabsNotFound (never silently replaced by a new number),
    and one that belongs to a different number raises TrunkConflictError.
    """
    if phone_number_id is None:
        return api.find_by_number(desired.phone_number)
    actual = api.get_phone_number(phone_number_id)
    if actual.phone_number != desired.phone_number:
        raise TrunkConflictError(
            f"phone number id {phone_number_id} is {actual.phone_number}, not {desired.phone_number}"
        )
    return actual


def ensure_trunk(
    api: PhoneNumberApi,
    desired: DesiredTrunk,
    *,
    assume_password_changed: bool = False,
    phone_number_id: str | None = None,
) -> SyncResult:
    """Create the number if missing, PATCH it if it drifted, otherwise touch nothing.

    Safe to re-run after any failure: a create that succeeded but whose answer was lost is found by number
    on the next run instead of being created twice. With a configured `phone_number_id` nothing is created.
    """
    actual = find_trunk(api, desired, phone_number_id)
    if actual is None:
        phone_number_id = api.create_sip_trunk_phone_number(desired)
        logger.info("created ElevenLabs SIP trunk number %s (%s)", desired.phone_number, phone_number_id)
        return SyncResult(action="created", phone_number_id=phone_number_id)
    if actual.provider != "sip_trunk":
        raise TrunkConflictError(
            f"phone number {desired.phone_number} exists with provider {actual.provider!r}, not sip_trunk"
        )
    mismatches = diff_trunk(desired, actual, assume_password_changed=assume_password_changed)
    if not mismatches:
        return SyncResult(action="unchanged", phone_number_id=actual.phone_number_id)
    api.update_phone_number(actual.phone_number_id, desired)
    logger.info(
        "updated ElevenLabs SIP trunk number %s: %s",
        desired.phone_number,
        ", ".join(m.field for m in mismatches),
    )
    return SyncResult(action="updated", phone_number_id=actual.phone_number_id, mismatches=mismatches)


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
        return f"ElevenLabsClient(base_url={self.base_url!r}, api_key='{_REDACTED}')"

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
        return _parse(_Created, data).phone_number_id

    def update_phone_number(self, phone_number_id: str, desired: DesiredTrunk) -> PhoneNumber:
        path = f"{PHONE_NUMBERS_PATH}/{_segment(phone_number_id)}"
        data = self._request("PATCH", path, body=desired.request_body(), secrets=desired.secrets())
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
            text = text.replace(secret, _REDACTED)
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
