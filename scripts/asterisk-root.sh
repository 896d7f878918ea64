#!/usr/bin/env bash
# Build (or restore from cache) a root file system holding a real Asterisk 22 for the test suite.
#
# Debian bookworm ships no Asterisk and the forky/sid build needs a newer libc than the host has, so the
# tests run Asterisk from a separate root file system (chroot). This script, run as root:
#   1. installs the host tools the tests use: mmdebstrap, zstd, sipp, socat (TLS in front of sipp, whose
#      Debian build has no TLS), iproute2, iptables, conntrack, fail2ban (fail2ban-regex, and the servers
#      the tests and every local host run in their own namespaces and configuration) and pebble (the ACME
#      test server of the agent's renew-cert tests);
#   2. builds the root with mmdebstrap, caches it as a tar.zst keyed by suite + Asterisk version;
#   3. extracts it to the root directory;
#   4. replaces each Debian module the product's Asterisk patches touch (res_pjsip.so, res_pjsip_refer.so) with
#      one built from the same source package with those patches (the ones install-host.sh applies to the image's
#      build; scripts/build-asterisk-modules.sh, one build for all of them, a few minutes, cached next to the
#      root's tarball, keyed by the Asterisk version and the patches' content). Debian's own modules stay in the
#      root as the unpatched module set, `<module dir>-unpatched/` (every other module linked from the real
#      directory), for tests that show what the patches change;
#   5. leaves a marker so the next run returns at once.
# It prints the root directory as its last line of standard output.
#
# Usage: scripts/asterisk-root.sh [--root DIR] [--suite SUITE] [--refresh] [--rebuild] [--no-host-packages]
#   --refresh   look up the suite's current Asterisk version even if the root is already in place
#   --rebuild   ignore the cache and build from the mirror
# Environment: ASTERISK_ROOT, ASTERISK_ROOT_SUITE, ASTERISK_ROOT_CACHE, ASTERISK_ROOT_MIRROR.
set -euo pipefail

ROOT="${ASTERISK_ROOT:-/var/lib/aws-sip-trunk/asterisk-root}"
SUITE="${ASTERISK_ROOT_SUITE:-forky}"
CACHE_DIR="${ASTERISK_ROOT_CACHE:-/var/cache/aws-sip-trunk}"
MIRROR="${ASTERISK_ROOT_MIRROR:-http://deb.debian.org/debian}"
REFRESH=0
REBUILD=0
HOST_PACKAGES=1
SCRIPTS="$(cd "$(dirname "$0")" && pwd)"
# The image's Asterisk patches (package data of sip_trunk); the patched module is built from all of them.
PATCH_DIR="$SCRIPTS/../layers/sip_trunk/src/sip_trunk/agent/host_files/image/patches"

# Asterisk and the module packages the product loads (res_srtp, codec_g722 and res_resolver_unbound are
# all in asterisk-modules), plus the English prompts that Playback() tests use.
ROOT_PACKAGES="asterisk,asterisk-modules,asterisk-core-sounds-en-gsm"
HOST_TOOLS=(mmdebstrap zstd sip-tester socat iproute2 iptables conntrack fail2ban pebble)
MARKER_NAME=".aws-sip-trunk-root"

log() { printf '[asterisk-root] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

while (($#)); do
    case "$1" in
    --root)
        ROOT="${2:?--root needs a directory}"
        shift 2
        ;;
    --suite)
        SUITE="${2:?--suite needs a Debian suite}"
        shift 2
        ;;
    --refresh)
        REFRESH=1
        shift
        ;;
    --rebuild)
        REBUILD=1
        REFRESH=1
        shift
        ;;
    --no-host-packages)
        HOST_PACKAGES=0
        shift
        ;;
    -h | --help)
        sed -n '2,/^set /p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $1" ;;
    esac
done

[[ "$(id -u)" -eq 0 ]] || die "run as root (mmdebstrap, chroot and network namespaces need it)"
[[ "$ROOT" == /* && "$ROOT" != / ]] || die "--root must be an absolute path other than /: $ROOT"
ARCH="$(dpkg --print-architecture)"
MARKER="$ROOT/$MARKER_NAME"
START=$SECONDS

# One preparation at a time per root: parallel test workers (pytest-xdist) and a concurrent `make
# asterisk-root` all run this script, and the later ones find the marker once the first has finished.
mkdir -p /run/lock
exec {ROOT_LOCK}>"/run/lock/aws-sip-trunk-root.$(printf '%s' "$ROOT" | sha1sum | cut -c1-16).lock"
if ! flock --nonblock "$ROOT_LOCK"; then
    log "another run is preparing $ROOT: waiting for it"
    flock "$ROOT_LOCK"
fi

TMP_DIRS=()
POLICY_RC_CREATED=0
cleanup() {
    local d
    for d in "${TMP_DIRS[@]}"; do
        rm -rf -- "$d"
    done
    if ((POLICY_RC_CREATED)); then
        rm -f /usr/sbin/policy-rc.d
    fi
}
trap cleanup EXIT

ensure_host_packages() {
    local missing=() pkg status
    for pkg in "${HOST_TOOLS[@]}"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "host packages present: ${HOST_TOOLS[*]}"
        return
    fi
    log "installing host packages: ${missing[*]}"
    local need_update=0
    for pkg in "${missing[@]}"; do
        if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            need_update=1
        fi
    done
    if ((need_update)); then
        log "apt-get update (package lists lack a candidate)"
        apt-get update -qq
    fi
    # fail2ban runs only in namespaces with its own configuration: never let its postinst start the machine's server.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        POLICY_RC_CREATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The Asterisk version the mirror would install now, from a throw-away apt state (nothing on the host changes).
candidate_version() {
    local tmp
    tmp="$(mktemp -d)"
    TMP_DIRS+=("$tmp")
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/parts" "$tmp/prefs"
    printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$tmp/sources.list"
    : >"$tmp/status"
    local opts=(
        -o "Dir::Etc::SourceList=$tmp/sources.list" -o "Dir::Etc::SourceParts=$tmp/parts"
        -o "Dir::Etc::PreferencesParts=$tmp/prefs" -o "Dir::State::Lists=$tmp/lists"
        -o "Dir::Cache=$tmp/cache" -o "Dir::State::status=$tmp/status"
        -o "Acquire::Check-Valid-Until=false" -o "Acquire::Languages=none"
        -o "APT::Architecture=$ARCH" -o "Debug::NoLocking=true"
    )
    apt-get "${opts[@]}" update -qq >/dev/null 2>&1 || return 1
    apt-cache "${opts[@]}" policy asterisk 2>/dev/null | awk '/Candidate:/ { print $2 }' | grep -v '(none)'
}

tarball_for() { # version -> cache path (':' from an epoch is not welcome in file names)
    printf '%s/asterisk-root-%s-%s-%s.tar.zst' "$CACHE_DIR" "$SUITE" "${1//:/_}" "$ARCH"
}

build_tarball() { # version, path
    local version="$1" out="$2" tmp_out hosts_hook resolv_hook
    # mmdebstrap picks the output format from the file name: keep the .tar.zst suffix.
    tmp_out="$CACHE_DIR/.building-$$.tar.zst"
    TMP_DIRS+=("$tmp_out")
    log "building the $SUITE root with mmdebstrap (asterisk $version); this takes about a minute"
    # /etc/hosts is missing otherwise (res_resolver_unbound reads it); resolv.conf points at loopback so an
    # Asterisk under test never asks a name server outside this machine.
    # shellcheck disable=SC2016 # $1 is expanded by mmdebstrap's hook shell, not here
    hosts_hook='printf "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" > "$1/etc/hosts"'
    # shellcheck disable=SC2016
    resolv_hook='rm -f "$1/etc/resolv.conf"; printf "nameserver 127.0.0.1\n" > "$1/etc/resolv.conf"'
    mmdebstrap --variant=essential --mode=root --architectures="$ARCH" \
        --include="$ROOT_PACKAGES" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --aptopt='Acquire::Languages "none"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        --customize-hook="$hosts_hook" \
        --customize-hook="$resolv_hook" \
        --quiet \
        "$SUITE" "$tmp_out" "$MIRROR" >&2
    mv -f -- "$tmp_out" "$out"
    log "cached $(du -h "$out" | cut -f1) at $out"
}

extract_tarball() { # path
    local tarball="$1" staging
    if findmnt -rn -o TARGET | grep -q "^$ROOT/"; then
        die "something is mounted under $ROOT (an Asterisk instance still running?); stop it first"
    fi
    staging="$ROOT.new.$$"
    TMP_DIRS+=("$staging")
    log "extracting $tarball to $ROOT"
    mkdir -p "$staging"
    tar --zstd -xpf "$tarball" -C "$staging" --numeric-owner
    rm -rf -- "$ROOT"
    mkdir -p "$(dirname "$ROOT")"
    mv -- "$staging" "$ROOT"
}

installed_version() {
    dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Version}' asterisk 2>/dev/null
}

marker_matches() {
    [[ -f "$MARKER" && -x "$ROOT/usr/sbin/asterisk" ]] && grep -qx "suite=$SUITE" "$MARKER"
}

PATCHES=()
while IFS= read -r -d '' patch; do PATCHES+=("$patch"); done < <(find "$PATCH_DIR" -maxdepth 1 -name '*.patch' -print0 | sort -z)
((${#PATCHES[@]} > 0)) || die "no Asterisk patches in $PATCH_DIR"
# The patches' content (names included, in order) keys the patched module.
PATCH_DIGEST="$(for p in "${PATCHES[@]}"; do basename -- "$p"; cat -- "$p"; done | sha256sum | cut -c1-16)"
MODULES=()
while IFS= read -r m; do MODULES+=("$m"); done < <(bash "$SCRIPTS/build-asterisk-modules.sh" --list "${PATCHES[@]}")
((${#MODULES[@]} > 0)) || die "the patches in $PATCH_DIR touch no module"

patched_marker_matches() {
    marker_matches && grep -qx "patches=$PATCH_DIGEST" "$MARKER"
}

# Debian's md5 of a file of the asterisk-modules package (path relative to the root, no leading /).
debian_md5() {
    awk -v f="$1" '$2 == f { print $1 }' "$ROOT/var/lib/dpkg/info/asterisk-modules.md5sums"
}

# Install the patched modules (built once per version and patch set, then cached) and keep Debian's own modules,
# with every other module, as the unpatched set. Replacing a file by rename is safe while instances run.
install_patched_modules() { # version
    local version="$1" moddir rel stock cached want m mod name
    moddir="$(find "$ROOT/usr/lib" -mindepth 3 -maxdepth 3 -type d -path '*/asterisk/modules' | head -n1)"
    [[ -n "$moddir" ]] || die "no Asterisk module directory in $ROOT"
    rel="${moddir#"$ROOT"/}"
    stock="$moddir-unpatched"
    mkdir -p "$stock"
    for m in "${MODULES[@]}"; do
        want="$(debian_md5 "$rel/$m.so")"
        [[ -n "$want" ]] || die "asterisk-modules lists no $rel/$m.so"
        if [[ -L "$stock/$m.so" || ! -f "$stock/$m.so" || "$(md5sum <"$stock/$m.so" | cut -d' ' -f1)" != "$want" ]]; then
            [[ "$(md5sum <"$moddir/$m.so" | cut -d' ' -f1)" == "$want" ]] ||
                die "neither $rel/$m.so nor the unpatched copy is Debian's: rerun with --rebuild"
            cp -p -- "$moddir/$m.so" "$stock/.$m.so.tmp"
            mv -f -- "$stock/.$m.so.tmp" "$stock/$m.so"
        fi
    done
    for mod in "$moddir"/*.so; do
        name="$(basename -- "$mod")"
        [[ " ${MODULES[*]} " == *" ${name%.so} "* ]] || ln -sfn "../modules/$name" "$stock/$name"
    done
    cached="$CACHE_DIR/modules-$SUITE-${version//:/_}-$ARCH-$PATCH_DIGEST"
    if [[ ! -d "$cached" ]]; then
        log "building the patched ${MODULES[*]} (${#PATCHES[@]} patch(es), digest $PATCH_DIGEST)"
        # Debian's pjproject library: a patch may call a pjproject function Debian's module does not.
        bash "$SCRIPTS/build-asterisk-modules.sh" --suite "$SUITE" --version "$version" --mirror "$MIRROR" \
            --reference-dir "$stock" --out-dir "$cached" --provider "$(dirname "$(dirname "$moddir")")/libasteriskpj.so.2" \
            "${PATCHES[@]}"
    else
        log "cache hit: $cached"
    fi
    for m in "${MODULES[@]}"; do
        [[ -s "$cached/$m.so" ]] || die "$cached holds no $m.so: remove it and rerun"
        install -m 0644 -- "$cached/$m.so" "$moddir/.$m.so.tmp"
        mv -f -- "$moddir/.$m.so.tmp" "$moddir/$m.so"
    done
    log "${MODULES[*]} patched ($PATCH_DIGEST); Debian's modules kept in ${stock#"$ROOT"}"
}

if ((HOST_PACKAGES)); then
    ensure_host_packages
fi
mkdir -p "$CACHE_DIR"

if ((!REFRESH)) && patched_marker_matches; then
    log "root in place: $(grep '^asterisk=' "$MARKER") ($((SECONDS - START)) s)"
    printf '%s\n' "$ROOT"
    exit 0
fi

version=""
if version="$(candidate_version)" && [[ -n "$version" ]]; then
    log "$SUITE candidate: asterisk $version"
else
    version=""
    log "could not reach $MIRROR for the $SUITE package lists"
fi

if [[ -z "$version" ]]; then
    # Offline: fall back to the newest cached root for this suite.
    cached="$(find "$CACHE_DIR" -maxdepth 1 -name "asterisk-root-$SUITE-*-$ARCH.tar.zst" -printf '%T@ %p\n' |
        sort -rn | head -n1 | cut -d' ' -f2-)"
    [[ -n "$cached" ]] || die "no cached root for $SUITE and the mirror is unreachable"
    ((!REBUILD)) || die "--rebuild needs the mirror"
    tarball="$cached"
else
    tarball="$(tarball_for "$version")"
    if ((REBUILD)) || [[ ! -s "$tarball" ]]; then
        build_tarball "$version" "$tarball"
    else
        log "cache hit: $tarball"
    fi
fi

if marker_matches && [[ -n "$version" && "$(installed_version)" == "$version" ]] && ((!REBUILD)); then
    log "root already holds asterisk $version"
else
    extract_tarball "$tarball"
fi

actual="$(installed_version)" || die "no asterisk package in the extracted root"
if [[ -n "$version" && "$actual" != "$version" ]]; then
    # The mirror moved between the look-up and the build: key the cache by what was really installed.
    log "built asterisk $actual (candidate was $version); renaming the cache entry"
    mv -f -- "$tarball" "$(tarball_for "$actual")"
    tarball="$(tarball_for "$actual")"
fi
mkdir -p "$ROOT/inst"
install_patched_modules "$actual"
printf 'suite=%s\nasterisk=%s\ntarball=%s\npatches=%s\n' "$SUITE" "$actual" "$tarball" "$PATCH_DIGEST" >"$MARKER"
log "ready: asterisk $actual in $ROOT ($((SECONDS - START)) s)"
printf '%s\n' "$ROOT"
