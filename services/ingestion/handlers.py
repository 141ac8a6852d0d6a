"""Event handlers of the ingestion service, and the map from event name to handler.

The S3 drop folder: S3 sends ``Object Created`` for keys under ``imports/`` in the ingestion bucket to EventBridge's
default bus, and a rule routes it to the ingestion queue. The handler runs the object through the same pipeline as
STOW-RS (source ``s3``):

- stored (or already stored with the same content): the object is deleted from ``imports/``;
- refused: it is moved to ``imports-rejected/<same relative key>`` with ``<key>.reason.json`` beside it
  (failure reason and sentence), and an ``InstanceRejected`` event is published;
- a transient failure (S3, DynamoDB, EventBridge) raises, so SQS redelivers it and, after the queue's
  ``maxReceiveCount``, dead-letters it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from botocore.exceptions import ClientError

from shared import event_names as ev
from shared.consumer import Handler, MessageContext
from shared.dicom.errors import OUT_OF_RESOURCES, REASON_NAMES, DicomRejection, TransientFailure
from shared.events import S3ObjectCreated
from shared.service import ServiceContext
from shared.storage import IMPORTS_PREFIX, IMPORTS_REJECTED_PREFIX

log = logging.getLogger(__name__)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def handlers(ctx: ServiceContext) -> Mapping[str, Handler]:
    """Event name -> handler. The whole event-driven behaviour of the service is listed here."""

    async def on_object_created(event: S3ObjectCreated, mctx: MessageContext) -> dict[str, Any]:
        pipeline = ctx["pipeline"]
        bucket = pipeline.ingest_bucket
        if event.bucket_name != bucket or not event.key.startswith(IMPORTS_PREFIX):
            log.info("ignoring an object outside the drop folder", extra={"bucket": event.bucket_name})
            return {"ignored": True}
        s3 = await ctx.clients.s3()
        key = event.key
        try:
            head = await s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if not _missing(exc):
                raise
            alt = unquote_plus(key)
            if alt == key:
                log.info("drop-folder object already gone (handled before)")
                return {"gone": True}
            key = alt
            try:
                head = await s3.head_object(Bucket=bucket, Key=key)
            except ClientError as exc2:
                if _missing(exc2):
                    return {"gone": True}
                raise
        size = int(head.get("ContentLength", 0))
        if size > pipeline.limits.max_bytes:
            rej = DicomRejection(OUT_OF_RESOURCES, f"The object is {size} bytes; at most {pipeline.limits.max_bytes} "
                                 "bytes are accepted per instance.", kind="too-large")
            await pipeline._rejected(rej, "s3", b"", key)
            await _move_rejected(s3, bucket, key, rej)
            return {"rejected": rej.kind}
        obj = await s3.get_object(Bucket=bucket, Key=key)
        async with obj["Body"] as stream:
            data = await stream.read()
        try:
            result = await pipeline.ingest(data, source="s3", object_key=key)
        except TransientFailure:
            raise  # storage trouble: leave the object, let SQS redeliver
        except DicomRejection as rej:
            await _move_rejected(s3, bucket, key, rej)
            return {"rejected": rej.kind}
        await s3.delete_object(Bucket=bucket, Key=key)
        return {"status": result.status, "sop_uid": result.sop_uid}

    return {ev.S3_OBJECT_CREATED: on_object_created}


def rejected_key(key: str) -> str:
    """``imports/a/b.dcm`` -> ``imports-rejected/a/b.dcm``."""
    return IMPORTS_REJECTED_PREFIX + key[len(IMPORTS_PREFIX):]


async def _move_rejected(s3: Any, bucket: str, key: str, rej: DicomRejection) -> None:
    dest = rejected_key(key)
    # Copy first, then write the reason, then delete: a crash in between leaves the object where a retry finds it.
    await s3.copy_object(Bucket=bucket, Key=dest, CopySource={"Bucket": bucket, "Key": key})
    reason = {"failure_reason": rej.failure_reason, "failure_reason_hex": f"0x{rej.failure_reason:04X}",
              "failure_reason_name": REASON_NAMES.get(rej.failure_reason, ""), "reason": rej.reason, "kind": rej.kind,
              "source_key": key, "rejected_at": datetime.now(UTC).isoformat()}
    await s3.put_object(Bucket=bucket, Key=f"{dest}.reason.json", Body=json.dumps(reason, indent=2).encode(),
                        ContentType="application/json")
    await s3.delete_object(Bucket=bucket, Key=key)
    log.info("drop-folder object rejected", extra={"kind": rej.kind})
