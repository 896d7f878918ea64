"""S3: backups."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from botocore.exceptions import ClientError

from sip_trunk.aws.clients import aws_call, client, error_code


class S3Objects:
    def __init__(self, s3: Any | None = None) -> None:
        self._s3 = s3

    @property
    def s3(self) -> Any:
        return self._s3 or client("s3")

    def put_json(self, bucket: str, key: str, document: Any) -> None:
        body = json.dumps(document, indent=2, sort_keys=True, default=str).encode()
        # The bucket's default encryption (the stack key) applies; naming aws:kms here would pick aws/s3.
        with aws_call("PutObject"):
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")

    def put_if_changed(self, bucket: str, key: str, body: bytes) -> bool:
        digest = hashlib.sha256(body).hexdigest()
        try:
            with aws_call("HeadObject"):
                head = self.s3.head_object(Bucket=bucket, Key=key)
            if head.get("Metadata", {}).get("sha256") == digest:
                return False
        except ClientError as exc:
            if error_code(exc) not in {"404", "NoSuchKey", "NotFound"}:
                raise
        with aws_call("PutObject"):
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata={"sha256": digest})
        return True
