#!/usr/bin/env bash
# Shared helpers for the image scripts (sourced, never run).
# shellcheck disable=SC2034 # variables are used by the scripts that source this file

IMAGE_DIR="${SIP_TRUNK_IMAGE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[sip-trunk-image] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

require_root() {
    [[ "$(id -u)" -eq 0 ]] || die "run as root"
}

# At first boot of a stock image, apt-daily/unattended-upgrades may hold the dpkg lock: wait for it.
APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=600)

apt_install() {
    apt-get "${APT_LOCK_WAIT[@]}" install -y -q --no-install-recommends "$@"
}

deb_arch() {
    dpkg --print-architecture # amd64 | arm64
}

# Memory in whole GiB, rounded (the kernel reports a little less than the instance type's size: a
# 2 GiB t4g.small shows ~1.9 GiB). SIP_TRUNK_MEMINFO replaces /proc/meminfo in tests.
mem_gib() {
    local kib
    kib="$(awk '/^MemTotal:/ {print $2}' "${SIP_TRUNK_MEMINFO:-/proc/meminfo}")"
    echo $(((kib + 512 * 1024) / (1024 * 1024)))
}

# Parallel compile jobs: one per CPU, but at most one per GiB of memory. The measured peak of the whole build
# at -j2 is ~0.25 GiB (docs/IMAGE.md); one job per GiB keeps a wide margin for compilers and distributions
# that need more.
# SIP_TRUNK_NPROC replaces nproc in tests.
build_jobs() {
    local cpus mem
    cpus="${SIP_TRUNK_NPROC:-$(nproc)}"
    mem="$(mem_gib)"
    local jobs=$((mem < cpus ? mem : cpus))
    echo $((jobs < 1 ? 1 : jobs))
}

# Swap (MiB) to add for the build: 2048 under 2 GiB of memory (a margin for the 1 GiB t4g.micro, where the SSM
# and CloudWatch agents share the memory with the build), else 0.
build_swap_mib() {
    if (($(mem_gib) < 2)); then echo 2048; else echo 0; fi
}

# The Asterisk pin: versions.env, or ASTERISK_VERSION + ASTERISK_SHA256 from the environment (both or neither; e.g.
# a local source tarball that is not upstream's, which has its own version and checksum).
load_versions() {
    local version="${ASTERISK_VERSION:-}" sha256="${ASTERISK_SHA256:-}"
    # shellcheck source=../versions.env
    source "$IMAGE_DIR/versions.env"
    if [[ -n "$version" || -n "$sha256" ]]; then
        [[ -n "$version" && -n "$sha256" ]] || die "ASTERISK_VERSION and ASTERISK_SHA256 override versions.env together"
        ASTERISK_VERSION="$version"
        ASTERISK_SHA256="$sha256"
    fi
    [[ "$ASTERISK_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "ASTERISK_VERSION is not N.N.N: $ASTERISK_VERSION"
    [[ "$ASTERISK_SHA256" =~ ^[0-9a-f]{64}$ ]] || die "ASTERISK_SHA256 is not 64 hex digits"
}

# fetch_asterisk_source DIR: the source tarball into DIR, verified against ASTERISK_SHA256 (load_versions first);
# prints its path. ASTERISK_TARBALL names a local tarball (any compression tar reads) instead of downloading.
fetch_asterisk_source() {
    local dir="$1" tarball base_url=https://downloads.asterisk.org/pub/telephony/asterisk
    mkdir -p "$dir"
    if [[ -n "${ASTERISK_TARBALL:-}" ]]; then
        tarball="$dir/$(basename -- "$ASTERISK_TARBALL")"
        cp -- "$ASTERISK_TARBALL" "$tarball"
    else
        tarball="$dir/asterisk-$ASTERISK_VERSION.tar.gz"
        # Releases move to old-releases/ once superseded; the checksum, not the URL, decides what is accepted.
        [[ -s "$tarball" ]] ||
            curl -fsSL --retry 5 -o "$tarball" "$base_url/releases/asterisk-$ASTERISK_VERSION.tar.gz" ||
            curl -fsSL --retry 5 -o "$tarball" "$base_url/asterisk-$ASTERISK_VERSION.tar.gz" ||
            curl -fsSL --retry 5 -o "$tarball" "$base_url/old-releases/asterisk-$ASTERISK_VERSION.tar.gz" ||
            die "could not download asterisk-$ASTERISK_VERSION.tar.gz"
    fi
    echo "$ASTERISK_SHA256  $tarball" | sha256sum --check --strict - >&2 ||
        die "checksum mismatch for $(basename -- "$tarball")"
    printf '%s\n' "$tarball"
}

# use_externals CACHE: builds without downloads.asterisk.org and GitHub. ASTERISK_EXTERNALS names a directory with
# the third-party tarballs Asterisk's build would otherwise download -- pjproject-<v>.tar.bz2 (bundled pjproject),
# asterisk-core-sounds-<lang>-<format>-<v>.tar.gz, optionally jansson-<v>.tar.bz2 -- and a SHA256SUMS file (sha256sum
# format) naming each of them; a file that does not match is refused. Asterisk verifies pjproject and jansson
# against the MD5 files its source tree carries and the sounds against .sha1 files it downloads: those are written
# for the verified tarballs (a repack never matches upstream's sums). Without a jansson tarball the build uses the
# system's libjansson. Run in the unpacked source tree; edits the caller's configure_args array.
use_externals() {
    local cache="$1" dir="${ASTERISK_EXTERNALS:?}" name bundled_jansson=0 arg
    [[ -f "$dir/SHA256SUMS" ]] || die "no SHA256SUMS in $dir"
    (cd "$dir" && sha256sum --check --strict SHA256SUMS >&2) || die "checksum mismatch in $dir"
    rm -rf "$cache"
    mkdir -p "$cache"
    while read -r _ name; do
        name="${name#\*}"
        cp -- "$dir/$name" "$cache/$name"
        case "$name" in
        pjproject-*.tar.bz2) (cd "$cache" && md5sum "$name") >"third-party/pjproject/$name.md5" ;;
        jansson-*.tar.bz2)
            (cd "$cache" && md5sum "$name") >"third-party/jansson/$name.md5"
            bundled_jansson=1
            ;;
        asterisk-core-sounds-*.tar.gz) (cd "$cache" && sha1sum "$name") >"$cache/$name.sha1" ;;
        *) die "$dir/SHA256SUMS names $name: not a pjproject, jansson or core sounds tarball" ;;
        esac
        log "external source $name (sha256 verified)"
    done <"$dir/SHA256SUMS"
    configure_args+=("--with-externals-cache=$cache" "--with-sounds-cache=$cache")
    if ((bundled_jansson == 0)); then
        log "no jansson tarball: building against the system's libjansson"
        local kept=()
        for arg in "${configure_args[@]}"; do
            [[ "$arg" == --with-jansson-bundled ]] || kept+=("$arg")
        done
        configure_args=("${kept[@]}")
    fi
}
