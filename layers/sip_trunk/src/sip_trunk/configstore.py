"""Config versions in SSM Parameter Store: written by the Provision workflow, read by the host agent.

Standard library + boto3 only (the host agent imports it). Layout:
``<prefix>/<version>/<relative path>`` for each file (SecureString when it holds a secret,
Advanced tier above 4 KB), ``<prefix>/<version>/manifest.json``, and the pointer
``<prefix>/desired-version``. ``prefix`` is ``/sip-trunk/<stack>/asterisk`` (`stack_parameter`).
A file larger than one Advanced parameter (8 KB) is stored in parts ``<relative path>.part-001``,
``.part-002``, … (each up to 8 KB, cut after a line where possible, same type); the reader joins the parts
of every manifest entry that is not stored whole, and the manifest's hashes prove the result (ADR-18).

Every parameter a stack owns lives under ``/sip-trunk/<stack>/``: SSM reserves names whose first segment
starts with ``aws`` or ``ssm``, so the stack name (``aws-…`` is a common choice) never starts a name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sip_trunk import limits
from sip_trunk.manifest import MANIFEST_NAME, Manifest

DESIRED_VERSION = "desired-version"
PARAMETER_ROOT = "/sip-trunk"
"""The fixed first segment of every parameter a stack owns (template.yaml uses the same literal)."""


def stack_parameter(stack: str, *parts: str) -> str:
    """`/sip-trunk/<stack>/<parts…>`: a stack's parameter (or path) under the fixed, non-reserved root."""
    return "/".join([PARAMETER_ROOT, stack, *parts])


class SsmClient(Protocol):
    """The subset of boto3's SSM client this module uses (tests may pass moto's or a fake)."""

    def put_parameter(self, **kwargs: Any) -> Any: ...

    def get_parameter(self, **kwargs: Any) -> Any: ...

    def get_parameters_by_path(self, **kwargs: Any) -> Any: ...


class ConfigNotFound(LookupError):
    """The requested config version (or the desired-version pointer) does not exist."""


PART_SUFFIX = ".part-"
"""`<relative path>.part-NNN`: one piece of a file too large for one parameter (numbered from 001)."""


def _name(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *parts])


def split_value(data: bytes, limit: int = limits.SSM_VALUE_ADVANCED.value) -> list[bytes]:
    """`data` in pieces of at most `limit` bytes, each cut after a newline when the piece has one and never
    inside a UTF-8 character, so every piece is a valid string and their concatenation is `data`."""
    pieces: list[bytes] = []
    rest = data
    while len(rest) > limit:
        cut = rest.rfind(b"\n", 0, limit) + 1
        if cut <= 0:
            cut = limit
            while cut > 0 and rest[cut] & 0xC0 == 0x80:  # a UTF-8 continuation byte: back off
                cut -= 1
        pieces.append(rest[:cut])
        rest = rest[cut:]
    pieces.append(rest)
    return pieces


def stored_names(rel: str, data: bytes) -> list[str]:
    """The parameter names (relative to the version) that hold file `rel`: itself, or its parts."""
    pieces = split_value(data)
    if len(pieces) == 1:
        return [rel]
    return [f"{rel}{PART_SUFFIX}{i:03d}" for i in range(1, len(pieces) + 1)]


def _join_parts(found: Mapping[str, bytes], wanted: Iterable[str]) -> dict[str, bytes]:
    """Every `wanted` file not stored whole, joined from its parts in order; other names are kept as found
    (a stray part stays a name the manifest does not list, so verification refuses it)."""
    out = dict(found)
    for rel in wanted:
        if rel in out:
            continue
        marker = rel + PART_SUFFIX
        numbered = sorted(
            (int(name[len(marker) :]), name)
            for name in out
            if name.startswith(marker) and name[len(marker) :].isdigit()
        )
        if numbered:
            out[rel] = b"".join(out.pop(name) for _, name in numbered)
    return out


def publish_config(
    ssm: SsmClient,
    prefix: str,
    files: Mapping[str, bytes],
    secret_files: Iterable[str],
    version: str,
) -> list[str]:
    """Store every file of a version; the manifest last, so a reader never sees a partial version.

    Every name and value is checked against SSM's limits before the first call (`AwsLimitExceeded`)."""
    Manifest.from_json(files[MANIFEST_NAME]).verify(files)
    secret = set(secret_files)
    puts: list[tuple[str, str, str]] = []
    for rel in [*sorted(p for p in files if p != MANIFEST_NAME), MANIFEST_NAME]:
        kind = "SecureString" if rel in secret else "String"
        pieces = [files[rel]] if rel == MANIFEST_NAME else split_value(files[rel])
        names = [rel] if rel == MANIFEST_NAME else stored_names(rel, files[rel])
        for stored, piece in zip(names, pieces, strict=True):
            puts.append((_name(prefix, version, stored), piece.decode(), kind))
    tiers = [_checked_tier(name, value) for name, value, _ in puts]
    for (name, value, kind), tier in zip(puts, tiers, strict=True):
        ssm.put_parameter(Name=name, Value=value, Type=kind, Tier=tier, Overwrite=True)
    return [name for name, _, _ in puts]


def _checked_tier(name: str, value: str) -> str:
    """The smallest tier that holds `value`, once `name` and `value` are within SSM's limits."""
    limits.check_parameter_name(name)
    return limits.parameter_tier(value)


def _put(ssm: SsmClient, name: str, value: str, kind: str) -> None:
    tier = _checked_tier(name, value)
    ssm.put_parameter(Name=name, Value=value, Type=kind, Tier=tier, Overwrite=True)


def set_desired_version(ssm: SsmClient, prefix: str, version: str) -> None:
    _put(ssm, _name(prefix, DESIRED_VERSION), version, "String")


def get_desired_version(ssm: SsmClient, prefix: str) -> str | None:
    try:
        response = ssm.get_parameter(Name=_name(prefix, DESIRED_VERSION))
    except Exception as exc:  # boto3's ParameterNotFound is generated per client
        if exc.__class__.__name__ == "ParameterNotFound":
            return None
        raise
    value: str = response["Parameter"]["Value"]
    return value


def fetch_config(ssm: SsmClient, prefix: str, version: str) -> dict[str, bytes]:
    """All files of a version, verified against its manifest (raises ManifestMismatch)."""
    base = _name(prefix, version) + "/"
    files: dict[str, bytes] = {}
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Path": base, "Recursive": True, "WithDecryption": True}
        if token:
            kwargs["NextToken"] = token
        page = ssm.get_parameters_by_path(**kwargs)
        for param in page.get("Parameters", []):
            files[param["Name"][len(base) :]] = param["Value"].encode()
        token = page.get("NextToken")
        if not token:
            break
    if MANIFEST_NAME not in files:
        raise ConfigNotFound(f"config version {version} not found under {base}")
    manifest = Manifest.from_json(files[MANIFEST_NAME])
    if manifest.version != version:
        raise ConfigNotFound(f"manifest under {base} is for version {manifest.version}")
    files = _join_parts(files, manifest.files)
    manifest.verify(files)
    return files
