"""Render the Asterisk (and fail2ban) configuration of a deployment from validated settings.

The settings model already restricts every value to a safe alphabet. The renderer checks
again, independently: every ``{{ … }}`` output passes ``_refuse_unsafe`` (Jinja2's
``finalize`` hook), so a value that could start a comment, a section, a new line, a
dialplan expression or a second application argument never reaches a file, whatever a
future settings field forgets to validate.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from sip_trunk.callrecords import HEP_ADDRESS
from sip_trunk.manifest import MANIFEST_NAME, Manifest
from sip_trunk.settings import (
    ELEVENLABS_OUTBOUND_ENDPOINT,
    PROBE_ENDPOINT,
    TRANSFER_ENDPOINT,
    AgentFallback,
    AgentRoute,
    CallFact,
    Carrier,
    CarrierAuth,
    Destination,
    Extension,
    Secrets,
    Settings,
    Transport,
    check_ipv4,
)

ASTERISK_FILES = (
    "asterisk.conf",
    "modules.conf",
    "logger.conf",
    "pjsip.conf",
    "extensions.conf",
    "rtp.conf",
    "cdr.conf",
    "cel.conf",
    "features.conf",
    "acl.conf",
    "udptl.conf",
    "hep.conf",
    "pjproject.conf",
    "musiconhold.conf",
    "ccss.conf",
    "indications.conf",
    "manager.conf",
)
FAIL2BAN_FILTER = "fail2ban/filter.d/asterisk-sip-trunk.conf"
FAIL2BAN_JAIL = "fail2ban/jail.d/asterisk-sip-trunk.local"
SECRET_BEARING = frozenset({"asterisk/pjsip.conf"})

# Characters with a meaning to Asterisk's config parser, the dialplan, a shell, or a SIP header.
_UNSAFE = re.compile(r"""[\x00-\x1f\x7f;\[\]$#{}"'`\\|&()<>,]|[^\x00-\x7f]""")


class UnsafeValueError(ValueError):
    """A value about to be written into a config could change its structure."""


class ConfigList(str):
    """A comma-joined list built by the ``csv`` filter from individually checked atoms."""

    __slots__ = ()


def _refuse_unsafe(value: Any) -> Any:
    if value is None:
        raise UnsafeValueError("a template printed None: a required value is missing")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return value
    if isinstance(value, ConfigList):
        return value
    text = str(value)
    match = _UNSAFE.search(text)
    if match:
        raise UnsafeValueError(f"refusing to render a value containing {match.group()!r} (position {match.start()})")
    if not text:
        raise UnsafeValueError("refusing to render an empty value")
    return text


def _csv(values: Iterable[Any]) -> ConfigList:
    atoms = [str(_refuse_unsafe(str(v))) for v in values]
    return ConfigList(",".join(atoms))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("sip_trunk", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - the output is Asterisk config, not HTML; values pass _refuse_unsafe
        finalize=_refuse_unsafe,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["csv"] = _csv
    return env


@dataclass(frozen=True)
class RenderedConfig:
    files: dict[str, bytes]
    version: str
    secret_files: frozenset[str]

    @property
    def manifest(self) -> Manifest:
        return Manifest.from_json(self.files[MANIFEST_NAME])


def _transport_name(transport: Transport) -> str:
    return f"transport-{transport.value}"


def _agent_context(base: str, agent: AgentRoute) -> str:
    """The default agent keeps the contexts' plain names (`route-agent`); another agent's carry its name."""
    return base if agent.is_default else f"{base}-{agent.name}"


def _route_targets(settings: Settings) -> Any:
    def route_target(dest: Destination) -> ConfigList:
        """Goto() arguments for a destination (each part checked, then joined)."""
        if dest.kind == "agent":
            return _csv([_agent_context("route-agent", settings.agent_route(dest.agent)), "s", 1])
        if dest.kind == "ivr":
            return _csv(["ivr", "s", 1])
        return _csv(["route-extension", dest.extension, 1])

    def fallback_target(fallback: AgentFallback) -> ConfigList:
        """Goto() arguments for an agent fallback that leads somewhere (an announcement is played in place)."""
        if fallback.kind == "announcement":
            raise ValueError("an announcement has no Goto() target")
        return route_target(Destination(kind=fallback.kind, extension=fallback.extension, agent=fallback.agent))

    return route_target, fallback_target


def _prefix_patterns(prefix: str) -> list[str]:
    """Digit-only patterns for every E.164 length (7-15 digits) that starts with the prefix.

    ``X`` matches one digit and nothing else, so ``${EXTEN}`` reached through these patterns
    can never carry '&', ',' or any other character that would change a Dial() argument
    (a '.' or '!' wildcard would let a Request-URI user such as '+1415&PJSIP/x' through).
    """
    digits = len(prefix) - 1
    return [f"_{prefix}{'X' * extra}" for extra in range(max(1, 7 - digits), 15 - digits + 1)]


def _bare_patterns(prefix: str) -> list[str]:
    """The allowlist patterns without the '+' (a Refer-To user such as 14155550199)."""
    return [pattern.replace("_+", "_", 1) for pattern in _prefix_patterns(prefix)]


FACT_VARIABLES = {
    CallFact.CALLED_DID: "GW_DID",
    CallFact.CARRIER: "GW_CARRIER",
    CallFact.IVR_CHOICE: "GW_IVR",
    CallFact.EXTENSION: "GW_EXTENSION",
    CallFact.ROUTE: "GW_ROUTE",
}
"""The inherited channel variable that holds each call fact (set by the dialplan, never by a caller)."""


def _context(settings: Settings, secrets: Secrets, public_address: str | None) -> dict[str, Any]:
    el = settings.elevenlabs
    net = settings.network
    carriers: list[Carrier] = list(settings.carriers)
    extensions: list[Extension] = list(settings.extensions)
    outbound_carrier = next((c for c in carriers if c.name == settings.dialplan.outbound_carrier), None)
    transports = {Transport.TCP}
    if net.udp_enabled:
        transports.add(Transport.UDP)
    if settings.tls.enabled:
        transports.add(Transport.TLS)
    public = public_address or net.public_address
    route_target, fallback_target = _route_targets(settings)
    agents = settings.agent_routes()
    return {
        "agents": agents,
        "capped": any(a.max_calls for a in agents),
        "agent_context": _agent_context,
        "s": settings,
        "from_domain": net.public_hostname or public,
        "transfers": settings.dialplan.transfers,
        "transfer_endpoint": TRANSFER_ENDPOINT,
        "bare_patterns": _bare_patterns,
        "fact_variables": FACT_VARIABLES,
        "el": el,
        "net": net,
        "tls": settings.tls,
        "dialplan": settings.dialplan,
        "public_address": public,
        "transports": sorted(transports, key=lambda t: t.value),
        "transport_name": _transport_name,
        "route_target": route_target,
        "fallback_target": fallback_target,
        "prefix_patterns": _prefix_patterns,
        "outbound_endpoint": ELEVENLABS_OUTBOUND_ENDPOINT,
        "hep_address": HEP_ADDRESS,
        "probe_endpoint": PROBE_ENDPOINT,
        "probe_password": _probe_password(settings, secrets),
        "carriers": carriers,
        "registering_carriers": [c for c in carriers if c.auth is CarrierAuth.REGISTRATION],
        "outbound_carrier": outbound_carrier,
        "extensions": extensions,
        "secret": secrets.reveal,
        "Transport": Transport,
        "CarrierAuth": CarrierAuth,
        "did_aliases": _did_aliases(settings),
    }


def _probe_password(settings: Settings, secrets: Secrets) -> str:
    """A password nobody is ever given, stable across renders (config versions are content hashes): the probe
    endpoint challenges every request, so nothing can authenticate as it."""
    material = secrets.reveal(settings.elevenlabs.inbound_password).encode()
    return hmac.new(material, b"sip-trunk probe endpoint", hashlib.sha256).hexdigest()


def _did_aliases(settings: Settings) -> dict[str, str]:
    """Carriers often send a DID without '+': route the bare form to the E.164 entry."""
    return {did.removeprefix("+"): did for did in settings.dialplan.did_routes}


def render_configs(settings: Settings, secrets: Secrets, *, public_address: str | None = None) -> RenderedConfig:
    """Render the full file set. Deterministic: the same input gives byte-identical output."""
    missing = [ref for ref in settings.secret_refs() if ref not in secrets.values]
    if missing:
        raise UnsafeValueError(f"secrets not provided for: {', '.join(missing)}")
    if public_address is not None:
        try:
            public_address = check_ipv4(public_address)
        except ValueError:
            raise UnsafeValueError("the public address must be an IPv4 address such as 203.0.113.10") from None
    env = _environment()
    context = _context(settings, secrets, public_address)
    files: dict[str, bytes] = {}
    for name in ASTERISK_FILES:
        files[f"asterisk/{name}"] = env.get_template(f"{name}.j2").render(context).encode()
    files[FAIL2BAN_FILTER] = env.get_template("fail2ban-filter.conf.j2").render(context).encode()
    files[FAIL2BAN_JAIL] = env.get_template("fail2ban-jail.local.j2").render(context).encode()
    manifest = Manifest.for_files(files)
    files[MANIFEST_NAME] = manifest.to_json()
    return RenderedConfig(files=dict(sorted(files.items())), version=manifest.version, secret_files=SECRET_BEARING)


def write_rendered(rendered: RenderedConfig | Mapping[str, bytes], out_dir: Path) -> None:
    """Write the whole set or nothing: build it in a sibling staging directory, then rename."""
    files = rendered.files if isinstance(rendered, RenderedConfig) else rendered
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it 0700: Asterisk's group must be able to enter it
        for rel, data in files.items():
            target = staging / rel
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            target.write_bytes(data)
            os.chmod(target, 0o640 if rel in SECRET_BEARING else 0o644)
        if out_dir.exists():
            previous = out_dir.with_name(f".{out_dir.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            out_dir.rename(previous)
            staging.rename(out_dir)
            shutil.rmtree(previous, ignore_errors=True)
        else:
            staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
