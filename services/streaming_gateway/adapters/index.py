"""Reads of the instance index for the gateway: :class:`shared.query.reader.IndexReader` (QIDO and metadata reads,
the series cache; shared with C-FIND) plus the single-instance reads of the frame and rendering paths.

Instance items for rendering and transcoding are reused for ``instance_cache_ttl_s``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from services.streaming_gateway.domain.errors import NotFound
from shared.aws import AwsClients
from shared.ddb import from_item
from shared.instance_index import instance_sk, study_pk
from shared.query.reader import INSTANCE_FIELDS, SeriesCache, SeriesEntry
from shared.query.reader import IndexReader as _SharedReader

__all__ = ["INSTANCE_FIELDS", "IndexReader", "SeriesCache", "SeriesEntry"]


class IndexReader(_SharedReader):
    """The shared index reader over the gateway's AWS clients, with cached single-instance reads."""

    def __init__(self, clients: AwsClients, *, series_cache_bytes: int, instance_ttl_s: float) -> None:
        super().__init__(clients.dynamodb, clients.settings.topology.table("instances"),
                         series_cache_bytes=series_cache_bytes)
        self.clients = clients
        self.instance_ttl_s = instance_ttl_s
        self._instances: OrderedDict[tuple[str, str, str], tuple[float, dict[str, Any]]] = OrderedDict()

    async def instance(self, study: str, series: str, sop: str) -> dict[str, Any]:
        """The instance item (with ``dicom_json``), cached for ``instance_ttl_s``; :class:`NotFound` if absent."""
        key = (study, series, sop)
        hit = self._instances.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self.instance_ttl_s:
            return hit[1]
        entry = self.series_cache.get((study, series))
        it: dict[str, Any] | None = None
        if entry is not None:
            it = next((x for x in entry.instances if x.get("sop_uid") == sop), None)
        if it is None:
            ddb = await self._ddb()
            self.stats["queries"] += 1
            resp = await ddb.get_item(
                TableName=self.table, Key={"pk": {"S": study_pk(study)}, "sk": {"S": instance_sk(series, sop)}}
            )
            if "Item" not in resp:
                raise NotFound(f"instance {sop} of series {series} in study {study} does not exist")
            it = _item(resp["Item"])
        self._instances[key] = (now, it)
        self._instances.move_to_end(key)
        while len(self._instances) > 4096:
            self._instances.popitem(last=False)
        return it


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    return from_item(raw) or {}
