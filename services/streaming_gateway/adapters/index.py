"""Reads of the instance index (DynamoDB), the only source QIDO-RS and metadata are served from.

The item layout and keys are those of :mod:`shared.instance_index`: study items (``sk=STUDY``), series items
(``sk=SERIES#{series}``) and instance items (``sk=INSTANCE#{series}#{sop}``) share the partition ``STUDY#{study}``.

Two caches keep reads cheap:

- :class:`SeriesCache` keeps, per series, every instance item (with its DICOM JSON) and the rendered series metadata.
  An entry is reused only while its *validator* is unchanged: the series item's instance count and the study item's
  ``updated_at``, which ingestion changes in the same transaction that adds an instance. So one small
  ``BatchGetItem`` replaces re-reading a thousand items, and a newly stored instance is visible at once.
- instance items for rendering and transcoding are reused for ``instance_cache_ttl_s``.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from services.streaming_gateway.domain.errors import NotFound
from shared.aws import AwsClients
from shared.ddb import from_item, pages
from shared.instance_index import SERIES_PREFIX, STUDY_SK, instance_sk, instances_prefix, series_sk, study_pk

#: Attributes of instance items that QIDO and frame logic need (everything but the large ``dicom_json``).
INSTANCE_FIELDS = (
    "pk", "sk", "sop_uid", "study_uid", "series_uid", "sop_class_uid", "instance_number", "number_of_frames",
    "#r", "#c", "bits_allocated", "bits_stored", "pixel_representation", "samples_per_pixel", "photometric",
    "transfer_syntax_uid", "content_sha256", "size_bytes", "htj2k_bytes", "frame_offsets", "frame_levels",
)
_INSTANCE_NAMES = {"#r": "rows", "#c": "columns"}


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    return from_item(raw) or {}


def _instance_order(it: dict[str, Any]) -> tuple[int, str]:
    n = it.get("instance_number")
    return (n if isinstance(n, int) else 1 << 31, it.get("sop_uid", ""))


@dataclass
class SeriesEntry:
    """Everything the gateway knows about one series, as of ``validator``."""

    study: dict[str, Any]
    series: dict[str, Any]
    instances: list[dict[str, Any]]
    validator: tuple[Any, ...]
    size: int
    #: Rendered ``[...]`` DICOM JSON of the whole series, and its gzip, made on first use.
    metadata_json: bytes | None = None
    metadata_gzip: bytes | None = None
    extra: dict[Any, Any] = field(default_factory=dict)


class SeriesCache:
    """An LRU of :class:`SeriesEntry` bounded by the bytes of DICOM JSON it holds."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.bytes = 0
        self._entries: OrderedDict[tuple[str, str], SeriesEntry] = OrderedDict()

    def get(self, key: tuple[str, str]) -> SeriesEntry | None:
        """The cached series entry (now most recently used), or None."""
        e = self._entries.get(key)
        if e is not None:
            self._entries.move_to_end(key)
        return e

    def put(self, key: tuple[str, str], entry: SeriesEntry) -> None:
        """Cache a series entry, evicting least recently used ones beyond the budget."""
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        if entry.size > self.budget:
            return
        self._entries[key] = entry
        self.bytes += entry.size
        while self.bytes > self.budget and self._entries:
            _, ev = self._entries.popitem(last=False)
            self.bytes -= ev.size


class IndexReader:
    """Queries of the instance index table."""

    def __init__(self, clients: AwsClients, *, series_cache_bytes: int, instance_ttl_s: float) -> None:
        self.clients = clients
        self.table = clients.settings.topology.table("instances")
        self.series_cache = SeriesCache(series_cache_bytes)
        self.instance_ttl_s = instance_ttl_s
        self._instances: OrderedDict[tuple[str, str, str], tuple[float, dict[str, Any]]] = OrderedDict()
        self._series_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.stats = {"queries": 0, "series_cache_hits": 0, "series_cache_loads": 0}

    async def _ddb(self) -> Any:
        return await self.clients.dynamodb()

    # --- single items -----------------------------------------------------------------------------------------------
    async def get_items(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """BatchGetItem of (pk, sk) keys; missing items are absent from the result."""
        ddb = await self._ddb()
        out: dict[tuple[str, str], dict[str, Any]] = {}
        uniq = list(dict.fromkeys(keys))
        for i in range(0, len(uniq), 100):
            pending: dict[str, Any] = {
                self.table: {"Keys": [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in uniq[i : i + 100]]}
            }
            for _ in range(8):  # bounded retries of unprocessed keys
                self.stats["queries"] += 1
                resp = await ddb.batch_get_item(RequestItems=pending)
                for raw in resp.get("Responses", {}).get(self.table, []):
                    it = _item(raw)
                    out[(it["pk"], it["sk"])] = it
                pending = resp.get("UnprocessedKeys") or {}
                if not pending:
                    break
                await asyncio.sleep(0.05)
        return out

    async def study(self, study: str) -> dict[str, Any] | None:
        """The study item, or None."""
        return (await self.get_items([(study_pk(study), STUDY_SK)])).get((study_pk(study), STUDY_SK))

    async def studies(self, uids: list[str]) -> list[dict[str, Any]]:
        """Study items of the given UIDs that exist, in the given order."""
        found = await self.get_items([(study_pk(u), STUDY_SK) for u in uids])
        return [found[(study_pk(u), STUDY_SK)] for u in dict.fromkeys(uids) if (study_pk(u), STUDY_SK) in found]

    async def heads(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
        """The study and series items of (study, series) pairs, ``{}`` where absent (one batched read)."""
        uniq = list(dict.fromkeys(pairs))
        got = await self.get_items([(study_pk(st), STUDY_SK) for st, _ in uniq]
                                   + [(study_pk(st), series_sk(se)) for st, se in uniq])
        return {(st, se): (got.get((study_pk(st), STUDY_SK), {}), got.get((study_pk(st), series_sk(se)), {}))
                for st, se in uniq}

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

    # --- queries ---------------------------------------------------------------------------------------------------
    async def query(self, *, index: str | None = None, projection: bool = False, **kw: Any) -> AsyncIterator[dict[str, Any]]:
        """Yield items of a paginated Query (stops when the caller stops iterating)."""
        ddb = await self._ddb()
        args: dict[str, Any] = {"TableName": self.table, **kw}
        if index:
            args["IndexName"] = index
        if projection:
            args["ProjectionExpression"] = ", ".join(INSTANCE_FIELDS)
            args.setdefault("ExpressionAttributeNames", {}).update(_INSTANCE_NAMES)
        async for page in pages(self._counted(ddb.query), **args):
            for raw in page:
                yield _item(raw)

    def _counted(self, call: Any) -> Any:
        async def counted(**kw: Any) -> Any:
            self.stats["queries"] += 1  # every page is a query (``/streaming/stats``)
            return await call(**kw)

        return counted

    def level_items(
        self, level: str, *, newest_first: bool = False, sk_between: tuple[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Study or series items from the ``by_level`` index (studies: by date; series: by study)."""
        cond = "#l = :l"
        values: dict[str, Any] = {":l": {"S": level}}
        if sk_between:
            cond += " AND level_sk BETWEEN :a AND :b"
            values.update({":a": {"S": sk_between[0]}, ":b": {"S": sk_between[1]}})
        return self.query(
            index="by_level",
            KeyConditionExpression=cond,
            ExpressionAttributeNames={"#l": "level"},
            ExpressionAttributeValues=values,
            ScanIndexForward=not newest_first,
        )

    def patient_items(
        self, patient_id: str, level: str, *, sk_between: tuple[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Study or series items of one PatientID from the ``by_patient`` index."""
        cond = "patient_id = :p"
        values: dict[str, Any] = {":p": {"S": patient_id}, ":l": {"S": level}}
        if sk_between:
            cond += " AND level_sk BETWEEN :a AND :b"
            values.update({":a": {"S": sk_between[0]}, ":b": {"S": sk_between[1]}})
        return self.query(
            index="by_patient",
            KeyConditionExpression=cond,
            FilterExpression="#l = :l",
            ExpressionAttributeNames={"#l": "level"},
            ExpressionAttributeValues=values,
            ScanIndexForward=False,
        )

    async def series_of_study(self, study: str) -> list[dict[str, Any]]:
        """Series items of a study, by series number."""
        items = [
            it
            async for it in self.query(
                KeyConditionExpression="pk = :pk AND begins_with(sk, :p)",
                ExpressionAttributeValues={":pk": {"S": study_pk(study)}, ":p": {"S": SERIES_PREFIX}},
            )
        ]
        items.sort(key=lambda it: (it.get("series_number", 1 << 31), it.get("series_uid", "")))
        return items

    async def instances_of_study(self, study: str, series: str | None = None) -> list[dict[str, Any]]:
        """Instance items (without DICOM JSON) of a study or of one of its series, in instance order."""
        prefix = instances_prefix(series)
        items = [
            it
            async for it in self.query(
                projection=True,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :p)",
                ExpressionAttributeValues={":pk": {"S": study_pk(study)}, ":p": {"S": prefix}},
            )
        ]
        items.sort(key=lambda it: (it.get("series_uid", ""), *_instance_order(it)))
        return items

    async def instances_by_sop(self, sop: str) -> list[dict[str, Any]]:
        """Instance items with this SOPInstanceUID (the ``by_sop`` index)."""
        return [
            it
            async for it in self.query(
                index="by_sop",
                KeyConditionExpression="sop_uid = :s",
                ExpressionAttributeValues={":s": {"S": sop}},
            )
        ]

    # --- whole series ------------------------------------------------------------------------------------------------
    async def series_entry(self, study: str, series: str) -> SeriesEntry:
        """The series with all its instance items (DICOM JSON included), from cache while still valid."""
        key = (study, series)
        heads = await self.get_items([(study_pk(study), STUDY_SK), (study_pk(study), series_sk(series))])
        st = heads.get((study_pk(study), STUDY_SK))
        se = heads.get((study_pk(study), series_sk(series)))
        if st is None:
            raise NotFound(f"study {study} does not exist")
        if se is None:
            raise NotFound(f"series {series} does not exist in study {study}")
        validator = (se.get("num_instances"), st.get("updated_at"), st.get("num_instances"))
        entry = self.series_cache.get(key)
        if entry is not None and entry.validator == validator:
            self.stats["series_cache_hits"] += 1
            return entry
        lock = self._series_locks.setdefault(key, asyncio.Lock())
        async with lock:  # one load per series at a time; concurrent requests share it
            entry = self.series_cache.get(key)
            if entry is not None and entry.validator == validator:
                self.stats["series_cache_hits"] += 1
                return entry
            self.stats["series_cache_loads"] += 1
            items = [
                it
                async for it in self.query(
                    KeyConditionExpression="pk = :pk AND begins_with(sk, :p)",
                    ExpressionAttributeValues={
                        ":pk": {"S": study_pk(study)},
                        ":p": {"S": instances_prefix(series)},
                    },
                )
            ]
            items.sort(key=_instance_order)
            size = sum(len(it.get("dicom_json", "")) + 512 for it in items)
            entry = SeriesEntry(study=st, series=se, instances=items, validator=validator, size=size)
            self.series_cache.put(key, entry)
        self._series_locks.pop(key, None)
        return entry
