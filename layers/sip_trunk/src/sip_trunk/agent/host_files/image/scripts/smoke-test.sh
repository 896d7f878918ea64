#!/usr/bin/env bash
# Test phase (a fresh instance from the new image): Asterisk boots with a minimal config, loads PJSIP and
# answers the CLI; then it is stopped and the config directory restored.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

work="$(mktemp -d)"
trap 'rm -rf "$work"; /usr/sbin/asterisk -C "$work/asterisk.conf" -rx "core stop now" >/dev/null 2>&1 || true' EXIT
cat >"$work/asterisk.conf" <<CONF
[directories]
astetcdir => $work
astmoddir => /usr/lib/asterisk/modules
astvarlibdir => $work
astdbdir => $work
astkeydir => $work
astdatadir => /usr/share/asterisk
astspooldir => $work
astrundir => $work
astlogdir => $work
astsbindir => /usr/sbin
CONF
{
    printf '[modules]\nautoload = no\n'
    while read -r module; do
        [[ -z "$module" || "$module" == \#* ]] && continue
        printf 'load = %s.so\n' "$module"
    done <"$IMAGE_DIR/files/modules.list"
} >"$work/modules.conf"
printf '[t]\ntype = transport\nprotocol = udp\nbind = 127.0.0.1:15060\n' >"$work/pjsip.conf"
for f in cdr cel features acl udptl pjproject extensions logger rtp; do : >"$work/$f.conf"; done

/usr/sbin/asterisk -C "$work/asterisk.conf" -n
for _ in $(seq 1 100); do
    if /usr/sbin/asterisk -C "$work/asterisk.conf" -rx "core waitfullybooted" 2>/dev/null | grep -q "fully booted"; then
        break
    fi
    sleep 0.2
done
/usr/sbin/asterisk -C "$work/asterisk.conf" -rx "pjsip show transports" | grep -q "127.0.0.1:15060" ||
    die "PJSIP transport not loaded"
loaded="$(/usr/sbin/asterisk -C "$work/asterisk.conf" -rx "module show" | grep -c ' Running ' || true)"
log "asterisk booted with $loaded modules running"
