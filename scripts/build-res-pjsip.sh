#!/usr/bin/env bash
# Build res_pjsip.so with the product's Asterisk patches, from Debian's own source package of the Asterisk in the
# test root, so the real-Asterisk tests and local mode run the patched module the image builds (install-host.sh
# applies the same patch files to the whole Asterisk build). Called by scripts/asterisk-root.sh; run as root.
#
#   1. a throw-away build root (mmdebstrap, same suite): build-essential, asterisk-dev of exactly VERSION (Debian's
#      autoconfig.h and buildopts.h) and the few -dev packages Asterisk's configure insists on;
#   2. `apt-get source asterisk=VERSION` in it (Debian's patches applied), then the product's patches;
#   3. Debian's recipe (debian/rules) for what res_pjsip needs: the pjproject component packed as the bundled
#      build expects, configure with Debian's options and build flags, menuselect with Debian's build options;
#      then only `make res` with every other module deselected (res_pjsip and the few it depends on);
#   4. checks: the build-option checksum equals Debian's (Asterisk refuses a module whose checksum differs) and
#      the module exports and imports exactly the symbols of Debian's module (--reference), then strips it.
# Prints nothing on standard output; writes the module to --out. Takes a few minutes; the caller caches the result.
#
# Usage: scripts/build-res-pjsip.sh --suite SUITE --version VERSION --mirror URL --reference FILE --out FILE PATCH...
set -euo pipefail

SUITE="" VERSION="" MIRROR="" REFERENCE="" OUT=""
PATCHES=()
log() { printf '[build-res-pjsip] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
while (($#)); do
    case "$1" in
    --suite) SUITE="${2:?--suite needs a value}" && shift 2 ;;
    --version) VERSION="${2:?--version needs a value}" && shift 2 ;;
    --mirror) MIRROR="${2:?--mirror needs a value}" && shift 2 ;;
    --reference) REFERENCE="${2:?--reference needs a file}" && shift 2 ;;
    --out) OUT="${2:?--out needs a file}" && shift 2 ;;
    -*) die "unknown option: $1" ;;
    *)
        PATCHES+=("$1")
        shift
        ;;
    esac
done
[[ -n "$SUITE" && -n "$VERSION" && -n "$MIRROR" && -n "$REFERENCE" && -n "$OUT" ]] || die "--suite, --version, --mirror, --reference and --out are required"
[[ -f "$REFERENCE" ]] || die "no reference module $REFERENCE"
for p in "${PATCHES[@]}"; do
    [[ -f "$p" ]] || die "no patch $p"
    # Only res_pjsip.so is rebuilt here: a patch to anything else would not reach the tests.
    while read -r target; do
        [[ "$target" =~ ^b/res/res_pjsip(/[^/]+|\.c)$ ]] || die "$(basename -- "$p") patches $target, which is not built into res_pjsip.so"
    done < <(awk '/^\+\+\+ / {print $2}' "$p")
done
[[ "$(id -u)" -eq 0 ]] || die "run as root (mmdebstrap, chroot)"
ARCH="$(dpkg --print-architecture)"
START=$SECONDS

BUILD_ROOT="$(mktemp -d "$(dirname "$OUT")/.res-pjsip-build.XXXXXX")"
cleanup() {
    # Nothing is mounted in the build root (no /proc is needed), so removing it is enough.
    rm -rf -- "$BUILD_ROOT"
}
trap cleanup EXIT

log "build root: $SUITE with asterisk-dev $VERSION ($BUILD_ROOT)"
# Only what configure refuses to run without (libedit, jansson, libxml2, sqlite3, uuid) plus OpenSSL, which
# res_pjsip includes; Debian's autoconfig.h from asterisk-dev replaces configure's result anyway.
mmdebstrap --variant=apt --mode=root --architectures="$ARCH" \
    --include="build-essential,asterisk-dev=$VERSION,libssl-dev,libedit-dev,libjansson-dev,libxml2-dev,libsqlite3-dev,uuid-dev,bzip2,pkgconf" \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --skip=cleanup/apt/lists \
    --quiet \
    "$SUITE" "$BUILD_ROOT" "deb $MIRROR $SUITE main" "deb-src $MIRROR $SUITE main" >&2
log "build root ready ($((SECONDS - START)) s)"

mkdir -p "$BUILD_ROOT/build/patches"
for p in "${PATCHES[@]}"; do cp -- "$p" "$BUILD_ROOT/build/patches/"; done
cp -- "$REFERENCE" "$BUILD_ROOT/build/reference.so"

# Inside the build root. Debian's debian/rules is the reference for every step that shapes the module.
cat >"$BUILD_ROOT/build/build.sh" <<'INNER'
set -euo pipefail
cd /build
apt-get -q -o APT::Sandbox::User=root source "asterisk=$1" >source.log 2>&1 || { tail -20 source.log; exit 1; }
src="$(find . -mindepth 1 -maxdepth 1 -type d -name 'asterisk-*' | head -n1)"
cd "$src"
for p in /build/patches/*.patch; do
    patch -p1 --forward --batch --quiet <"$p" || { echo "patch $(basename "$p") does not apply"; exit 1; }
done
# The dfsg pjproject component, packed and summed where the bundled build looks for its download.
pj() { sed -n "s/^export PJ_VERSION_$1 *:= *//p" Xpjproject/version.mak; }
pjver="$(pj MAJOR).$(pj MINOR)"
[[ -z "$(pj REV)" ]] || pjver="$pjver.$(pj REV)"
pjdir=debian/build-pjproject
mkdir -p "$pjdir"
ln -sfn ../../Xpjproject "$pjdir/pjproject-$pjver"
(cd "$pjdir" && tar --create "pjproject-$pjver"/*) | bzip2 --fast >"$pjdir/pjproject-$pjver.tar.bz2"
(cd "$pjdir" && md5sum "pjproject-$pjver.tar.bz2") >"third-party/pjproject/pjproject-$pjver.tar.bz2.md5"
chmod 755 debian/dummyprogs/fetch
# Debian's build flags: hardening, -O3 -fno-partial-inlining instead of -O2, CPPFLAGS folded into CFLAGS.
export DEB_BUILD_MAINT_OPTIONS=hardening=+all DEB_CFLAGS_MAINT_STRIP=-O2 DEB_CFLAGS_MAINT_APPEND="-O3 -fno-partial-inlining"
CFLAGS="$(dpkg-buildflags --get CFLAGS) $(dpkg-buildflags --get CPPFLAGS)"
LDFLAGS="$(dpkg-buildflags --get LDFLAGS) -Wl,--as-needed"
export CFLAGS LDFLAGS
multiarch="$(dpkg-architecture -qDEB_HOST_MULTIARCH)"
TMPDIR="$PWD/$pjdir" PATH="$PATH:$PWD/debian/dummyprogs" ./configure --build="$multiarch" --prefix=/usr \
    --sysconfdir=/etc --localstatedir=/var --libdir="/usr/lib/$multiarch" \
    --disable-asteriskssl --without-pwlib --without-sdl >/build/configure.log 2>&1 ||
    { tail -30 /build/configure.log; exit 1; }
make menuselect.makeopts BUILD_CFLAGS="$CFLAGS" BUILD_LDFLAGS="$LDFLAGS" >/build/menuselect.log 2>&1 ||
    { tail -30 /build/menuselect.log; exit 1; }
for category in MENUSELECT_ADDONS MENUSELECT_APPS MENUSELECT_BRIDGES MENUSELECT_CDR MENUSELECT_CEL \
    MENUSELECT_CHANNELS MENUSELECT_CODECS MENUSELECT_FORMATS MENUSELECT_FUNCS MENUSELECT_PBX MENUSELECT_RES \
    MENUSELECT_TESTS MENUSELECT_UTILS MENUSELECT_AGIS; do
    menuselect/menuselect --disable-category "$category" menuselect.makeopts >>/build/menuselect.log 2>&1
done
# Debian enables TEST_FRAMEWORK and disables BUILD_NATIVE: the build-option checksum depends on both.
menuselect/menuselect --enable res_pjsip --enable TEST_FRAMEWORK --disable BUILD_NATIVE menuselect.makeopts \
    >>/build/menuselect.log 2>&1
cp /usr/include/asterisk/autoconfig.h include/asterisk/autoconfig.h
make -j"$(nproc)" res AST_FORTIFY_SOURCE= DEBUG= OPTIMIZE= NOISY_BUILD=yes \
    ASTDATADIR=/usr/share/asterisk ASTVARRUNDIR=/var/run/asterisk >/build/make.log 2>&1 ||
    { tail -40 /build/make.log; exit 1; }
sum() { awk -F'"' '/AST_BUILDOPT_SUM/ {print $2}' "$1"; }
[[ "$(sum include/asterisk/buildopts.h)" == "$(sum /usr/include/asterisk/buildopts.h)" ]] ||
    { echo "build options differ from Debian's: $(grep AST_BUILDOPTS include/asterisk/buildopts.h)"; exit 1; }
# (Files, not process substitution: nothing is mounted in the build root, so there is no /dev/fd.)
for kind in --defined-only --undefined-only; do
    nm -D "$kind" res/res_pjsip.so | awk '{print $NF}' | sort >/build/built.symbols
    nm -D "$kind" /build/reference.so | awk '{print $NF}' | sort >/build/reference.symbols
    cmp -s /build/built.symbols /build/reference.symbols ||
        { echo "res_pjsip.so's symbols ($kind) differ from Debian's module"; exit 1; }
done
strip --remove-section=.comment --remove-section=.note --strip-unneeded -o /build/res_pjsip.so res/res_pjsip.so
INNER
log "compiling res_pjsip from Debian's asterisk $VERSION source with ${#PATCHES[@]} patch(es)"
chroot "$BUILD_ROOT" bash /build/build.sh "$VERSION" >&2 || die "the build failed (see above)"
install -m 0644 "$BUILD_ROOT/build/res_pjsip.so" "$OUT.tmp"
mv -f -- "$OUT.tmp" "$OUT"
log "built $OUT in $((SECONDS - START)) s"
