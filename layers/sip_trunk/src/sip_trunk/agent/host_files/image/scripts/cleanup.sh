#!/usr/bin/env bash
# Remove build-only material from the image (keeps the scripts: the test phase and first boot use them).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root
rm -rf /usr/src/sip-trunk-asterisk
apt-get -y -q autoremove
apt-get clean
rm -rf /var/lib/apt/lists/*
# No host keys or machine identity baked into the image.
rm -f /etc/ssh/ssh_host_*
truncate -s 0 /etc/machine-id
log "cleaned"
