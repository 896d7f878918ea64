#!/usr/bin/env bash
# Install the host agent (sip-trunk-agent) into /opt/sip-trunk and its systemd units.
# The agent needs the standard library and boto3 only: the venv sees Ubuntu's python3-boto3.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
require_root

wheel="$(find "$IMAGE_DIR/dist" -maxdepth 1 -name 'sip_trunk-*.whl' 2>/dev/null | sort | tail -n1)"
[[ -n "$wheel" ]] || die "no sip_trunk wheel under $IMAGE_DIR/dist (build it with: uv build layers/sip_trunk)"

python3 -m venv --system-site-packages /opt/sip-trunk
# --no-deps: pydantic/jinja2/yaml serve the control plane, never the agent.
/opt/sip-trunk/bin/pip install --quiet --no-deps --force-reinstall "$wheel"
/opt/sip-trunk/bin/python -c 'import boto3, sip_trunk.agent.__main__' || die "agent import failed"
ln -sf /opt/sip-trunk/bin/sip-trunk-agent /usr/local/bin/sip-trunk-agent

install -d -m 0750 /var/lib/sip-trunk /var/lib/sip-trunk/releases /etc/sip-trunk
# The units ship inside the package (the stock-Ubuntu path installs the same copy): sip-trunk-boot.service runs
# `sip-trunk-agent bootstrap` at every boot, which enables the heartbeat/recordings timers and, on the
# standby only, watch-peer.
/usr/local/bin/sip-trunk-agent --systemctl systemctl install-units
systemctl enable sip-trunk-boot.service
log "agent installed: $(/opt/sip-trunk/bin/python -c 'import sip_trunk; print(sip_trunk.__version__)')"
