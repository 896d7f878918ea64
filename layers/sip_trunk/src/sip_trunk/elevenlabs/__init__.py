"""Client for the ElevenLabs Agents phone-number and SIP-trunk API, and the trunk reconciler.

The gateway is only useful if the ElevenLabs phone number points at our Elastic IP with the transport and
digest credentials Asterisk expects, so provisioning compares the number's live configuration with the
desired one and converges it (`ensure_trunk`), and the verification step reuses `diff_trunk`.

`models` holds the API's shapes and the desired trunk, `reconcile` the diff and the convergence (through
the `PhoneNumberApi` port), `client` the retrying HTTP client, `errors` what all of them raise.
"""

from __future__ import annotations

from sip_trunk.elevenlabs.client import DEFAULT_BASE_URL, ElevenLabsClient
from sip_trunk.elevenlabs.errors import (
    ElevenLabsAuthError,
    ElevenLabsError,
    ElevenLabsNotFound,
    ElevenLabsRateLimited,
    ElevenLabsRetryableError,
    ElevenLabsUnavailable,
    ElevenLabsValidationError,
    TrunkConflictError,
)
from sip_trunk.elevenlabs.models import (
    AssignedAgent,
    DesiredTrunk,
    InboundTrunk,
    OutboundCallResult,
    OutboundTrunk,
    PhoneNumber,
    SyncResult,
    TrunkMismatch,
)
from sip_trunk.elevenlabs.reconcile import PhoneNumberApi, diff_trunk, ensure_trunk, find_trunk

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
    "find_trunk",
]
