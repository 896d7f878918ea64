#!/usr/bin/env bash
# Base packages for the gateway host: time sync, security updates, fail2ban, SSH, SSM and CloudWatch agents, Python.
# SIP_TRUNK_AWS_AGENTS=skip leaves out the SSM and CloudWatch agents (a snap and a download from Amazon: for a root
# built away from AWS, e.g. `make image-check`; validate.sh then skips their check too).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

log "apt update + upgrade"
apt-get "${APT_LOCK_WAIT[@]}" update -q
apt-get "${APT_LOCK_WAIT[@]}" -y -q -o Dpkg::Options::=--force-confold dist-upgrade

apt_install ca-certificates curl gnupg chrony unattended-upgrades fail2ban iptables \
    python3 python3-venv python3-boto3 sqlite3 logrotate jq openssh-server
# The ACME client the agent's renew-cert runs (DNS-01 in Route 53); its own certbot.timer finds no lineage in
# /etc/letsencrypt: the agent keeps its own under /var/lib/sip-trunk/acme and renews it from sip-trunk-cert.timer.
apt_install certbot python3-certbot-dns-route53

if [[ "${SIP_TRUNK_AWS_AGENTS:-install}" == install ]]; then
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
else
    log "SSM and CloudWatch agents skipped (SIP_TRUNK_AWS_AGENTS=skip)"
fi
log "base packages installed"
