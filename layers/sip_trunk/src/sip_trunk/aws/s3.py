"""S3: backups."""

from __future__ import annotations

import json
from typing import Any

from sip_trunk.aws.clients import client


class S3Objects:
    def __init__(self, s3: Any | None = None) -> None:
        self._s3 = s3

    @property
    def s3(self) -> Any:
        return self._s3 or client("s3")

    def put_json(self, bucket: str, key: str, document: Any) -> None:
        body = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
        self.s3.put_object(
            Bucket=bucket, Key=key, Body=body, ContentType="application/json", ServerSideEncryption="aws:kms"
        )
