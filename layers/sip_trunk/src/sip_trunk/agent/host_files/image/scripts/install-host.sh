#!/usr/bin/env bash
# The one entry point that turns a stock Ubuntu 24.04 instance into a gateway host. Both paths run exactly this:
#   - the Image Builder component's build phase (asterisk_image/component.yaml), and
#   - the host stack's user data on a stock Ubuntu image (stacks/host.yaml, InstallAtBoot=true).
# Steps, in order: base packages (fail2ban, CloudWatch agent, SSM agent, chrony, boto3), Asterisk built from the
# pinned, checksum-verified tarball with files/modules.list, the host agent, host configuration, validation.
# Prints each step's duration and the total ("install-host finished in N s") for the console log.
#
# Layout: this directory (scripts/, files/, versions.env) is package data of sip_trunk
# (sip_trunk/agent/host_files/image); dist/ next to scripts/ holds the agent to install (see install-agent.sh).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

started=$SECONDS
for step in install-base build-asterisk install-agent configure-host validate; do
    step_started=$SECONDS
    log "step $step"
    bash "$IMAGE_DIR/scripts/$step.sh"
    log "step $step finished in $((SECONDS - step_started)) s"
done
log "install-host finished in $((SECONDS - started)) s"
