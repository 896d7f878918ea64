"""The image build's source handling (scripts/lib.sh): the Asterisk pin and its override, the checksum that
decides which tarball is built, and the third-party tarballs of a build without downloads. Run with bash."""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
HOST_IMAGE = REPO / "layers/sip_trunk/src/sip_trunk/agent/host_files/image"
LIB = HOST_IMAGE / "scripts/lib.sh"


def pins() -> dict[str, str]:
    out = {}
    for line in (HOST_IMAGE / "versions.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def bash(script: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``script`` after sourcing lib.sh, with only the given environment (plus PATH)."""
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "SIP_TRUNK_IMAGE_DIR": str(HOST_IMAGE), **(env or {})}
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source {LIB}; {script}"],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def tarball(path: Path, top: str) -> Path:
    data = b"int main(void) { return 0; }\n"
    with tarfile.open(path, "w:xz") as tar:
        info = tarfile.TarInfo(f"{top}/main.c")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------- the pin
def test_the_pin_applies_without_an_override() -> None:
    out = bash('load_versions; echo "$ASTERISK_VERSION $ASTERISK_SHA256"')
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [pins()["ASTERISK_VERSION"], pins()["ASTERISK_SHA256"]]


def test_an_override_of_version_and_checksum_replaces_the_pin() -> None:
    out = bash(
        'load_versions; echo "$ASTERISK_VERSION $ASTERISK_SHA256"',
        {"ASTERISK_VERSION": "22.10.1", "ASTERISK_SHA256": "a" * 64},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["22.10.1", "a" * 64]


@pytest.mark.parametrize(
    "env",
    [
        {"ASTERISK_VERSION": "22.10.1"},  # a version without its checksum
        {"ASTERISK_SHA256": "a" * 64},  # a checksum without its version
        {"ASTERISK_VERSION": "22.10.1", "ASTERISK_SHA256": "A" * 63},  # not 64 lower-case hex digits
        {"ASTERISK_VERSION": "22.10.1; rm -rf /", "ASTERISK_SHA256": "a" * 64},
    ],
)
def test_a_half_or_malformed_override_is_refused(env: dict[str, str]) -> None:
    out = bash('load_versions; echo "loaded $ASTERISK_VERSION"', env)
    assert out.returncode != 0
    assert "loaded" not in out.stdout
    assert "error:" in out.stderr


# ------------------------------------------------------------------------------- the source tarball
def test_a_local_tarball_with_its_checksum_is_accepted(tmp_path: Path) -> None:
    source = tarball(tmp_path / "asterisk_22.10.1+dfsg.orig.tar.xz", "asterisk-22.10.1")
    env = {"ASTERISK_TARBALL": str(source), "ASTERISK_VERSION": "22.10.1", "ASTERISK_SHA256": sha256(source)}
    out = bash(f"load_versions; fetch_asterisk_source {tmp_path / 'src'}", env)
    assert out.returncode == 0, out.stderr
    used = Path(out.stdout.strip())
    assert used.parent == tmp_path / "src"
    assert used.read_bytes() == source.read_bytes()


def test_a_local_tarball_that_does_not_match_its_checksum_is_refused(tmp_path: Path) -> None:
    source = tarball(tmp_path / "asterisk-22.10.1.tar.xz", "asterisk-22.10.1")
    wrong = hashlib.sha256(b"another tarball").hexdigest()
    env = {"ASTERISK_TARBALL": str(source), "ASTERISK_VERSION": "22.10.1", "ASTERISK_SHA256": wrong}
    out = bash(f"load_versions; tarball=$(fetch_asterisk_source {tmp_path / 'src'}); echo built $tarball", env)
    assert out.returncode != 0
    assert "built" not in out.stdout
    assert "checksum mismatch for asterisk-22.10.1.tar.xz" in out.stderr


def test_a_local_tarball_is_checked_against_the_pin_when_the_checksum_is_not_overridden(tmp_path: Path) -> None:
    source = tarball(tmp_path / "asterisk-22.10.1.tar.xz", "asterisk-22.10.1")
    out = bash(f"load_versions; fetch_asterisk_source {tmp_path / 'src'}", {"ASTERISK_TARBALL": str(source)})
    assert out.returncode != 0
    assert "checksum mismatch" in out.stderr


# ---------------------------------------------------------------------------- third-party tarballs
def externals(tmp_path: Path) -> tuple[Path, Path]:
    """A directory of repacked third-party tarballs with SHA256SUMS, and a source tree that uses them."""
    ext = tmp_path / "externals"
    ext.mkdir()
    pj = tarball(ext / "pjproject-2.17.tar.bz2", "pjproject-2.17")
    sounds = ext / "asterisk-core-sounds-en-gsm-1.6.1.tar.gz"
    sounds.write_bytes(b"sounds")
    (ext / "SHA256SUMS").write_text(f"{sha256(pj)}  {pj.name}\n{sha256(sounds)}  {sounds.name}\n")
    tree = tmp_path / "asterisk-22.10.1"
    for sub in ("third-party/pjproject", "third-party/jansson"):
        (tree / sub).mkdir(parents=True)
    (tree / "third-party/pjproject/pjproject-2.17.tar.bz2.md5").write_text("upstream  pjproject-2.17.tar.bz2\n")
    return ext, tree


USE = (
    "configure_args=(--with-pjproject-bundled --with-jansson-bundled --without-x11); use_externals {cache}; "
    'printf "%s\\n" "${{configure_args[@]}}"'
)


def test_verified_externals_are_handed_to_the_bundled_build(tmp_path: Path) -> None:
    ext, tree = externals(tmp_path)
    cache = tmp_path / "cache"
    out = bash(USE.format(cache=cache), {"ASTERISK_EXTERNALS": str(ext)}, cwd=tree)
    assert out.returncode == 0, out.stderr
    pj = ext / "pjproject-2.17.tar.bz2"
    md5 = hashlib.md5(pj.read_bytes()).hexdigest()  # noqa: S324 - the checksum Asterisk's build verifies
    assert (tree / "third-party/pjproject/pjproject-2.17.tar.bz2.md5").read_text() == f"{md5}  {pj.name}\n"
    sha1 = hashlib.sha1(b"sounds").hexdigest()  # noqa: S324 - the checksum Asterisk's sounds install verifies
    sounds = "asterisk-core-sounds-en-gsm-1.6.1.tar.gz"
    assert (cache / f"{sounds}.sha1").read_text() == f"{sha1}  {sounds}\n"
    assert (cache / pj.name).read_bytes() == pj.read_bytes()
    # no jansson tarball: the system's libjansson
    assert out.stdout.split() == [
        "--with-pjproject-bundled",
        "--without-x11",
        f"--with-externals-cache={cache}",
        f"--with-sounds-cache={cache}",
    ]


def test_an_external_tarball_that_does_not_match_is_refused_before_anything_is_used(tmp_path: Path) -> None:
    ext, tree = externals(tmp_path)
    (ext / "pjproject-2.17.tar.bz2").write_bytes(b"tampered")
    out = bash(USE.format(cache=tmp_path / "cache"), {"ASTERISK_EXTERNALS": str(ext)}, cwd=tree)
    assert out.returncode != 0
    assert "checksum mismatch" in out.stderr
    assert (tree / "third-party/pjproject/pjproject-2.17.tar.bz2.md5").read_text().startswith("upstream")
    assert not (tmp_path / "cache").exists()


def test_an_unknown_external_is_refused(tmp_path: Path) -> None:
    ext, tree = externals(tmp_path)
    extra = ext / "libfoo-1.0.tar.gz"
    extra.write_bytes(b"foo")
    with (ext / "SHA256SUMS").open("a") as sums:
        sums.write(f"{sha256(extra)}  {extra.name}\n")
    out = bash(USE.format(cache=tmp_path / "cache"), {"ASTERISK_EXTERNALS": str(ext)}, cwd=tree)
    assert out.returncode != 0
    assert "libfoo-1.0.tar.gz" in out.stderr
