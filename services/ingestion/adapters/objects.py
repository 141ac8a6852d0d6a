"""S3 objects of ingestion's own bucket: quarantine and the drop folder. (The stored instance goes to the image
store, :mod:`shared.image_store`.)

The drop folder: S3 sends ``Object Created`` for keys under ``imports/`` in the ingestion bucket; a refused object is
moved to ``imports-rejected/<same relative key>`` with ``<key>.reason.json`` beside it (failure reason and sentence).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from shared.aws import AwsClients
from shared.dicom.errors import REASON_NAMES, DicomRejection
from shared.storage import IMPORTS_PREFIX, IMPORTS_REJECTED_PREFIX

log = logging.getLogger(__name__)

QUARANTINE_PREFIX = "quarantine/"


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def rejected_key(key: str) -> str:
    """``imports/a/b.dcm`` -> ``imports-rejected/a/b.dcm``."""
    return IMPORTS_REJECTED_PREFIX + key[len(IMPORTS_PREFIX):]


class DropFolder:
    """The ingestion bucket: drop-folder objects (``imports/``) and quarantined instances."""

    def __init__(self, clients: AwsClients, bucket: str) -> None:
        self.clients = clients
        self.bucket = bucket

    async def size(self, key: str) -> tuple[str, int] | None:
        """``(key, bytes)`` of a dropped object, or None when it is gone (handled before).

        S3 notifications carry the key URL-encoded (``+`` for spaces); the decoded key is tried when the raw one is
        missing.
        """
        s3 = await self.clients.s3()
        for candidate in dict.fromkeys([key, unquote_plus(key)]):
            try:
                head = await s3.head_object(Bucket=self.bucket, Key=candidate)
            except ClientError as exc:
                if not _missing(exc):
                    raise
                continue
            return candidate, int(head.get("ContentLength", 0))
        return None

    async def read(self, key: str) -> bytes:
        """The object's bytes."""
        s3 = await self.clients.s3()
        obj = await s3.get_object(Bucket=self.bucket, Key=key)
        async with obj["Body"] as stream:
            data: bytes = await stream.read()
        return data

    async def delete(self, key: str) -> None:
        """Remove a handled object."""
        await (await self.clients.s3()).delete_object(Bucket=self.bucket, Key=key)

    async def move_rejected(self, key: str, rej: DicomRejection) -> None:
        """Move a refused object to ``imports-rejected/`` with its reason beside it."""
        s3 = await self.clients.s3()
        dest = rejected_key(key)
        # Copy first, then write the reason, then delete: a crash in between leaves the object where a retry finds it.
        await s3.copy_object(Bucket=self.bucket, Key=dest, CopySource={"Bucket": self.bucket, "Key": key})
        reason = {"failure_reason": rej.failure_reason, "failure_reason_hex": f"0x{rej.failure_reason:04X}",
                  "failure_reason_name": REASON_NAMES.get(rej.failure_reason, ""), "reason": rej.reason,
                  "kind": rej.kind, "source_key": key, "rejected_at": datetime.now(UTC).isoformat()}
        await s3.put_object(Bucket=self.bucket, Key=f"{dest}.reason.json", Body=json.dumps(reason, indent=2).encode(),
                            ContentType="application/json")
        await s3.delete_object(Bucket=self.bucket, Key=key)
        log.info("drop-folder object rejected", extra={"kind": rej.kind})

    async def quarantine(self, content_sha256: str, data: bytes, reason: dict[str, Any]) -> None:
        """Keep an instance that must not be stored (e.g. burned-in annotation) with its reason."""
        s3 = await self.clients.s3()
        key = f"{QUARANTINE_PREFIX}{content_sha256}.dcm"
        await s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        await s3.put_object(Bucket=self.bucket, Key=f"{key}.reason.json", Body=json.dumps(reason).encode())
