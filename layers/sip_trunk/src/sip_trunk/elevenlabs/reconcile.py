"""Converging the ElevenLabs phone number on the desired trunk: diff, find, create or PATCH."""

from __future__ import annotations

import ipaddress
import logging
from typing import Protocol

from sip_trunk.elevenlabs.errors import TrunkConflictError
from sip_trunk.elevenlabs.models import REDACTED, DesiredTrunk, PhoneNumber, SyncResult, TrunkMismatch

__all__ = [
    "PhoneNumberApi",
    "diff_trunk",
    "ensure_trunk",
    "find_trunk",
]

logger = logging.getLogger(__name__)


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
            out.append(TrunkMismatch(field=field, desired=REDACTED, actual="missing"))
        elif assume_password_changed:
            out.append(TrunkMismatch(field=field, desired=REDACTED, actual="unknown"))

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
    check("inbound_trunk.media_encryption", desired.inbound_encryption, inbound.media_encryption if inbound else None)
    listed = (inbound.remote_domains if inbound else None) or []
    missing = [d for d in desired.remote_domains if d.lower() not in {x.lower() for x in listed}]
    if missing:
        check("inbound_trunk.remote_domains", ",".join(missing), ",".join(listed) or None)
    if desired.allowed_addresses is not None:
        have = (inbound.allowed_addresses if inbound else None) or []
        if _networks(desired.allowed_addresses) != _networks(have):
            check("inbound_trunk.allowed_addresses", ",".join(desired.allowed_addresses), ",".join(have) or None)
    if desired.inbound_username is not None:
        check("inbound_trunk.username", desired.inbound_username, inbound.username if inbound else None)
        check_password("inbound_trunk.password", bool(inbound and inbound.has_auth_credentials))
    return out


def _networks(addresses: tuple[str, ...] | list[str]) -> set[str]:
    """Addresses as networks, so `203.0.113.10` and `203.0.113.10/32` compare equal; an entry that is no
    IP address (the API may hold anything) compares as itself."""
    out = set()
    for address in addresses:
        try:
            out.add(str(ipaddress.ip_network(address, strict=False)))
        except ValueError:
            out.add(address)
    return out


def _keeping_remote_domains(desired: DesiredTrunk, actual: PhoneNumber) -> DesiredTrunk:
    """The desired trunk plus the remote domains the number already lists: an update sends the whole inbound
    trunk, and domains the operator added for other peers must survive it (they are ElevenLabs' to judge)."""
    listed = (actual.inbound_trunk.remote_domains if actual.inbound_trunk else None) or []
    known = {d.lower() for d in listed}
    merged = tuple(dict.fromkeys([*listed, *(d for d in desired.remote_domains if d.lower() not in known)]))
    if merged == desired.remote_domains:
        return desired
    return desired.model_copy(update={"remote_domains": merged})


class PhoneNumberApi(Protocol):
    """The slice of the client `ensure_trunk` needs (a fake implements it in unit tests)."""

    def find_by_number(self, e164: str) -> PhoneNumber | None: ...

    def get_phone_number(self, phone_number_id: str) -> PhoneNumber: ...

    def create_sip_trunk_phone_number(self, desired: DesiredTrunk) -> str: ...

    def update_phone_number(
        self, phone_number_id: str, desired: DesiredTrunk, current: PhoneNumber | None = None
    ) -> PhoneNumber:
        """PATCH the number; with `current` (the number as read) every field the gateway does not own is
        sent back as it was (DesiredTrunk.update_body)."""
        ...


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
    api.update_phone_number(actual.phone_number_id, _keeping_remote_domains(desired, actual), actual)
    logger.info(
        "updated ElevenLabs SIP trunk number %s: %s",
        desired.phone_number,
        ", ".join(m.field for m in mismatches),
    )
    return SyncResult(action="updated", phone_number_id=actual.phone_number_id, mismatches=mismatches)
