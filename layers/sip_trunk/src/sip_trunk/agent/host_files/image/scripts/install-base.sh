#!/usr/bin/env bash
# Base packages for the gateway host: time sync, security updates, fail2ban, SSM and CloudWatch agents, Python.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

log "apt update + upgrade"
apt-get "${APT_LOCK_WAIT[@]}" update -q
apt-get "${APT_LOCK_WAIT[@]}" -y -q -o Dpkg::Options::=--force-confold dist-upgrade

apt_install ca-certificates curl gnupg chrony unattended-upgrades fail2ban iptables \
    python3 python3-venv python3-boto3 sqlite3 logrotate jq

# SSM agent: preinstalled as a snap on Ubuntu's AWS images; install it when missing (minimal/custom bases).
if ! snap list amazon-ssm-agent >/dev/null 2>&1 && ! systemctl list-unit-files amazon-ssm-agent.service >/dev/null 2>&1; then
    log "installing the SSM agent"
    snap install amazon-ssm-agent --classic
fi
systemctl enable snap.amazon-ssm-agent.amazon-ssm-agent.service 2>/dev/null || systemctl enable amazon-ssm-agent.service

# CloudWatch agent from Amazon's package location for this architecture.
if ! dpkg -s amazon-cloudwatch-agent >/dev/null 2>&1; then
    arch="$(deb_arch)"
    tmp="$(mktemp -d)"
    log "installing the CloudWatch agent ($arch)"
    curl -fsSL --retry 5 -o "$tmp/amazon-cloudwatch-agent.deb" \
        "https://amazoncloudwatch-agent.s3.amazonaws.com/ubuntu/${arch}/latest/amazon-cloudwatch-agent.deb"
    dpkg -i "$tmp/amazon-cloudwatch-agent.deb"
    rm -rf "$tmp"
fi
log "base packages installed"
