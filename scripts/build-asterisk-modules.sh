#!/usr/bin/env bash
# Build the Asterisk modules the product's patches touch (res/<module>.c or res/<module>/*: <module>.so), from
# Debian's own source package of the Asterisk in the test root, so the real-Asterisk tests and local mode run the
# patched modules the image builds (install-host.sh applies the same patch files to the whole Asterisk build).
# Called by scripts/asterisk-root.sh; run as root.
#
#   1. a throw-away build root (mmdebstrap, same suite): build-essential, asterisk-dev of exactly VERSION (Debian's
#      autoconfig.h and buildopts.h) and the few -dev packages Asterisk's configure insists on;
#   2. `apt-get source asterisk=VERSION` in it (Debian's patches applied), then the product's patches;
#   3. Debian's recipe (debian/rules) for what the modules need: the pjproject component packed as the bundled
#      build expects, configure with Debian's options and build flags, menuselect with Debian's build options;
#      then one `make res` with every other module deselected (the patched modules and the few they depend on);
#   4. checks, for every module: the build-option checksum equals Debian's (Asterisk refuses a module whose
#      checksum differs), the module exports exactly the symbols of Debian's module (in --reference-dir) and
#      imports every symbol Debian's module imports and beyond those only symbols a --provider exports (a patch
#      may call another pjproject function: Debian's libasteriskpj.so, which Asterisk loads before any module),
#      then strips it.
# Prints nothing on standard output; writes <module>.so for every patched module into --out-dir (created, so it
# appears complete or not at all). Takes a few minutes; the caller caches the result.
#
# Usage: scripts/build-asterisk-modules.sh --suite SUITE --version VERSION --mirror URL --reference-dir DIR
#            --out-dir DIR [--provider LIB]... PATCH...
#        scripts/build-asterisk-modules.sh --list PATCH...   (prints the modules the patches touch, one a line)
set -euo pipefail

SUITE="" VERSION="" MIRROR="" REFERENCE_DIR="" OUT_DIR="" LIST=0
PATCHES=()
PROVIDERS=()
log() { printf '[build-asterisk-modules] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
while (($#)); do
    case "$1" in
    --suite) SUITE="${2:?--suite needs a value}" && shift 2 ;;
    --version) VERSION="${2:?--version needs a value}" && shift 2 ;;
    --mirror) MIRROR="${2:?--mirror needs a value}" && shift 2 ;;
    --reference-dir) REFERENCE_DIR="${2:?--reference-dir needs a directory}" && shift 2 ;;
    --out-dir) OUT_DIR="${2:?--out-dir needs a directory}" && shift 2 ;;
    --provider) PROVIDERS+=("${2:?--provider needs a file}") && shift 2 ;;
    --list) LIST=1 && shift ;;
    -*) die "unknown option: $1" ;;
    *)
        PATCHES+=("$1")
        shift
        ;;
    esac
done
((${#PATCHES[@]} > 0)) || die "no patches given"
# The modules the patches touch. Only modules of res/ are rebuilt here: a patch to anything else would not reach
# the tests.
MODULES=()
for p in "${PATCHES[@]}"; do
    [[ -f "$p" ]] || die "no patch $p"
    while read -r target; do
        [[ "$target" =~ ^b/res/(res_[a-z0-9_]+)(/[^/]+|\.c)$ ]] ||
            die "$(basename -- "$p") patches $target, which is not built into a module of res/"
        [[ " ${MODULES[*]} " == *" ${BASH_REMATCH[1]} "* ]] || MODULES+=("${BASH_REMATCH[1]}")
    done < <(awk '/^\+\+\+ / {print $2}' "$p")
done
((${#MODULES[@]} > 0)) || die "the patches touch no file"
if ((LIST)); then
    printf '%s\n' "${MODULES[@]}"
    exit 0
fi
[[ -n "$SUITE" && -n "$VERSION" && -n "$MIRROR" && -n "$REFERENCE_DIR" && -n "$OUT_DIR" ]] ||
    die "--suite, --version, --mirror, --reference-dir and --out-dir are required"
for m in "${MODULES[@]}"; do
    [[ -f "$REFERENCE_DIR/$m.so" ]] || die "no reference module $REFERENCE_DIR/$m.so"
done
for lib in "${PROVIDERS[@]}"; do [[ -f "$lib" ]] || die "no provider $lib"; done
[[ ! -e "$OUT_DIR" ]] || die "$OUT_DIR exists"
[[ "$(id -u)" -eq 0 ]] || die "run as root (mmdebstrap, chroot)"
ARCH="$(dpkg --print-architecture)"
START=$SECONDS

mkdir -p "$(dirname "$OUT_DIR")"
BUILD_ROOT="$(mktemp -d "$(dirname "$OUT_DIR")/.modules-build.XXXXXX")"
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

mkdir -p "$BUILD_ROOT/build/patches" "$BUILD_ROOT/build/reference" "$BUILD_ROOT/build/out"
for p in "${PATCHES[@]}"; do cp -- "$p" "$BUILD_ROOT/build/patches/"; done
for m in "${MODULES[@]}"; do cp -L -- "$REFERENCE_DIR/$m.so" "$BUILD_ROOT/build/reference/"; done

# Inside the build root. Debian's debian/rules is the reference for every step that shapes the module.
cat >"$BUILD_ROOT/build/build.sh" <<'INNER'
set -euo pipefail
cd /build
version="$1"
shift
apt-get -q -o APT::Sandbox::User=root source "asterisk=$version" >source.log 2>&1 || { tail -20 source.log; exit 1; }
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
# Debian enables TEST_FRAMEWORK and disables BUILD_NATIVE: the build-option checksum depends on both. Enabling a
# module enables the modules it depends on, which are built too (not installed).
enable=()
for m in "$@"; do enable+=(--enable "$m"); done
menuselect/menuselect "${enable[@]}" --enable TEST_FRAMEWORK --disable BUILD_NATIVE menuselect.makeopts \
    >>/build/menuselect.log 2>&1
cp /usr/include/asterisk/autoconfig.h include/asterisk/autoconfig.h
make -j"$(nproc)" res AST_FORTIFY_SOURCE= DEBUG= OPTIMIZE= NOISY_BUILD=yes \
    ASTDATADIR=/usr/share/asterisk ASTVARRUNDIR=/var/run/asterisk >/build/make.log 2>&1 ||
    { tail -40 /build/make.log; exit 1; }
sum() { awk -F'"' '/AST_BUILDOPT_SUM/ {print $2}' "$1"; }
[[ "$(sum include/asterisk/buildopts.h)" == "$(sum /usr/include/asterisk/buildopts.h)" ]] ||
    { echo "build options differ from Debian's: $(grep AST_BUILDOPTS include/asterisk/buildopts.h)"; exit 1; }
# (Files, not process substitution: nothing is mounted in the build root, so there is no /dev/fd.)
for m in "$@"; do
    [[ -f "res/$m.so" ]] || { echo "make res built no $m.so"; exit 1; }
    nm -D --defined-only "res/$m.so" | awk '{print $NF}' | sort >/build/built.symbols
    nm -D --defined-only "/build/reference/$m.so" | awk '{print $NF}' | sort >/build/reference.symbols
    cmp -s /build/built.symbols /build/reference.symbols || { echo "$m.so exports other symbols than Debian's module"; exit 1; }
    strip --remove-section=.comment --remove-section=.note --strip-unneeded -o "/build/out/$m.so" "res/$m.so"
done
INNER
log "compiling ${MODULES[*]} from Debian's asterisk $VERSION source with ${#PATCHES[@]} patch(es)"
chroot "$BUILD_ROOT" bash /build/build.sh "$VERSION" "${MODULES[@]}" >&2 || die "the build failed (see above)"
# Imports, checked here where the providers are: Debian's module's, plus only what a provider exports.
for m in "${MODULES[@]}"; do
    nm -D --undefined-only "$BUILD_ROOT/build/out/$m.so" | awk '{print $NF}' | sort -u >"$BUILD_ROOT/built.imports"
    nm -D --undefined-only "$BUILD_ROOT/build/reference/$m.so" | awk '{print $NF}' | sort -u >"$BUILD_ROOT/reference.imports"
    missing="$(comm -13 "$BUILD_ROOT/built.imports" "$BUILD_ROOT/reference.imports")"
    [[ -z "$missing" ]] || die "$m.so no longer imports what Debian's module does: $missing"
    : >"$BUILD_ROOT/provided"
    for lib in "${PROVIDERS[@]}"; do nm -D --defined-only "$lib" | awk '{print $NF}' >>"$BUILD_ROOT/provided"; done
    sort -u -o "$BUILD_ROOT/provided" "$BUILD_ROOT/provided"
    extra="$(comm -23 "$BUILD_ROOT/built.imports" "$BUILD_ROOT/reference.imports" | comm -23 - "$BUILD_ROOT/provided")"
    [[ -z "$extra" ]] || die "$m.so imports symbols neither Debian's module nor a provider has: $extra"
    added="$(comm -23 "$BUILD_ROOT/built.imports" "$BUILD_ROOT/reference.imports" | tr '\n' ' ')"
    [[ -z "$added" ]] || log "$m.so also imports $added(exported by ${PROVIDERS[*]})"
done
staging="$OUT_DIR.tmp.$$"
rm -rf -- "$staging"
mkdir -p "$staging"
for m in "${MODULES[@]}"; do install -m 0644 "$BUILD_ROOT/build/out/$m.so" "$staging/$m.so"; done
mv -T -- "$staging" "$OUT_DIR"
log "built ${MODULES[*]} into $OUT_DIR in $((SECONDS - START)) s"
