#!/usr/bin/env bash
# Install the host agent (sip-trunk-agent) into /opt/sip-trunk and its systemd units.
# The agent needs the standard library and boto3 only: the venv sees Ubuntu's python3-boto3.
#
# The agent comes from $IMAGE_DIR/dist/, either
#   - a sip_trunk wheel (the image build: uploaded next to component.yaml), installed with pip, or
#   - the sip_trunk package tree (dist/sip_trunk/, the stock-Ubuntu path: unpacked from the Lambda layer by the
#     host stack's user data), copied into the venv with a sip-trunk-agent launcher.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

VENV=/opt/sip-trunk
wheel="$(find "$IMAGE_DIR/dist" -maxdepth 1 -name 'sip_trunk-*.whl' 2>/dev/null | sort | tail -n1)"
tree="$IMAGE_DIR/dist/sip_trunk"

python3 -m venv --system-site-packages "$VENV"
if [[ -n "$wheel" ]]; then
    # --no-deps: pydantic/jinja2/yaml serve the control plane, never the agent.
    "$VENV/bin/pip" install --quiet --no-deps --force-reinstall "$wheel"
elif [[ -f "$tree/__init__.py" && -f "$tree/agent/__main__.py" ]]; then
    site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
    rm -rf "${site:?}/sip_trunk"
    cp -R "$tree" "$site/sip_trunk"
    printf '#!/bin/sh\nexec %s/bin/python -m sip_trunk.agent "$@"\n' "$VENV" >"$VENV/bin/sip-trunk-agent"
    chmod 0755 "$VENV/bin/sip-trunk-agent"
else
    die "no agent under $IMAGE_DIR/dist: a sip_trunk wheel (uv build layers/sip_trunk) or the sip_trunk package tree"
fi
"$VENV/bin/python" -c 'import boto3, sip_trunk.agent.__main__' || die "agent import failed"
ln -sf "$VENV/bin/sip-trunk-agent" /usr/local/bin/sip-trunk-agent

install -d -m 0750 /etc/sip-trunk
# Asterisk runs as user asterisk and reads its config through /etc/asterisk -> /var/lib/sip-trunk/releases/<v>
# (files root:asterisk 0640): its group may pass through the state directory (not list it) and read releases.
install -d -o root -g asterisk -m 0710 /var/lib/sip-trunk
install -d -o root -g asterisk -m 0750 /var/lib/sip-trunk/releases
# The hangup handler (Asterisk's user) drops recording jobs here; only the agent (root) reads and removes them.
install -d -m 0755 /var/spool/sip-trunk
install -d -o root -g asterisk -m 0770 /var/spool/sip-trunk/recordings
# Asterisk appends one call record per call here (calls-YYYYMMDD.jsonl); the agent ships and removes them.
install -d -o root -g asterisk -m 0770 /var/spool/sip-trunk/calls
# The units ship inside the package (both paths install the same copy): sip-trunk-boot.service runs
# `sip-trunk-agent bootstrap` at every boot, which enables the heartbeat/recordings timers and, on the
# standby only, watch-peer.
/usr/local/bin/sip-trunk-agent --systemctl systemctl install-units
systemctl enable sip-trunk-boot.service
log "agent installed: $("$VENV/bin/python" -c 'import sip_trunk; print(sip_trunk.__version__)')"
