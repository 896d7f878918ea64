"""Parse what Asterisk 22 prints on its CLI (``asterisk -rx ...``) and what a rendered ``pjsip.conf`` declares.

Standard library only: the host agent imports this. Every parser takes the text exactly as ``asterisk -rx``
returned it (fixtures captured from a real Asterisk 22 live in ``tests/unit/fixtures/asterisk``) and ignores
the column-legend lines (``<Endpoint/CID....>``), rulers and ``Objects found`` footers. Unknown lines are
skipped rather than fatal: a newer point release may add a line, and the caller compares what it expected
with what it found anyway.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

__all__ = [
    "ChannelCount",
    "ContactStatus",
    "EndpointStatus",
    "PjsipObjects",
    "RegistrationStatus",
    "TransportStatus",
    "expected_dialplan_contexts",
    "expected_pjsip_objects",
    "parse_channel_count",
    "parse_contacts",
    "parse_dialplan_contexts",
    "parse_endpoints",
    "parse_registrations",
    "parse_transports",
    "parse_uptime",
    "parse_version",
]

# --- CLI output ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ContactStatus:
    aor: str
    uri: str
    hash: str
    status: str  # Avail, Unavail, NonQual, Unknown, Created, Removed
    rtt_ms: float | None

    @property
    def reachable(self) -> bool:
        return self.status == "Avail"


@dataclass(frozen=True, slots=True)
class TransportStatus:
    name: str
    protocol: str
    bind: str


@dataclass(frozen=True, slots=True)
class EndpointStatus:
    name: str
    state: str  # "Not in use", "In use", "Unavailable", ...
    channels: int
    max_channels: int | None  # None = "inf"
    transport: str | None = None
    aors: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class RegistrationStatus:
    name: str
    server_uri: str
    auth: str | None
    status: str  # Registered, Unregistered, Rejected, Stopping, Stopped

    @property
    def registered(self) -> bool:
        return self.status == "Registered"


@dataclass(frozen=True, slots=True)
class ChannelCount:
    channels: int
    calls: int
    processed: int | None


_ENDPOINT_RE = re.compile(r"^\s*Endpoint:\s+(\S+)\s+(\S.*?)\s+(\d+) of (\d+|inf)\s*$")
_AOR_RE = re.compile(r"^\s*Aor:\s+(\S+)\s+(\d+)\s*$")
_TRANSPORT_RE = re.compile(r"^\s*Transport:\s+(\S+)\s+([a-z]+)\s+\d+\s+\d+\s+(\S+)\s*$")
_CONTACT_RE = re.compile(r"^\s*Contact:\s+(\S+)\s+([0-9a-f]+)\s+(\S+)\s+(\S+)\s*$")
_REG_STATES = ("Registered", "Unregistered", "Rejected", "Stopping", "Stopped")
_REG_RE = re.compile(rf"^\s*(\S+?)/(\S+)\s+(?:(\S+)\s+)?({'|'.join(_REG_STATES)})\b.*$")
_COUNT_RE = re.compile(r"^\s*(\d+) (active channels?|active calls?|calls? processed)\s*$")
_VERSION_RE = re.compile(r"^Asterisk (\S+)")
_UPTIME_RE = re.compile(r"^\s*(System uptime|Last reload):\s*(\d+)\s*$")


def _is_legend(line: str) -> bool:
    return "<" in line and ">" in line and "....." in line


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not _is_legend(line)]


def _rtt(value: str) -> float | None:
    try:
        rtt = float(value)
    except ValueError:
        return None
    return rtt if math.isfinite(rtt) else None


def parse_endpoints(text: str) -> list[EndpointStatus]:
    """``pjsip show endpoints``: each endpoint with its state, channel use, transport and AORs.

    Contact lines inside this output are truncated to the column width; use :func:`parse_contacts` on
    ``pjsip show contacts`` for contacts.
    """
    endpoints: list[EndpointStatus] = []
    for line in _lines(text):
        if m := _ENDPOINT_RE.match(line):
            limit = m.group(4)
            endpoints.append(
                EndpointStatus(
                    name=m.group(1).split("/", 1)[0],
                    state=m.group(2),
                    channels=int(m.group(3)),
                    max_channels=None if limit == "inf" else int(limit),
                )
            )
        elif endpoints and (m := _TRANSPORT_RE.match(line)):
            endpoints[-1] = replace(endpoints[-1], transport=m.group(1))
        elif endpoints and (m := _AOR_RE.match(line)):
            endpoints[-1] = replace(endpoints[-1], aors=(*endpoints[-1].aors, m.group(1)))
    return endpoints


def parse_transports(text: str) -> list[TransportStatus]:
    """``pjsip show transports``."""
    return [
        TransportStatus(name=m.group(1), protocol=m.group(2), bind=m.group(3))
        for line in _lines(text)
        if (m := _TRANSPORT_RE.match(line))
    ]


def parse_contacts(text: str) -> list[ContactStatus]:
    """``pjsip show contacts`` (or the contact lines of ``pjsip show aors``); RTT is None for ``-nan``."""
    contacts = []
    for line in _lines(text):
        if m := _CONTACT_RE.match(line):
            aor, _, uri = m.group(1).partition("/")
            contacts.append(
                ContactStatus(aor=aor, uri=uri, hash=m.group(2), status=m.group(3), rtt_ms=_rtt(m.group(4)))
            )
    return contacts


def parse_registrations(text: str) -> list[RegistrationStatus]:
    """``pjsip show registrations`` (outbound registrations to carriers)."""
    registrations = []
    for line in _lines(text):
        if line.lstrip().startswith("Objects found"):
            continue
        if m := _REG_RE.match(line):
            registrations.append(
                RegistrationStatus(name=m.group(1), server_uri=m.group(2), auth=m.group(3), status=m.group(4))
            )
    return registrations


def parse_channel_count(text: str) -> ChannelCount:
    """``core show channels count``."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        if m := _COUNT_RE.match(line):
            values[m.group(2).split()[-1].rstrip("s")] = int(m.group(1))
    if "channel" not in values or "call" not in values:
        raise ValueError(f"not the output of `core show channels count`: {text[:200]!r}")
    return ChannelCount(channels=values["channel"], calls=values["call"], processed=values.get("processed"))


_CONTEXT_RE = re.compile(r"^\[ Context '([^']+)' created by '([^']+)' \]")


def parse_dialplan_contexts(text: str) -> dict[str, str]:
    """``dialplan show`` → context name → the module that created it (``pbx_config`` for extensions.conf)."""
    return {m.group(1): m.group(2) for line in text.splitlines() if (m := _CONTEXT_RE.match(line.strip()))}


def parse_version(text: str) -> str:
    """``core show version`` → the version string (e.g. ``22.10.1+dfsg+~cs6.17.60671434-1`` or ``22.11.0``)."""
    m = _VERSION_RE.match(text.strip())
    if not m:
        raise ValueError(f"not the output of `core show version`: {text[:200]!r}")
    return m.group(1)


def parse_uptime(text: str) -> tuple[int, int | None]:
    """``core show uptime seconds`` → (seconds since start, seconds since the last reload or None)."""
    values = {m.group(1): int(m.group(2)) for line in text.splitlines() if (m := _UPTIME_RE.match(line))}
    if "System uptime" not in values:
        raise ValueError(f"not the output of `core show uptime seconds`: {text[:200]!r}")
    return values["System uptime"], values.get("Last reload")


# --- pjsip.conf -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PjsipObjects:
    """Names of the objects a ``pjsip.conf`` declares, by ``type``."""

    endpoints: frozenset[str]
    transports: frozenset[str]
    registrations: frozenset[str]
    aors: frozenset[str]


_SECTION_RE = re.compile(r"^\[([^\]]+)\](?:\(([^)]*)\))?\s*$")
_OPTION_RE = re.compile(r"^([A-Za-z0-9_.-]+)\s*=>?\s*(.*)$")


def _strip_comment(line: str) -> str:
    """Drop an unescaped ``;`` comment (``\\;`` is a literal semicolon in Asterisk configs)."""
    out = []
    i = 0
    while i < len(line):
        ch = line[i]
        if ch == "\\" and i + 1 < len(line) and line[i + 1] == ";":
            out.append(";")
            i += 2
            continue
        if ch == ";":
            break
        out.append(ch)
        i += 1
    return "".join(out).strip()


def expected_pjsip_objects(text: str) -> PjsipObjects:
    """What ``pjsip show endpoints/transports/registrations`` must list after this file loads.

    Understands templates (``[name](!)``) and inheritance (``[name](tpl1,tpl2)``): an object's ``type`` may
    come from a template. ``#include`` lines are not followed.
    """
    templates: dict[str, dict[str, str]] = {}
    objects: list[tuple[str, dict[str, str]]] = []
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if not line or line.startswith("#"):
            continue
        if m := _SECTION_RE.match(line):
            name, opts = m.group(1).strip(), [o.strip() for o in (m.group(2) or "").split(",") if o.strip()]
            current = {}
            for opt in opts:
                if opt in templates:
                    current.update(templates[opt])
            if "!" in opts:
                templates[name] = current
            else:
                objects.append((name, current))
            continue
        if current is not None and (m := _OPTION_RE.match(line)):
            current[m.group(1).strip().lower()] = m.group(2).strip()
    by_type: dict[str, set[str]] = {"endpoint": set(), "transport": set(), "registration": set(), "aor": set()}
    for name, options in objects:
        kind = options.get("type", "").lower()
        if kind in by_type:
            by_type[kind].add(name)
    return PjsipObjects(
        endpoints=frozenset(by_type["endpoint"]),
        transports=frozenset(by_type["transport"]),
        registrations=frozenset(by_type["registration"]),
        aors=frozenset(by_type["aor"]),
    )


def expected_dialplan_contexts(text: str) -> frozenset[str]:
    """Contexts an ``extensions.conf`` defines (not ``[general]``/``[globals]`` and not templates)."""
    contexts = set()
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if m := _SECTION_RE.match(line):
            name, opts = m.group(1).strip(), m.group(2) or ""
            if name.lower() not in ("general", "globals") and "!" not in opts:
                contexts.add(name)
    return frozenset(contexts)
