"""The images bucket as triage sees it: frame 1 and the DICOM JSON of a stored instance, and heatmap PNGs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from botocore.exceptions import ClientError

from services.triage.domain.inputs import Frame, load_frame
from shared import storage
from shared.aws import AwsClients


class Images:
    """Reads what ingestion stored (keys from :mod:`shared.storage`) and writes heatmaps next to it."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.bucket = clients.settings.topology.bucket("images")

    async def _get(self, key: str) -> bytes:
        s3 = await self.clients.s3()
        obj = await s3.get_object(Bucket=self.bucket, Key=key)
        async with obj["Body"] as body:
            return bytes(await body.read())

    async def read_frame(self, study: str, series: str, sop: str) -> Frame:
        """Frame 1 and its DICOM JSON, decoded (in a thread: decoding is CPU work).

        A missing object raises botocore's ``ClientError``; an undecodable one ``ValueError``.
        """
        cs, meta = await asyncio.gather(self._get(storage.frame_key(study, series, sop, 1)),
                                        self._get(storage.metadata_key(study, series, sop)))
        return await asyncio.to_thread(load_frame, cs, meta)

    async def metadata(self, study: str, series: str, sop: str) -> dict[str, Any] | None:
        """The stored DICOM JSON of an instance, or None when it cannot be read."""
        try:
            meta = json.loads(await self._get(storage.metadata_key(study, series, sop)))
        except ClientError:
            return None
        return meta if isinstance(meta, dict) else None

    async def put_heatmap(self, study: str, series: str, sop: str, model_version: int, png: bytes) -> str:
        """Store a heatmap PNG at :func:`shared.storage.heatmap_key`; returns the key."""
        key = storage.heatmap_key(study, series, sop, model_version)
        s3 = await self.clients.s3()
        await s3.put_object(Bucket=self.bucket, Key=key, Body=png, ContentType="image/png")
        return key
