#!/usr/bin/env bash
# Host hardening and service configuration: SSH without passwords, security-only unattended upgrades,
# Amazon Time Sync, fail2ban defaults.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root
files="$IMAGE_DIR/files"

install -m 0644 "$files/sshd-sip-trunk.conf" /etc/ssh/sshd_config.d/60-sip-trunk.conf
sshd -t

install -m 0644 "$files/unattended-upgrades.conf" /etc/apt/apt.conf.d/52sip-trunk-unattended-upgrades
install -m 0644 "$files/auto-upgrades.conf" /etc/apt/apt.conf.d/20auto-upgrades
systemctl enable unattended-upgrades.service

install -d /etc/chrony/sources.d
install -m 0644 "$files/chrony-aws.sources" /etc/chrony/sources.d/aws.sources
systemctl enable chrony.service

# The gateway's own jail/filter are rendered per deployment and written to /etc/fail2ban by `sip-trunk-agent
# apply`; the image ships only the defaults (and fail2ban's stock `asterisk` filter they build on).
install -m 0644 "$files/fail2ban-defaults.local" /etc/fail2ban/jail.d/00-sip-trunk-defaults.local
test -f /etc/fail2ban/filter.d/asterisk.conf || die "fail2ban's asterisk filter is missing"
systemctl enable fail2ban.service

# The CloudWatch agent configuration is written per stack by `sip-trunk-agent bootstrap` at boot.
install -d /etc/sip-trunk
log "host configured"
