"""The manifest of a rendered config set: each file's sha256 and the config version.

Standard library only: the host agent verifies what it fetched with this module.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

MANIFEST_NAME = "manifest.json"
FORMAT = 1


class ManifestMismatch(ValueError):
    """Fetched files do not match the manifest: missing, extra or altered."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def compute_version(file_hashes: Mapping[str, str]) -> str:
    """Version = a hash over the sorted (path, sha256) pairs, so it changes with any file and only then."""
    digest = hashlib.sha256()
    for path in sorted(file_hashes):
        digest.update(f"{path}\0{file_hashes[path]}\n".encode())
    return "v" + digest.hexdigest()[:16]


@dataclass(frozen=True)
class Manifest:
    version: str
    files: dict[str, str]

    @classmethod
    def for_files(cls, files: Mapping[str, bytes]) -> Manifest:
        hashes = {path: sha256_hex(data) for path, data in files.items() if path != MANIFEST_NAME}
        return cls(version=compute_version(hashes), files=dict(sorted(hashes.items())))

    def to_json(self) -> bytes:
        document = {"format": FORMAT, "version": self.version, "files": self.files}
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data)
            version, files = document["version"], document["files"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestMismatch(f"manifest is not valid: {exc.__class__.__name__}") from None
        if not isinstance(version, str) or not isinstance(files, dict):
            raise ManifestMismatch("manifest is not valid: wrong field types")
        manifest = cls(version=version, files={str(k): str(v) for k, v in files.items()})
        if compute_version(manifest.files) != version:
            raise ManifestMismatch("manifest version does not match its file hashes")
        return manifest

    def verify(self, files: Mapping[str, bytes]) -> None:
        """Refuse anything but exactly the listed files with exactly the listed content."""
        present = {path for path in files if path != MANIFEST_NAME}
        missing = sorted(set(self.files) - present)
        extra = sorted(present - set(self.files))
        altered = sorted(p for p in present & set(self.files) if sha256_hex(files[p]) != self.files[p])
        if missing or extra or altered:
            raise ManifestMismatch(f"version {self.version}: missing={missing} extra={extra} altered={altered}")
