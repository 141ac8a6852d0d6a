"""The ``radloop`` image store: HTJ2K Lossless RPCL frames, DICOM JSON and the original object in the images bucket,
at the keys of :mod:`shared.storage` (the default; nothing here changes what radloop stored before the interface).

Storing is synchronous: :meth:`RadloopStore.store_instance` returns once every object is written, so the instance is
ready to index and announce; there are no import jobs to submit or poll.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from botocore.exceptions import ClientError

from shared import storage
from shared.aws import AwsClients
from shared.image_store import ImageNotFound, ImageStoreUnavailable, ImportReport, NewInstance, StoreReceipt
from shared.settings import Settings

log = logging.getLogger(__name__)

_MISSING = ("NoSuchKey", "404", "NotFound")


class RadloopStore:
    """The images bucket as an :class:`~shared.image_store.ImageStore` (at most ``concurrency`` PUTs at once)."""

    def __init__(self, settings: Settings, clients: AwsClients, *, concurrency: int = 64) -> None:
        self.clients = clients
        self.bucket = settings.topology.bucket("images")
        self._puts = asyncio.Semaphore(concurrency)

    # --- writing ----------------------------------------------------------------------------------------------------
    async def put_image_object(self, key: str, body: bytes, content_type: str) -> None:
        """One PUT (bounded by the semaphore)."""
        s3 = await self.clients.s3()
        async with self._puts:
            await s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)

    async def store_instance(self, inst: NewInstance) -> StoreReceipt:
        """PUT the original, the DICOM JSON, every frame and the extra objects concurrently; any failure raises."""
        s, se, i = inst.study_uid, inst.series_uid, inst.sop_uid
        objects = [(storage.original_key(s, se, i), inst.p10, "application/dicom"),
                   (storage.metadata_key(s, se, i), inst.dicom_json.encode(), "application/dicom+json")]
        objects += [(storage.frame_key(s, se, i, n), cs, "image/jphc") for n, cs in enumerate(inst.frames, 1)]
        objects += list(inst.extra_objects)
        await asyncio.gather(*(self.put_image_object(k, b, t) for k, b, t in objects))
        return StoreReceipt(ready=True)

    # --- reading ----------------------------------------------------------------------------------------------------
    async def read_key(self, key: str) -> bytes:
        """GetObject; :class:`ImageNotFound` for a missing key, :class:`ImageStoreUnavailable` for other failures."""
        s3 = await self.clients.s3()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=key)
            async with resp["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in _MISSING:
                raise ImageNotFound("the requested object does not exist") from None
            log.warning("s3 read failed", extra={"code": code})
            raise ImageStoreUnavailable("image storage is unavailable; retry later") from None
        return data

    async def read_frame(self, study: str, series: str, sop: str, number: int) -> bytes:
        return await self.read_key(storage.frame_key(study, series, sop, number))

    async def read_metadata(self, study: str, series: str, sop: str) -> dict[str, Any]:
        """The stored DICOM JSON; ValueError when the object is not a JSON object."""
        meta = json.loads(await self.read_key(storage.metadata_key(study, series, sop)))  # ValueError if not JSON
        if not isinstance(meta, dict):
            raise ValueError(f"instance metadata is a JSON {type(meta).__name__}, expected a DICOM JSON object")
        return meta

    async def read_original(self, study: str, series: str, sop: str) -> bytes:
        return await self.read_key(storage.original_key(study, series, sop))

    async def original_object(self, study: str, series: str, sop: str) -> tuple[str, str]:
        return self.bucket, storage.original_key(study, series, sop)

    # --- imports: none (storing is synchronous) -------------------------------------------------------------------
    async def submit_due(self, *, force: bool = False) -> int:
        return 0

    async def poll_imports(self) -> list[ImportReport]:
        return []

    async def import_job_changed(self, job_id: str) -> ImportReport | None:
        return None

    async def acknowledge_imports(self, job_id: str) -> None:
        return None
