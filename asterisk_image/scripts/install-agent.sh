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
for unit in "$IMAGE_DIR"/files/systemd/sip-trunk-*; do
    install -m 0644 "$unit" "/etc/systemd/system/$(basename "$unit")"
done
systemctl daemon-reload
systemctl enable sip-trunk-agent-report.timer sip-trunk-recordings.timer sip-trunk-boot.service
# watch-peer runs on the standby only: host.yaml's user data enables it there.
log "agent installed: $(/opt/sip-trunk/bin/python -c 'import sip_trunk; print(sip_trunk.__version__)')"
