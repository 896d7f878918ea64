#!/usr/bin/env bash
# The one entry point that turns a stock Ubuntu 24.04 instance into a gateway host. Both paths run exactly this:
#   - the Image Builder component's build phase (asterisk_image/component.yaml), and
#   - the host stack's user data on a stock Ubuntu image (stacks/host.yaml, InstallAtBoot=true).
# Steps, in order: base packages (fail2ban, CloudWatch agent, SSM agent, chrony, boto3), Asterisk built from the
# pinned, checksum-verified tarball with files/modules.list, the host agent, host configuration, validation.
# Prints each step's duration and the total ("install-host finished in N s") for the console log.
#
# Options (each sets the environment variable the steps read; without them the build downloads the pinned source):
#   --asterisk-tarball FILE   a local Asterisk source tarball (ASTERISK_TARBALL), verified against
#   --asterisk-version V --asterisk-sha256 HEX   its version and sha256 (ASTERISK_VERSION, ASTERISK_SHA256; both)
#   --externals DIR           third-party tarballs + SHA256SUMS for a build without downloads (ASTERISK_EXTERNALS)
#   --skip-aws-agents         no SSM/CloudWatch agent (SIP_TRUNK_AWS_AGENTS=skip; a root built away from AWS)
#
# Layout: this directory (scripts/, files/, versions.env) is package data of sip_trunk
# (sip_trunk/agent/host_files/image); dist/ next to scripts/ holds the agent to install (see install-agent.sh).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

while (($#)); do
    case "$1" in
    --asterisk-tarball) export ASTERISK_TARBALL="${2:?$1 needs a file}" && shift ;;
    --asterisk-version) export ASTERISK_VERSION="${2:?$1 needs a version}" && shift ;;
    --asterisk-sha256) export ASTERISK_SHA256="${2:?$1 needs a sha256}" && shift ;;
    --externals) export ASTERISK_EXTERNALS="${2:?$1 needs a directory}" && shift ;;
    --skip-aws-agents) export SIP_TRUNK_AWS_AGENTS=skip ;;
    *) die "unknown option: $1" ;;
    esac
    shift
done
load_versions # refuses a half or malformed override before anything is installed

started=$SECONDS
for step in install-base build-asterisk install-agent configure-host validate; do
    step_started=$SECONDS
    log "step $step"
    bash "$IMAGE_DIR/scripts/$step.sh"
    log "step $step finished in $((SECONDS - step_started)) s"
done
log "install-host finished in $((SECONDS - started)) s"
