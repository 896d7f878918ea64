"""Config versions in SSM Parameter Store: written by the Provision workflow, read by the host agent.

Standard library + boto3 only (the host agent imports it). Layout:
``<prefix>/<version>/<relative path>`` for each file (SecureString when it holds a secret,
Advanced tier above 4 KB), ``<prefix>/<version>/manifest.json``, and the pointer
``<prefix>/desired-version``. ``prefix`` is ``/sip-trunk/<stack>/asterisk`` (`stack_parameter`).

Every parameter a stack owns lives under ``/sip-trunk/<stack>/``: SSM reserves names whose first segment
starts with ``aws`` or ``ssm``, so the stack name (``aws-…`` is a common choice) never starts a name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sip_trunk.manifest import MANIFEST_NAME, Manifest

STANDARD_TIER_LIMIT = 4096
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


def _name(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *parts])


def publish_config(
    ssm: SsmClient,
    prefix: str,
    files: Mapping[str, bytes],
    secret_files: Iterable[str],
    version: str,
) -> list[str]:
    """Store every file of a version; the manifest last, so a reader never sees a partial version."""
    Manifest.from_json(files[MANIFEST_NAME]).verify(files)
    secret = set(secret_files)
    written: list[str] = []
    for rel in [*sorted(p for p in files if p != MANIFEST_NAME), MANIFEST_NAME]:
        data = files[rel]
        name = _name(prefix, version, rel)
        ssm.put_parameter(
            Name=name,
            Value=data.decode(),
            Type="SecureString" if rel in secret else "String",
            Tier="Advanced" if len(data) > STANDARD_TIER_LIMIT else "Standard",
            Overwrite=True,
        )
        written.append(name)
    return written


def set_desired_version(ssm: SsmClient, prefix: str, version: str) -> None:
    ssm.put_parameter(Name=_name(prefix, DESIRED_VERSION), Value=version, Type="String", Overwrite=True)


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
    manifest.verify(files)
    return files
