"""What talking to ElevenLabs can raise; the state machines match these class names."""

from __future__ import annotations

import copy
from typing import Self

__all__ = [
    "ElevenLabsAuthError",
    "ElevenLabsError",
    "ElevenLabsNotFound",
    "ElevenLabsRateLimited",
    "ElevenLabsRetryableError",
    "ElevenLabsUnavailable",
    "ElevenLabsValidationError",
    "TrunkConflictError",
]


class ElevenLabsError(Exception):
    """Any failure talking to ElevenLabs; messages never carry the API key or SIP passwords."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r})"

    def restated(self, message: str) -> Self:
        """The same error (same class, so a state machine's Retry/Catch still matches it; same status and
        detail) with another message, e.g. one that names the agent and number a sync failed for."""
        restated = copy.copy(self)
        restated.message = message
        restated.args = (message,)
        return restated


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
