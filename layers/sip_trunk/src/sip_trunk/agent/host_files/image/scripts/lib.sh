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
