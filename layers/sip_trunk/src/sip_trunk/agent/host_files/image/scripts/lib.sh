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

# Parallel compile jobs: one per CPU, but at most one per GiB of memory, since a compile job of
# Asterisk/pjproject peaks near 1 GiB (make -j2 on a 1 GiB t4g.micro runs out of memory).
# SIP_TRUNK_NPROC replaces nproc in tests.
build_jobs() {
    local cpus mem
    cpus="${SIP_TRUNK_NPROC:-$(nproc)}"
    mem="$(mem_gib)"
    local jobs=$((mem < cpus ? mem : cpus))
    echo $((jobs < 1 ? 1 : jobs))
}

# Swap (MiB) to add for the build: 2048 under 2 GiB of memory (the link steps alone outgrow 1 GiB), else 0.
build_swap_mib() {
    if (($(mem_gib) < 2)); then echo 2048; else echo 0; fi
}
