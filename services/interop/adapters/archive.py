"""The archive as the interop service sees it: the instance index, stored originals (through the image store, so
``image_store=healthimaging`` works as the default does) and heatmaps (read), and the ingestion drop folder (write),
through which derived objects enter the archive like any instance."""

from __future__ import annotations

from typing import Any

from shared.aws import AwsClients
from shared.image_store import ImageStore
from shared.image_store.factory import open_image_store
from shared.image_store.settings import ImageStoreSettings
from shared.index_writer import get_instance
from shared.storage import INTEROP_DROP_PREFIX
from shared.uids import validate_uid


class Archive:
    def __init__(self, clients: AwsClients, store: ImageStore | None = None) -> None:
        topo = clients.settings.topology
        self.clients = clients
        if store is None:
            assert isinstance(clients.settings, ImageStoreSettings), "the interop settings name the image store"
            store = open_image_store(clients.settings, clients)
        #: Where stored instances' originals are (radloop's images bucket, or HealthImaging's kept import objects).
        self.store = store
        self.table = topo.table("instances")
        self.images_bucket = topo.bucket("images")
        self.ingest_bucket = topo.bucket("ingestion")

    async def instance(self, study: str, series: str, sop: str) -> dict[str, Any] | None:
        """The index item of one instance (strongly consistent), or None."""
        return await get_instance(await self.clients.dynamodb(), self.table, study, series, sop)

    async def original(self, study: str, series: str, sop: str) -> bytes:
        """A stored instance as its P10 object, from whichever image store holds it
        (:class:`~shared.image_store.ImageNotFound` when it has none)."""
        return await self.store.read_original(study, series, sop)

    async def heatmap(self, key: str) -> bytes:
        """A heatmap PNG triage wrote to the images bucket (it keeps them there with either image store)."""
        s3 = await self.clients.s3()
        obj = await s3.get_object(Bucket=self.images_bucket, Key=key)
        async with obj["Body"] as stream:
            return bytes(await stream.read())

    async def drop(self, sop_uid: str, data: bytes) -> str:
        """Hand a Part 10 object to ingestion through ``imports/interop/{SOPInstanceUID}.dcm``; returns the key.

        Ingestion does not de-identify objects under that prefix again (they derive from stored instances), see
        :data:`shared.storage.INTEROP_DROP_PREFIX`."""
        key = f"{INTEROP_DROP_PREFIX}{validate_uid(sop_uid, what='SOPInstanceUID')}.dcm"
        s3 = await self.clients.s3()
        await s3.put_object(Bucket=self.ingest_bucket, Key=key, Body=data, ContentType="application/dicom")
        return key


class ForwardedLog:
    """Which destination already received which instance (the state table), so a retry resends only to the rest."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        self.table = clients.settings.topology.table("state")

    @staticmethod
    def _key(destination: str, sop: str) -> dict[str, Any]:
        return {"key": {"S": f"forwarded#{destination}#{sop}"}}

    async def done(self, destination: str, sop: str) -> bool:
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.table, Key=self._key(destination, sop), ConsistentRead=True)
        return "Item" in resp

    async def mark(self, destination: str, sop: str) -> None:
        ddb = await self.clients.dynamodb()
        await ddb.put_item(TableName=self.table, Item=self._key(destination, sop))
