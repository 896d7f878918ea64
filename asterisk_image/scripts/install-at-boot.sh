#!/usr/bin/env bash
# The stock-Ubuntu path: turn a plain Ubuntu 24.04 instance into a gateway host at first boot (user data runs
# this when no image from the pipeline is available). Same scripts, same order as the Image Builder component.
#   install-at-boot.sh ARTIFACTS_S3_URI   (the uploaded asterisk_image directory with dist/ wheel)
set -euo pipefail
SRC="${1:?usage: install-at-boot.sh s3://bucket/prefix}"
DEST=/opt/sip-trunk-image
started=$SECONDS
if ! command -v aws >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-boto3
fi
mkdir -p "$DEST"
python3 - "$SRC" "$DEST" <<'PY'
import sys, boto3
from pathlib import Path
src, dest = sys.argv[1], Path(sys.argv[2])
bucket, _, prefix = src.removeprefix("s3://").partition("/")
s3 = boto3.client("s3")
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
    for obj in page.get("Contents", []):
        rel = obj["Key"][len(prefix.rstrip("/")) + 1:]
        if rel and ".." not in Path(rel).parts:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(dest / rel))
PY
for step in install-base build-asterisk install-agent configure-host validate; do
    bash "$DEST/scripts/$step.sh"
done
systemctl start asterisk.service
# host.yaml's user data runs `sip-trunk-agent bootstrap` next (sip-trunk-boot.service on later boots).
echo "install-at-boot finished in $((SECONDS - started)) s" >&2
