"""The manifest: per-file sha256 and the config version; verify refuses any difference."""

from __future__ import annotations

import json

import pytest
from sip_trunk.manifest import MANIFEST_NAME, Manifest, ManifestMismatch, compute_version, sha256_hex

pytestmark = pytest.mark.unit

FILES = {"asterisk/pjsip.conf": b"[global]\ntype = global\n", "asterisk/rtp.conf": b"[general]\n"}


def with_manifest(files: dict[str, bytes]) -> dict[str, bytes]:
    return {**files, MANIFEST_NAME: Manifest.for_files(files).to_json()}


def test_round_trip_and_verify() -> None:
    files = with_manifest(FILES)
    manifest = Manifest.from_json(files[MANIFEST_NAME])
    assert manifest == Manifest.for_files(files)
    assert manifest.files == {p: sha256_hex(d) for p, d in sorted(FILES.items())}
    manifest.verify(files)
    manifest.verify(FILES)


def test_version_is_stable_and_content_addressed() -> None:
    assert Manifest.for_files(FILES).version == Manifest.for_files(dict(reversed(FILES.items()))).version
    assert Manifest.for_files(FILES).version == compute_version({p: sha256_hex(d) for p, d in FILES.items()})
    changed = {**FILES, "asterisk/rtp.conf": b"[general]\n\n"}
    assert Manifest.for_files(changed).version != Manifest.for_files(FILES).version
    renamed = {"asterisk/rtp2.conf" if p == "asterisk/rtp.conf" else p: d for p, d in FILES.items()}
    assert Manifest.for_files(renamed).version != Manifest.for_files(FILES).version


def test_manifest_json_is_deterministic() -> None:
    assert Manifest.for_files(FILES).to_json() == Manifest.for_files(dict(reversed(FILES.items()))).to_json()
    assert json.loads(Manifest.for_files(FILES).to_json())["format"] == 1


@pytest.mark.parametrize(
    ("change", "word"),
    [
        (lambda f: {k: v for k, v in f.items() if k != "asterisk/rtp.conf"}, "missing=['asterisk/rtp.conf']"),
        (lambda f: {**f, "asterisk/extra.conf": b"x"}, "extra=['asterisk/extra.conf']"),
        (lambda f: {**f, "asterisk/pjsip.conf": b"[global]\ntype = global\n#include evil\n"}, "altered="),
        (lambda f: {**f, "asterisk/pjsip.conf": b""}, "altered=['asterisk/pjsip.conf']"),
    ],
    ids=["missing", "extra", "altered", "emptied"],
)
def test_verify_refuses_differences(change: object, word: str) -> None:
    manifest = Manifest.for_files(FILES)
    with pytest.raises(ManifestMismatch, match=word.replace("[", r"\[").replace("]", r"\]")):
        manifest.verify(change(with_manifest(FILES)))  # type: ignore[operator]


def test_tampered_manifest_version_refused() -> None:
    document = json.loads(Manifest.for_files(FILES).to_json())
    document["version"] = "v0000000000000000"
    with pytest.raises(ManifestMismatch, match="version does not match"):
        Manifest.from_json(json.dumps(document).encode())


def test_tampered_manifest_hash_refused() -> None:
    document = json.loads(Manifest.for_files(FILES).to_json())
    document["files"]["asterisk/rtp.conf"] = sha256_hex(b"evil")
    with pytest.raises(ManifestMismatch, match="version does not match"):
        Manifest.from_json(json.dumps(document).encode())


def test_manifest_consistently_rewritten_still_fails_verify() -> None:
    """An attacker who rewrites a file and the manifest gets a different version, and the old one fails."""
    tampered = {**FILES, "asterisk/rtp.conf": b"evil"}
    forged = Manifest.for_files(tampered)
    assert forged.version != Manifest.for_files(FILES).version
    with pytest.raises(ManifestMismatch):
        Manifest.for_files(FILES).verify(tampered)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"version": "v1"}',
        b'{"files": {}}',
        b'{"version": 1, "files": {}}',
        b'{"version": "v", "files": []}',
    ],
)
def test_malformed_manifest_refused(data: bytes) -> None:
    with pytest.raises(ManifestMismatch, match="manifest is not valid"):
        Manifest.from_json(data)
