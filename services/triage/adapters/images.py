"""Images as triage sees them: frame 1 and the DICOM JSON of a stored instance, read through the image store
(:mod:`shared.image_store`: radloop's images bucket or AWS HealthImaging), and heatmap PNGs, which radloop keeps in its
images bucket whatever the store."""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.exceptions import ClientError

from services.triage.domain.inputs import Frame, load_frame
from shared import storage
from shared.aws import AwsClients
from shared.image_store import ImageStore, ImageStoreError


class Images:
    """Reads what ingestion stored through ``store`` and writes heatmaps to the images bucket."""

    def __init__(self, clients: AwsClients, store: ImageStore) -> None:
        self.clients = clients
        self.store = store
        self.bucket = clients.settings.topology.bucket("images")

    async def read_frame(self, study: str, series: str, sop: str) -> Frame:
        """Frame 1 and its DICOM JSON, decoded (in a thread: decoding is CPU work).

        A missing frame or metadata raises :class:`~shared.image_store.ImageNotFound`; an undecodable one
        ``ValueError``.
        """
        cs, meta = await asyncio.gather(self.store.read_frame(study, series, sop, 1),
                                        self.store.read_metadata(study, series, sop))
        return await asyncio.to_thread(load_frame, cs, meta, self.clients.settings.pseudonym_key)

    async def metadata(self, study: str, series: str, sop: str) -> dict[str, Any] | None:
        """The stored DICOM JSON of an instance, or None when it cannot be read."""
        try:
            return await self.store.read_metadata(study, series, sop)
        except (ImageStoreError, ValueError, ClientError):
            return None

    async def put_heatmap(self, study: str, series: str, sop: str, model_version: int, png: bytes) -> str:
        """Store a heatmap PNG at :func:`shared.storage.heatmap_key`; returns the key."""
        key = storage.heatmap_key(study, series, sop, model_version)
        s3 = await self.clients.s3()
        await s3.put_object(Bucket=self.bucket, Key=key, Body=png, ContentType="image/png")
        return key
