#!/usr/bin/env bash
# `make image-check`: run the host install path for real on this machine, then prove the result carries a call.
#
#  1. Sources without the internet: Debian's source package of Asterisk 22 (a private deb-src list; the machine's
#     own apt sources are untouched) stands in for the upstream tarball. Its orig tarball is checked against the
#     sha256 in the package's .dsc; its pjproject component (with Debian's patch for the files its repack removes)
#     is repacked as the pjproject-<v>.tar.bz2 the bundled build expects, Debian's asterisk-core-sounds-en-gsm package as the core sounds tarball (SHA256SUMS).
#  2. A fresh Debian root (mmdebstrap, $SIP_TRUNK_IMAGE_SUITE, default trixie) in which the product's one entry
#     script, install-host.sh, runs unchanged: its apt steps install from the Debian registry, then Asterisk is
#     compiled with files/modules.list (nice -n 19; time, peak memory and the load average are recorded).
#  3. The built root is cached under $SIP_TRUNK_IMAGE_CACHE, keyed by the image files' content (all but
#     install-agent.sh), the sources' checksums and the suite, and restored to $SIP_TRUNK_IMAGE_ROOT; the current
#     host agent is reinstalled in it with the current install-agent.sh.
#  4. pytest -m image: the gateway boots the rendered config from this root as asterisk.service runs it, carries a
#     call carrier -> gateway -> ElevenLabs stand-in, and `sip-trunk-agent apply` moves it to a second version.
#
# Idempotent: a second run restores the cached root (seconds) and runs the proof again. Needs root.
# Options: --build-only (stop after step 3), --rebuild (ignore a cached root).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
IMAGE="$REPO/layers/sip_trunk/src/sip_trunk/agent/host_files/image"
PACKAGE="$REPO/layers/sip_trunk/src/sip_trunk"
CACHE="${SIP_TRUNK_IMAGE_CACHE:-/var/cache/aws-sip-trunk/image-check}"
ROOT="${SIP_TRUNK_IMAGE_ROOT:-/var/lib/aws-sip-trunk/image-root}"
SUITE="${SIP_TRUNK_IMAGE_SUITE:-trixie}"
SOURCE_SUITE=forky # the Debian suite whose source package carries Asterisk 22
MIRROR="${SIP_TRUNK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PYTHON="$REPO/.venv/bin/python"
MARKER=.aws-sip-trunk-image-root

build_only=0
rebuild=0
for arg in "$@"; do
    case "$arg" in
    --build-only) build_only=1 ;;
    --rebuild) rebuild=1 ;;
    *)
        echo "usage: $0 [--build-only] [--rebuild]" >&2
        exit 2
        ;;
    esac
done

say() { printf '[image-check %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}
[[ "$(id -u)" -eq 0 ]] || die "run as root (chroot, mounts)"
for tool in mmdebstrap zstd apt-get dpkg-deb unshare chroot /usr/bin/time; do
    command -v "$tool" >/dev/null || die "missing $tool (apt-get install mmdebstrap zstd time)"
done
[[ -x "$PYTHON" ]] || die "no $PYTHON: run make dev"
mkdir -p "$CACHE"
cd "$REPO"

# --- 1. sources -------------------------------------------------------------------------------------------------
APT_DIR="$CACHE/apt"
apt_private() {
    apt-get -q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$APT_DIR/sources.d" \
        -o "Dir::State::Lists=$APT_DIR/lists" -o "Dir::Cache=$APT_DIR/cache" -o Dir::State::status=/dev/null \
        -o Acquire::Check-Valid-Until=false -o APT::Sandbox::User=root "$@"
}
SRC="$CACHE/src"
if ! compgen -G "$SRC/asterisk_*.dsc" >/dev/null || ! compgen -G "$SRC/asterisk-core-sounds-en-gsm_*.deb" >/dev/null; then
    say "downloading Debian's Asterisk 22 source package ($SOURCE_SUITE) and its GSM core sounds"
    mkdir -p "$APT_DIR/sources.d" "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$SRC"
    cat >"$APT_DIR/sources.d/$SOURCE_SUITE.sources" <<EOF
Types: deb deb-src
URIs: $MIRROR
Suites: $SOURCE_SUITE
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    apt_private update >/dev/null
    (cd "$SRC" && apt_private source --download-only asterisk >/dev/null && apt_private download asterisk-core-sounds-en-gsm >/dev/null)
fi
dsc="$(compgen -G "$SRC/asterisk_*.dsc" | sort | tail -n1)"
orig="$(compgen -G "$SRC/asterisk_*.orig.tar.xz" | sort | tail -n1)"
pj_component="$(compgen -G "$SRC/asterisk_*.orig-Xpjproject.tar.xz" | sort | tail -n1)"
sounds_deb="$(compgen -G "$SRC/asterisk-core-sounds-en-gsm_*.deb" | sort | tail -n1)"
# The expected checksums come from the .dsc (apt checked it against the signed Sources index), never from the files.
dsc_sha256() { awk -v f="$(basename -- "$1")" '/^Checksums-Sha256:/ {s = 1; next} /^[^ ]/ {s = 0} s && $3 == f {print $1}' "$dsc"; }
ASTERISK_SHA256="$(dsc_sha256 "$orig")"
[[ -n "$ASTERISK_SHA256" ]] || die "$dsc lists no sha256 for $(basename -- "$orig")"
echo "$(dsc_sha256 "$pj_component")  $pj_component" | sha256sum --check --strict --quiet - ||
    die "pjproject component does not match $dsc"
debian_tar="$(compgen -G "$SRC/asterisk_*.debian.tar.xz" | sort | tail -n1)"
echo "$(dsc_sha256 "$debian_tar")  $debian_tar" | sha256sum --check --strict --quiet - ||
    die "Debian packaging does not match $dsc"
ASTERISK_VERSION="$(tar -tJf "$orig" | sed -nE "1p" | sed -E 's#^asterisk-([0-9.]+)/.*#\1#')"
PJPROJECT_VERSION="$(tar -xJOf "$orig" "asterisk-$ASTERISK_VERSION/third-party/versions.mak" | sed -n 's/^PJPROJECT_VERSION=//p')"
SOUNDS_VERSION="$(dpkg-deb -f "$sounds_deb" Version | sed -E 's/-[^-]+$//')"
say "source: $(basename -- "$orig") = Asterisk $ASTERISK_VERSION (sha256 ${ASTERISK_SHA256:0:12}…), pjproject $PJPROJECT_VERSION, core sounds $SOUNDS_VERSION"

EXTERNALS="$CACHE/externals-$ASTERISK_VERSION"
if [[ ! -s "$EXTERNALS/SHA256SUMS" ]]; then
    say "repacking the third-party tarballs the bundled build would download"
    rm -rf "$EXTERNALS" "$EXTERNALS.tmp"
    mkdir -p "$EXTERNALS.tmp/pj" "$EXTERNALS.tmp/sounds"
    tar -xJf "$pj_component" -C "$EXTERNALS.tmp/pj"
    pj_top="$(find "$EXTERNALS.tmp/pj" -mindepth 1 -maxdepth 1 -type d)"
    grep -Eq "PJ_VERSION_MINOR +:= +${PJPROJECT_VERSION#*.}$" "$pj_top/version.mak" ||
        die "the pjproject component is not pjproject $PJPROJECT_VERSION"
    # The dfsg repack removes pjmedia's non-free bdimad audio driver; Debian's own patch drops it from the Makefile.
    tar -xJOf "$debian_tar" debian/patches/2014_pjproject_unbreak.patch | patch -d "$pj_top" -p2 --quiet --forward
    mv "$pj_top" "$EXTERNALS.tmp/pj/pjproject-$PJPROJECT_VERSION"
    repack=(--sort=name --owner=0 --group=0 --numeric-owner --mtime=@0)
    tar "${repack[@]}" -C "$EXTERNALS.tmp/pj" -cjf "$EXTERNALS.tmp/pjproject-$PJPROJECT_VERSION.tar.bz2" "pjproject-$PJPROJECT_VERSION"
    dpkg-deb -x "$sounds_deb" "$EXTERNALS.tmp/sounds"
    sounds_tar="asterisk-core-sounds-en-gsm-$SOUNDS_VERSION.tar.gz"
    tar "${repack[@]}" -C "$EXTERNALS.tmp/sounds/usr/share/asterisk/sounds/en_US_f_Allison" -cf - . |
        gzip -n >"$EXTERNALS.tmp/$sounds_tar"
    rm -rf "$EXTERNALS.tmp/pj" "$EXTERNALS.tmp/sounds"
    (cd "$EXTERNALS.tmp" && sha256sum "pjproject-$PJPROJECT_VERSION.tar.bz2" "$sounds_tar" >SHA256SUMS)
    mv "$EXTERNALS.tmp" "$EXTERNALS"
fi

# --- 2./3. the built root, cached ------------------------------------------------------------------------------
# install-agent.sh is not part of the key: it runs again on the restored root at every check (step 3).
image_hash="$(cd "$IMAGE" && find . -type f ! -path './dist/*' ! -path ./scripts/install-agent.sh ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
KEY="$SUITE-$ASTERISK_VERSION-$(printf '%s\n' "$image_hash" "$ASTERISK_SHA256" "$(cat "$EXTERNALS/SHA256SUMS")" | sha256sum | cut -c1-16)"
BUILT="$CACHE/root-$KEY.tar.zst"
METRICS="$CACHE/root-$KEY.json"
BASE="$CACHE/base-$SUITE.tar.zst"
# mmdebstrap picks its output format from the name's extension: the partial file must end in .tar.zst too.
BASE_PARTIAL="$CACHE/base-$SUITE.partial.tar.zst"

# run_in ROOT CMD...: CMD chrooted in ROOT as on a booted host: /proc, /sys, /dev, an empty /run (with sshd's
# privilege separation directory, which ssh.service creates at boot), the machine's resolver; private mounts.
run_in() {
    local root="$1"
    shift
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"
    # shellcheck disable=SC2016 # expanded by the inner shell
    unshare --mount --fork --kill-child -- bash -c '
        root="$1"; shift
        mount -t proc proc "$root/proc" && mount -t sysfs sys "$root/sys" && mount --rbind /dev "$root/dev" &&
            mount -t tmpfs -o mode=0755 tmpfs "$root/run" && mkdir -p "$root/run/sshd" || exit 1
        exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 TERM=dumb SYSTEMD_OFFLINE=1 "$@"' _ "$root" "$@"
}

stage_image() { # ROOT: the image directory as Image Builder unpacks it, with the current agent in dist/
    local root="$1"
    rm -rf "$root/opt/sip-trunk-image"
    mkdir -p "$root/opt/sip-trunk-image/dist"
    cp -R "$IMAGE/." "$root/opt/sip-trunk-image/"
    cp -R "$PACKAGE" "$root/opt/sip-trunk-image/dist/sip_trunk"
    find "$root/opt/sip-trunk-image/dist" -name __pycache__ -prune -exec rm -rf {} +
}

if ((rebuild)) || [[ ! -s "$BUILT" || ! -s "$METRICS" ]]; then
    if [[ ! -f "$BASE" || ! -s "$BASE" ]]; then
        rm -rf "$BASE" "$BASE_PARTIAL"
        say "creating a fresh Debian $SUITE root (mmdebstrap --variant=apt + systemd, openssh-server)"
        # shellcheck disable=SC2016 # mmdebstrap expands $1 (the root)
        mmdebstrap --quiet --variant=apt --include=systemd,systemd-sysv,openssh-server,ca-certificates,iproute2,procps,zstd \
            --aptopt='Acquire::Check-Valid-Until "false"' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
            --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
            --customize-hook='printf "127.0.0.1 localhost\n::1 localhost\n" >"$1/etc/hosts"' \
            "$SUITE" "$BASE_PARTIAL" "$MIRROR"
        mv "$BASE_PARTIAL" "$BASE"
    fi
    work="$CACHE/build-$KEY"
    say "building in $work (log: $work.log): install-host.sh, nice -n 19, $(nproc) cores; this takes 10+ minutes"
    rm -rf "$work"
    mkdir -p "$work"
    tar --zstd -xf "$BASE" -C "$work"
    stage_image "$work"
    mkdir -p "$work/opt/sip-trunk-image-src/externals"
    cp "$orig" "$work/opt/sip-trunk-image-src/"
    cp "$EXTERNALS"/* "$work/opt/sip-trunk-image-src/externals/"
    started=$(date +%s)
    set +e
    nice -n 19 /usr/bin/time -v -o "$work.time" "$PYTHON" -m bench.image_build sample --root "$work" \
        --out "$work.samples.json" -- \
        bash -c "$(declare -f run_in); run_in \"\$@\"" _ "$work" \
        bash /opt/sip-trunk-image/scripts/install-host.sh --skip-aws-agents \
        --asterisk-tarball "/opt/sip-trunk-image-src/$(basename -- "$orig")" \
        --asterisk-version "$ASTERISK_VERSION" --asterisk-sha256 "$ASTERISK_SHA256" \
        --externals /opt/sip-trunk-image-src/externals >"$work.log" 2>&1
    rc=$?
    set -e
    ((rc == 0)) || {
        tail -n 40 "$work.log" >&2
        die "install-host.sh failed ($rc) after $(($(date +%s) - started)) s; full log $work.log"
    }
    say "install-host.sh finished in $(($(date +%s) - started)) s"
    "$PYTHON" -m bench.image_build summarize --log "$work.log" --time "$work.time" --samples "$work.samples.json" \
        --version "$ASTERISK_VERSION" --suite "$SUITE" --key "$KEY" --cores "$(nproc)" --out "$METRICS.tmp"
    rm -rf "$work/opt/sip-trunk-image-src"
    touch "$work/$MARKER"
    say "caching the built root as $BUILT"
    tar --zstd -cf "$BUILT.tmp" -C "$work" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* .
    mv "$BUILT.tmp" "$BUILT"
    mv "$METRICS.tmp" "$METRICS"
    rm -rf "$work"
fi
"$PYTHON" -m json.tool "$METRICS" >&2

if [[ "$(cat "$ROOT/$MARKER" 2>/dev/null)" != "$KEY" ]]; then
    say "restoring the built root to $ROOT"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    tar --zstd -xf "$BUILT" -C "$ROOT"
    printf '%s\n' "$KEY" >"$ROOT/$MARKER"
fi
say "installing the current host agent into $ROOT (install-agent.sh)"
stage_image "$ROOT"
run_in "$ROOT" bash /opt/sip-trunk-image/scripts/install-agent.sh >/dev/null
if ((build_only)); then
    printf '%s\n' "$METRICS" # for bench.run --only image
    exit 0
fi

# --- 4. the proof ------------------------------------------------------------------------------------------------
say "proof: boot the rendered config, a call through the gateway, agent apply (pytest -m image)"
SIP_TRUNK_IMAGE_ROOT="$ROOT" SIP_TRUNK_IMAGE_METRICS="$METRICS" "$REPO/.venv/bin/pytest" -q -m image tests/asterisk/test_image_root.py
