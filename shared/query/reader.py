"""Reads of the instance index (DynamoDB), the only source QIDO-RS, C-FIND and metadata are served from.

The one module of :mod:`shared.query` that talks to AWS: :class:`IndexReader` takes a factory of an aiobotocore
DynamoDB client (``async () -> client``) and the table name.

The item layout and keys are those of :mod:`shared.instance_index`: study items (``sk=STUDY``), series items
(``sk=SERIES#{series}``) and instance items (``sk=INSTANCE#{series}#{sop}``) share the partition ``STUDY#{study}``.

Two caches keep reads cheap:

- :class:`SeriesCache` keeps, per series, every instance item (with its DICOM JSON) and the rendered series metadata.
  An entry is reused only while its *validator* is unchanged: the series item's instance count and the study item's
  ``updated_at``, which ingestion changes in the same transaction that adds an instance. So one small
  ``BatchGetItem`` replaces re-reading a thousand items, and a newly stored instance is visible at once.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from shared.ddb import from_item, pages
from shared.instance_index import SERIES_PREFIX, STUDY_SK, instances_prefix, level_pks, series_sk, study_pk
from shared.query.errors import QueryNotFound

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
    """Queries of the instance index table (``table``) through ``ddb``, a factory of an aiobotocore DynamoDB client.

    ``series_cache_bytes`` bounds the :class:`SeriesCache` (DICOM JSON bytes held).
    """

    #: Items per page of a listing query (``Limit``): a search that stops after a few matches reads little.
    page_size = 100

    def __init__(self, ddb: Callable[[], Awaitable[Any]], table: str, *, series_cache_bytes: int) -> None:
        self._ddb_factory = ddb
        self.table = table
        self.series_cache = SeriesCache(series_cache_bytes)
        self._series_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self.stats = {"queries": 0, "series_cache_hits": 0, "series_cache_loads": 0, "series_warmups": 0}

    async def _ddb(self) -> Any:
        return await self._ddb_factory()

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
        self, level: str, *, newest_first: bool = False, sk_between: tuple[str, str] | None = None,
        page: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Study or series items from the ``by_level_shard`` index (studies: by date; series: by study), in
        ``level_sk`` order: each shard is read ``page`` items at a time (at most :attr:`page_size`) and the shards
        are merged, so a caller that stops after ``page`` items has read at most ``page`` per shard."""
        limit = max(1, min(page or self.page_size, self.page_size))
        cond = "level_pk = :l"
        values: dict[str, Any] = {}
        if sk_between:
            cond += " AND level_sk BETWEEN :a AND :b"
            values.update({":a": {"S": sk_between[0]}, ":b": {"S": sk_between[1]}})
        shards = [
            self.query(index="by_level_shard", KeyConditionExpression=cond, Limit=limit,
                       ExpressionAttributeValues={**values, ":l": {"S": pk}}, ScanIndexForward=not newest_first)
            for pk in level_pks(level)
        ]
        return _merged(shards, key=lambda it: str(it.get("level_sk", "")), reverse=newest_first)

    def accession_items(self, accession: str) -> AsyncIterator[dict[str, Any]]:
        """Study items with this AccessionNumber (the ``by_accession`` index), newest first."""
        return self.query(index="by_accession", KeyConditionExpression="accession_key = :a",
                          ExpressionAttributeValues={":a": {"S": accession}}, ScanIndexForward=False)

    def modality_items(self, modality: str) -> AsyncIterator[dict[str, Any]]:
        """Series items of this Modality (the ``by_modality`` index), by study."""
        return self.query(index="by_modality", KeyConditionExpression="modality_key = :m",
                          ExpressionAttributeValues={":m": {"S": modality}}, Limit=self.page_size)

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

    async def study_and_series(self, study: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The study item (None if absent) and its series items by series number, in one Query: the sort keys
        ``SERIES#...`` and ``STUDY`` are neighbours (``INSTANCE#...`` sorts before both), so one range holds them."""
        study_item: dict[str, Any] | None = None
        series: list[dict[str, Any]] = []
        async for it in self.query(
            KeyConditionExpression="pk = :pk AND sk BETWEEN :lo AND :hi",
            ExpressionAttributeValues={":pk": {"S": study_pk(study)}, ":lo": {"S": SERIES_PREFIX},
                                       ":hi": {"S": STUDY_SK}},
        ):
            if it.get("sk") == STUDY_SK:
                study_item = it
            elif str(it.get("sk", "")).startswith(SERIES_PREFIX):
                series.append(it)
        series.sort(key=lambda it: (it.get("series_number", 1 << 31), it.get("series_uid", "")))
        return study_item, series

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
            raise QueryNotFound(f"study {study} does not exist")
        if se is None:
            raise QueryNotFound(f"series {series} does not exist in study {study}")
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


async def _merged(sources: list[AsyncIterator[dict[str, Any]]], *, key: Callable[[dict[str, Any]], str],
                  reverse: bool) -> AsyncIterator[dict[str, Any]]:
    """The items of several sorted sources in one sorted stream (each source is advanced only when needed)."""
    heap: list[tuple[Any, int, dict[str, Any]]] = []

    async def push(i: int) -> None:
        it = await anext(sources[i], None)
        if it is not None:
            k = key(it)
            heapq.heappush(heap, (_Desc(k) if reverse else k, i, it))

    try:
        firsts = [asyncio.ensure_future(push(i)) for i in range(len(sources))]
        try:
            await asyncio.gather(*firsts)
        except BaseException:
            # One source failed (the index unreachable): stop its siblings before the sources are closed below (a
            # generator still running cannot be closed, and that error used to hide this one).
            for t in firsts:
                t.cancel()
            await asyncio.gather(*firsts, return_exceptions=True)
            raise
        while heap:
            _, i, it = heapq.heappop(heap)
            yield it
            await push(i)
    finally:
        for src in sources:
            aclose = getattr(src, "aclose", None)
            if aclose is not None:
                await aclose()


class _Desc:
    """A string key that sorts in reverse (a heap is a min-heap)."""

    __slots__ = ("k",)

    def __init__(self, k: str) -> None:
        self.k = k

    def __lt__(self, other: _Desc) -> bool:
        return self.k > other.k

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.k == other.k
