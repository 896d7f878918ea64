#!/usr/bin/env bash
# Build Asterisk 22 LTS from the pinned source tarball (sha256 verified), with the product's patches (patches/), with
# only the modules modules.conf loads.
#
# Environment: ASTERISK_VERSION / ASTERISK_SHA256 override versions.env (both or neither);
#              ASTERISK_TARBALL uses a local tarball instead of downloading (it is still checksum-verified);
#              ASTERISK_EXTERNALS: a directory of third-party tarballs for a build without downloads (lib.sh).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

load_versions
VERSION="$ASTERISK_VERSION"
MODULES_LIST="$IMAGE_DIR/files/modules.list"
SRC_ROOT=/usr/src/sip-trunk-asterisk

apt_install build-essential pkg-config autoconf automake libtool bzip2 patch wget python3 \
    libedit-dev libjansson-dev libxml2-dev libsqlite3-dev uuid-dev libssl-dev libsrtp2-dev \
    libcurl4-openssl-dev libunbound-dev libxslt1-dev

tarball="$(fetch_asterisk_source "$SRC_ROOT")"

rm -rf "$SRC_ROOT/asterisk-$VERSION"
tar -xf "$tarball" -C "$SRC_ROOT"
cd "$SRC_ROOT/asterisk-$VERSION"

# The product's Asterisk patches, in name order (patches/*.patch; each one's header says what it fixes). The
# real-Asterisk tests run the modules these touch built with the same files (scripts/asterisk-root.sh).
applied=()
for patch in "$IMAGE_DIR"/patches/*.patch; do
    [[ -f "$patch" ]] || continue
    patch -p1 --forward --batch <"$patch" >/dev/null || die "$(basename -- "$patch") does not apply to Asterisk $VERSION"
    log "applied $(basename -- "$patch")"
    applied+=("$(basename -- "$patch")")
done

configure_args=(--with-pjproject-bundled --with-jansson-bundled --without-x11 --without-gtk2)
[[ -z "${ASTERISK_EXTERNALS:-}" ]] || use_externals "$SRC_ROOT/externals"
./configure "${configure_args[@]}" >/dev/null
make menuselect.makeopts >/dev/null

# Start from nothing, then enable exactly the modules our modules.conf can load (files/modules.list is kept
# equal to the renderer's template by tests/unit/test_image.py).
for category in MENUSELECT_ADDONS MENUSELECT_APPS MENUSELECT_BRIDGES MENUSELECT_CDR MENUSELECT_CEL \
    MENUSELECT_CHANNELS MENUSELECT_CODECS MENUSELECT_FORMATS MENUSELECT_FUNCS MENUSELECT_PBX \
    MENUSELECT_RES MENUSELECT_TESTS MENUSELECT_CORE_SOUNDS MENUSELECT_MOH MENUSELECT_EXTRA_SOUNDS; do
    menuselect/menuselect --disable-category "$category" menuselect.makeopts
done
while read -r module; do
    [[ -z "$module" || "$module" == \#* ]] && continue
    menuselect/menuselect --enable "$module" menuselect.makeopts
done <"$MODULES_LIST"
menuselect/menuselect --enable CORE-SOUNDS-EN-GSM menuselect.makeopts
menuselect/menuselect --disable BUILD_NATIVE menuselect.makeopts # portable across instance families
menuselect/menuselect --check-deps menuselect.makeopts

# Jobs and swap from the memory (lib.sh): a 1 GiB instance builds with one job and a temporary swap file.
swap_mib="$(build_swap_mib)"
swap_file=/var/tmp/sip-trunk-build.swap
if ((swap_mib > 0)) && ! swapon --show=NAME --noheadings | grep -q .; then
    log "$(mem_gib) GiB of memory: adding ${swap_mib} MiB of swap for the build"
    fallocate -l "${swap_mib}M" "$swap_file"
    chmod 0600 "$swap_file"
    mkswap "$swap_file" >/dev/null
    swapon "$swap_file"
    trap 'swapoff "$swap_file" 2>/dev/null || true; rm -f "$swap_file"' EXIT
fi
jobs="$(build_jobs)"
log "building Asterisk with $jobs parallel jobs"
make -j"$jobs" >/dev/null
make install >/dev/null
make install-logrotate >/dev/null || true
ldconfig

# Every module the list names must exist: menuselect silently skips one whose dependencies are missing.
missing=0
while read -r module; do
    [[ -z "$module" || "$module" == \#* ]] && continue
    if [[ ! -f "/usr/lib/asterisk/modules/$module.so" ]]; then
        log "module not built: $module"
        missing=1
    fi
done <"$MODULES_LIST"
((missing == 0)) || die "some modules from modules.list were not built"

# Unprivileged service account; config is owned by root and readable by the group.
id asterisk >/dev/null 2>&1 || useradd --system --home-dir /var/lib/asterisk --shell /usr/sbin/nologin asterisk
install -d -o asterisk -g asterisk -m 0750 /var/lib/asterisk /var/spool/asterisk /var/log/asterisk /var/run/asterisk \
    /var/spool/asterisk/recording /var/spool/asterisk/voicemail
install -d -o root -g asterisk -m 0750 /etc/asterisk /etc/asterisk/keys
install -m 0644 "$IMAGE_DIR/files/systemd/asterisk.service" /etc/systemd/system/asterisk.service
systemctl daemon-reload
systemctl enable asterisk.service
printf '%s\n' "$VERSION" >/usr/lib/asterisk/SIP_TRUNK_VERSION
printf '%s\n' "${applied[@]}" >/usr/lib/asterisk/SIP_TRUNK_PATCHES
log "asterisk $VERSION installed"
