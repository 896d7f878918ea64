#!/usr/bin/env bash
# First boot of an instance (sip-trunk-boot.service): wire the CloudWatch agent to this stack's log group and
# install the desired config version. /etc/sip-trunk/agent.env is written by the host stack's user data.
set -euo pipefail
ENV_FILE=/etc/sip-trunk/agent.env
[[ -r "$ENV_FILE" ]] || {
    echo "no $ENV_FILE yet: nothing to do" >&2
    exit 0
}
# shellcheck source=/dev/null
source "$ENV_FILE"
STACK="${SIP_TRUNK_STACK:?SIP_TRUNK_STACK missing from $ENV_FILE}"
[[ "$STACK" =~ ^[A-Za-z0-9-]+$ ]] || {
    echo "unsafe stack name: $STACK" >&2
    exit 1
}

sed "s/__STACK__/$STACK/g" /etc/sip-trunk/cloudwatch-agent.json.template >/etc/sip-trunk/cloudwatch-agent.json
/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s \
    -c file:/etc/sip-trunk/cloudwatch-agent.json

# The Provision workflow's ApplyConfig step applies the desired version through Run Command; applying here too
# (when user data named one) shortens the time to a serving host. A failure is logged, never fatal.
if [[ -n "${SIP_TRUNK_DESIRED_VERSION:-}" ]]; then
    /usr/local/bin/sip-trunk-agent apply --version "$SIP_TRUNK_DESIRED_VERSION" ||
        echo "initial apply failed; ApplyConfig will retry" >&2
fi
