#!/usr/bin/env bash
# Validate phase: everything the host needs is installed, enabled and configured as intended.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
load_versions

fail=0
check() { # description, command...
    local what="$1"
    shift
    if "$@" >/dev/null 2>&1; then
        log "ok: $what"
    else
        log "FAILED: $what"
        fail=1
    fi
}

check "asterisk $ASTERISK_VERSION installed" grep -qx "$ASTERISK_VERSION" /usr/lib/asterisk/SIP_TRUNK_VERSION
check "asterisk binary runs" /usr/sbin/asterisk -V
for patch in "$IMAGE_DIR"/patches/*.patch; do
    [[ -f "$patch" ]] || continue
    check "asterisk built with $(basename -- "$patch")" grep -qxF "$(basename -- "$patch")" /usr/lib/asterisk/SIP_TRUNK_PATCHES
done
while read -r module; do
    [[ -z "$module" || "$module" == \#* ]] && continue
    check "module $module" test -f "/usr/lib/asterisk/modules/$module.so"
done <"$IMAGE_DIR/files/modules.list"
check "host agent" /usr/local/bin/sip-trunk-agent --help
check "fail2ban" fail2ban-client --version
check "certbot with its Route 53 plugin (renew-cert)" sh -c 'certbot plugins 2>/dev/null | grep -q dns-route53'
check "fail2ban asterisk filter" test -f /etc/fail2ban/filter.d/asterisk.conf
if [[ "${SIP_TRUNK_AWS_AGENTS:-install}" == install ]]; then
    check "CloudWatch agent" test -x /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl
fi
check "CloudWatch config renders" sh -c "/opt/sip-trunk/bin/python -c 'from sip_trunk.agent.bootstrap import cloudwatch_agent_config as c; print(c(\"validate\").decode())' | jq -e '.metrics.namespace == \"AwsSipTrunk/Host\"'"
check "no password SSH" sh -c 'sshd -T 2>/dev/null | grep -qx "passwordauthentication no"'
check "chrony uses Amazon Time Sync" grep -q 169.254.169.123 /etc/chrony/sources.d/aws.sources
for unit in asterisk.service sip-trunk-boot.service \
    unattended-upgrades.service chrony.service fail2ban.service; do
    check "$unit enabled" systemctl is-enabled "$unit"
done
for unit in sip-trunk-agent.timer sip-trunk-recordings.timer sip-trunk-cert.timer sip-trunk-watch-peer.service; do
    check "$unit installed" test -f "/etc/systemd/system/$unit"
done
check "units verify" systemd-analyze verify /etc/systemd/system/sip-trunk-*.service /etc/systemd/system/asterisk.service
((fail == 0)) || die "validation failed"
