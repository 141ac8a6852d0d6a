"""Writes and point reads of the instance index (keys and record: :mod:`shared.instance_index`).

Ingestion writes an instance with :class:`IndexWriter` (or :func:`write_instance`): one ``TransactWriteItems`` that
puts the instance item (only if absent) and creates or updates its series and study items, maintaining
``num_series``, ``num_instances`` and ``modalities``. Study and series updates are conditioned on what the writer
believes, so concurrent writers of the same study retry instead of losing counts.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from shared.ddb import from_item, is_conditional_failure, to_item, to_value
from shared.instance_index import (
    FRAME_OFFSETS_KEY,
    LEVEL_SERIES,
    LEVEL_STUDY,
    STUDY_SK,
    IndexConflictError,
    IndexRecord,
    WriteOutcome,
    inline_frame_offsets,
    instance_sk,
    now_iso,
    series_index_keys,
    series_sk,
    study_index_keys,
    study_pk,
)
from shared.uids import validate_uid


def encode_item(values: dict[str, Any]) -> dict[str, Any]:
    """Plain values -> DynamoDB attribute values; ``None`` values are omitted (GSI keys must be absent, not empty)."""
    return to_item(values)


def decode_item(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values -> plain values (N becomes int when integral)."""
    return from_item(item) or {}


async def get_instance(ddb: Any, table: str, study: str, series: str, sop: str) -> dict[str, Any] | None:
    resp = await ddb.get_item(TableName=table, Key={"pk": {"S": study_pk(study)}, "sk": {"S": instance_sk(series, sop)}},
                              ConsistentRead=True)
    item = resp.get("Item")
    return decode_item(item) if item else None


async def find_by_sop(ddb: Any, table: str, sop: str) -> dict[str, Any] | None:
    """The instance item of a SOP Instance UID through the ``by_sop`` GSI (eventually consistent)."""
    resp = await ddb.query(TableName=table, IndexName="by_sop", KeyConditionExpression="sop_uid = :s",
                           ExpressionAttributeValues={":s": {"S": validate_uid(sop, what="SOPInstanceUID")}}, Limit=1)
    items = resp.get("Items") or []
    return decode_item(items[0]) if items else None


async def load_frame_offsets(s3: Any, bucket: str, item: dict[str, Any]) -> list[list[int]] | None:
    """The frame-offset table of a decoded instance item: inline, or read from the images bucket when the item
    points there (``frame_offsets_key``, see :func:`shared.instance_index.fit_instance`); None when it has none."""
    inline = inline_frame_offsets(item)
    if inline is not None or not item.get(FRAME_OFFSETS_KEY):
        return inline
    obj = await s3.get_object(Bucket=bucket, Key=str(item[FRAME_OFFSETS_KEY]))
    async with obj["Body"] as body:
        data = await body.read()
    offsets: list[list[int]] = json.loads(data)
    return offsets


@dataclass
class _Known:
    """What a writer believes about a study: its series and modalities (a hint; conditions guard correctness)."""

    series: set[str] = field(default_factory=set)
    modalities: set[str] = field(default_factory=set)
    #: The study's descriptive attributes as this writer last wrote them (:func:`_study_description`), or None.
    described: str | None = None


@dataclass
class _Queued:
    """An instance waiting for a shared transaction: its own items (instance put and the caller's extras)."""

    rec: IndexRecord
    items: list[dict[str, Any]]
    key: str
    done: asyncio.Future[bool]


#: DynamoDB's limit of items per TransactWriteItems.
MAX_TRANSACTION_ITEMS = 100


class IndexWriter:
    """Writes instances with as few round trips as the index allows.

    A small in-process cache remembers which studies and series exist and which modalities a study lists, so the
    common case (another instance of a known series) is one ``TransactWriteItems`` with no read before it. Every
    belief is a condition in the transaction (series exists, study exists and already lists the modality, instance
    absent), so a wrong belief only cancels the transaction, after which the writer reads the items and retries.
    Counters use ``ADD`` and modalities grow with ``list_append`` guarded by ``NOT contains``, so concurrent writers
    of one study never lose an update and need no version numbers.

    **Group commit.** Instances written concurrently share a transaction when everything about their study is known
    (series, modality and description, as above): while one shared transaction is in flight, the next instances
    queue, and the next transaction carries them all (at most ``batch_max_instances``, and DynamoDB's 100 items),
    with one ``ADD`` per series and per study for all of them. A batch that is cancelled or fails for any reason
    commits nothing, and each of its instances is then written alone by the path above (which reads first), so an
    instance that cannot be written (a duplicate, a claim taken over) never holds back the others' outcome, and
    each caller gets its own answer or error.
    """

    def __init__(self, ddb_factory: Any, table: str, *, cache_size: int = 4096, batch_max_instances: int = 16) -> None:
        self._ddb = ddb_factory
        self.table = table
        self._known: dict[str, _Known] = {}
        self._cache_size = cache_size
        self._batch_max = batch_max_instances
        self._queue: list[_Queued] = []
        self._flusher: asyncio.Task[None] | None = None
        #: transactions retried after a cancellation (wrong belief or a concurrent writer), for metrics
        self.retries = 0
        #: shared transactions committed, and the instances they carried (for metrics and tests)
        self.batches = 0
        self.batched_instances = 0

    async def write(self, rec: IndexRecord, *, overwrite: bool = False, max_attempts: int = 25,
                    extra_items: list[dict[str, Any]] | None = None) -> WriteOutcome:
        """Index one instance (see the class docstring); ``extra_items`` join the same transaction.

        Returns ``"created"``, or ``"exists"`` when the same instance (same ``content_sha256``) is already indexed.
        Raises :class:`IndexConflictError` when the SOP instance is indexed with other content and ``overwrite`` is
        false. With ``overwrite``, an existing instance item is replaced and counters are left as they are.
        """
        ddb = await self._ddb()
        pk = study_pk(rec.study_uid)
        s_sk, i_sk = series_sk(rec.series_uid), instance_sk(rec.series_uid, rec.sop_uid)
        sha = rec.instance["content_sha256"]
        known = self._known.get(rec.study_uid)
        guess = known is not None and rec.series_uid in known.series
        description = _study_description(rec)
        if (self._batch_max > 1 and not overwrite and guess and known is not None
                and rec.modality in known.modalities and known.described == description.key):
            if await self._commit_together(rec, pk, i_sk, list(extra_items or [])):
                return "created"
            guess = False  # the shared transaction did not commit: read, then write this one alone
        for attempt in range(max_attempts):
            replacing = False
            old_sha = ""
            described = False
            if guess and known is not None:
                study_exists, series_exists = True, True
                has_modality = rec.modality in known.modalities
                described = known.described == description.key
            else:
                resp = await ddb.batch_get_item(RequestItems={self.table: {"Keys": [
                    {"pk": {"S": pk}, "sk": {"S": STUDY_SK}}, {"pk": {"S": pk}, "sk": {"S": s_sk}},
                    {"pk": {"S": pk}, "sk": {"S": i_sk}}], "ConsistentRead": True}})
                got = {i["sk"]["S"]: i for i in resp.get("Responses", {}).get(self.table, [])}
                existing = got.get(i_sk)
                if existing is not None:
                    old_sha = str(existing.get("content_sha256", {}).get("S", ""))
                    if old_sha == sha:
                        return "exists"
                    if not overwrite:
                        raise IndexConflictError(rec.sop_uid, old_sha)
                    replacing = True
                study = got.get(STUDY_SK)
                study_exists, series_exists = study is not None, s_sk in got
                mods = {m.get("S", "") for m in (study or {}).get("modalities", {}).get("L", [])}
                has_modality = rec.modality in mods
                self._remember(rec.study_uid, rec.series_uid if series_exists else None, mods)
            if replacing:
                items = [{"Put": {"TableName": self.table, "Item": encode_item(dict(rec.instance, pk=pk, sk=i_sk)),
                                  "ConditionExpression": "content_sha256 = :old",
                                  "ExpressionAttributeValues": {":old": {"S": old_sha}}}}]
            else:
                items = _transaction(self.table, rec, pk, s_sk, i_sk, study_exists, series_exists, has_modality,
                                     None if described else description)
            try:
                await ddb.transact_write_items(TransactItems=items + list(extra_items or []))
                self._remember(rec.study_uid, rec.series_uid, {rec.modality}, description.key)
                return "created"
            except ClientError as exc:
                # Retry a cancelled transaction (a wrong belief or a concurrent writer), never another error.
                code = exc.response["Error"]["Code"]
                retryable = code in ("TransactionCanceledException", "TransactionConflictException")
                if not retryable and not is_conditional_failure(exc):
                    raise
                reasons = [r.get("Code", "") for r in exc.response.get("CancellationReasons", [])]
                if extra_items and any(r == "ConditionalCheckFailed" for r in reasons[len(items):]):
                    raise  # a caller's own condition failed: not ours to retry
            # A belief was wrong or a concurrent writer got there first: read, then retry with jitter.
            self.retries += 1
            guess = False
            self._known.pop(rec.study_uid, None)
            await asyncio.sleep(min(0.5, 0.005 * (2 ** min(attempt, 7))) * random.random())
        raise RuntimeError(f"index write for SOP instance {rec.sop_uid} kept conflicting after {max_attempts} attempts")

    async def _commit_together(self, rec: IndexRecord, pk: str, i_sk: str, extra: list[dict[str, Any]]) -> bool:
        """Queue the instance for the next shared transaction; True once that committed it (see the class
        docstring), False when it did not (nothing of it was written)."""
        own = [_instance_put(self.table, rec, pk, i_sk, now_iso()), *extra]
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(rec, own, f"{pk}|{i_sk}", done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="index-group-commit")
        # A caller cancelled while it waits leaves its instance in the batch; the outcome is then as for a
        # transaction cancelled in flight (its claim and the outbox decide, as on the single path).
        return await asyncio.shield(done)

    def _take(self) -> list[_Queued]:
        """The next batch from the queue: distinct instances, at most ``batch_max_instances``, within the item limit."""
        batch: list[_Queued] = []
        keys: set[str] = set()
        series: set[tuple[str, str]] = set()
        studies: set[str] = set()
        n_items = 0
        rest: list[_Queued] = []
        for q in self._queue:
            s_new = (q.rec.study_uid, q.rec.series_uid) not in series
            st_new = q.rec.study_uid not in studies
            need = len(q.items) + int(s_new) + int(st_new)
            if len(batch) >= self._batch_max or q.key in keys or n_items + need > MAX_TRANSACTION_ITEMS:
                rest.append(q)
                continue
            batch.append(q)
            keys.add(q.key)
            series.add((q.rec.study_uid, q.rec.series_uid))
            studies.add(q.rec.study_uid)
            n_items += need
        self._queue = rest
        return batch

    def _shared_items(self, batch: list[_Queued]) -> list[dict[str, Any]]:
        items = [i for q in batch for i in q.items]
        per_series: dict[tuple[str, str], int] = {}
        per_study: dict[str, tuple[int, set[str]]] = {}
        for q in batch:
            key = (q.rec.study_uid, q.rec.series_uid)
            per_series[key] = per_series.get(key, 0) + 1
            n, mods = per_study.get(q.rec.study_uid, (0, set()))
            per_study[q.rec.study_uid] = (n + 1, mods | {q.rec.modality})
        for (study, series_uid), n in per_series.items():
            items.append(_series_count(self.table, study_pk(study), series_sk(series_uid), n))
        now = now_iso()
        for study, (n, mods) in per_study.items():
            values: dict[str, Any] = {":n": {"N": str(n)}, ":zero": {"N": "0"}, ":now": {"S": now}}
            conds = ["attribute_exists(pk)"]
            for i, m in enumerate(sorted(mods)):
                values[f":m{i}"] = {"S": m}
                conds.append(f"contains(modalities, :m{i})")
            items.append({"Update": {
                "TableName": self.table, "Key": {"pk": {"S": study_pk(study)}, "sk": {"S": STUDY_SK}},
                "UpdateExpression": "SET updated_at = :now ADD num_instances :n, num_series :zero",
                "ConditionExpression": " AND ".join(conds), "ExpressionAttributeValues": values,
            }})
        return items

    async def _flush(self) -> None:
        batch: list[_Queued] = []
        try:
            ddb = await self._ddb()
            while self._queue:
                batch = self._take()
                try:
                    await ddb.transact_write_items(TransactItems=self._shared_items(batch))
                    committed = True
                    if len(batch) > 1:
                        self.batches += 1
                        self.batched_instances += len(batch)
                except Exception:  # each instance is then written alone, and gets its own outcome or error
                    committed = False
                for q in batch:
                    if not q.done.done():
                        q.done.set_result(committed)
                batch = []
        finally:  # never leave a caller waiting (the task cancelled at shutdown, the client unavailable)
            for q in [*batch, *self._queue]:
                if not q.done.done():
                    q.done.set_result(False)
            self._queue = []

    def _remember(self, study: str, series: str | None, modalities: set[str], described: str | None = None) -> None:
        k = self._known.get(study)
        if k is None:
            if len(self._known) >= self._cache_size:
                self._known.pop(next(iter(self._known)))
            k = self._known[study] = _Known()
        if series:
            k.series.add(series)
        k.modalities |= {m for m in modalities if m}
        if described is not None:
            k.described = described


async def write_instance(ddb: Any, table: str, rec: IndexRecord, *, overwrite: bool = False) -> WriteOutcome:
    """Index one instance with a throw-away :class:`IndexWriter` (reads before writing)."""

    async def factory() -> Any:
        return ddb

    return await IndexWriter(factory, table, cache_size=1).write(rec, overwrite=overwrite)


def new_study_items(rec: IndexRecord) -> list[dict[str, Any]]:
    """The items (attribute values) that indexing ``rec`` puts when its study is new: instance, series and study, with
    every index key, exactly as :class:`IndexWriter` writes them (for loading a table in bulk, e.g. cost tests)."""
    pk = study_pk(rec.study_uid)
    items = _transaction("", rec, pk, series_sk(rec.series_uid), instance_sk(rec.series_uid, rec.sop_uid),
                         False, False, False, _study_description(rec))
    return [i["Put"]["Item"] for i in items]


@dataclass(frozen=True)
class _Description:
    """A study's descriptive attributes as one instance states them: what to SET, what to REMOVE, and a key."""

    sets: dict[str, Any]
    removes: tuple[str, ...]
    key: str


def _study_description(rec: IndexRecord) -> _Description:
    # Descriptive study attributes follow the latest instance; identity and counters are maintained elsewhere.
    sets = {k: v for k, v in rec.study.items() if k not in ("study_uid", "level_sk", "patient_id") and v is not None}
    # The by_accession key follows the accession number (absent while it is empty: an index key cannot be "").
    removes: tuple[str, ...] = ()
    if "accession_number" in rec.study:
        if rec.study["accession_number"]:
            sets["accession_key"] = rec.study["accession_number"]
        else:
            removes = ("accession_key",)
    return _Description(sets, removes, json.dumps([sorted(sets.items()), removes], default=str))


def _instance_put(table: str, rec: IndexRecord, pk: str, i_sk: str, now: str) -> dict[str, Any]:
    """The instance item's put, only if the instance is absent."""
    inst = dict(rec.instance, pk=pk, sk=i_sk, stored_at=now)
    return {"Put": {"TableName": table, "Item": encode_item(inst), "ConditionExpression": "attribute_not_exists(pk)"}}


def _series_count(table: str, pk: str, s_sk: str, n: int) -> dict[str, Any]:
    """``n`` more instances in an existing series."""
    return {"Update": {
        "TableName": table, "Key": {"pk": {"S": pk}, "sk": {"S": s_sk}},
        "UpdateExpression": "ADD num_instances :n", "ConditionExpression": "attribute_exists(pk)",
        "ExpressionAttributeValues": {":n": {"N": str(n)}},
    }}


def _transaction(table: str, rec: IndexRecord, pk: str, s_sk: str, i_sk: str, study_exists: bool,
                 series_exists: bool, has_modality: bool, description: _Description | None) -> list[dict[str, Any]]:
    """The items of one instance's index transaction. ``description`` None: this writer last wrote the same
    descriptive attributes to the study, so only its counters (and modalities) change. Every instance of a series
    states the same study attributes, and re-setting a dozen of them per instance was most of the embedded
    endpoint's work for a transaction (its expression parser is Python)."""
    now = now_iso()
    items: list[dict[str, Any]] = [_instance_put(table, rec, pk, i_sk, now)]
    if not series_exists:
        s_item = dict(rec.series, pk=pk, sk=s_sk, level=LEVEL_SERIES, level_sk=f"{rec.study_uid}#{rec.series_uid}",
                      num_instances=1, **series_index_keys(rec.study_uid, rec.series.get("modality") or rec.modality))
        items.append({"Put": {"TableName": table, "Item": encode_item(s_item),
                              "ConditionExpression": "attribute_not_exists(pk)"}})
    else:
        items.append(_series_count(table, pk, s_sk, 1))
    if not study_exists:
        st = dict(rec.study, pk=pk, sk=STUDY_SK, level=LEVEL_STUDY, modalities=[rec.modality], num_series=1,
                  num_instances=1, updated_at=now, **study_index_keys(rec.study_uid, rec.study.get("accession_number")))
        items.append({"Put": {"TableName": table, "Item": encode_item(st),
                              "ConditionExpression": "attribute_not_exists(pk)"}})
        return items
    sets = description.sets if description is not None else {}
    removes = description.removes if description is not None else ()
    names = {f"#a{i}": k for i, k in enumerate(sets)}
    values: dict[str, Any] = {f":a{i}": to_value(v) for i, v in enumerate(sets.values())}
    values.update({":one": {"N": "1"}, ":ns": {"N": "0" if series_exists else "1"}, ":now": {"S": now},
                   ":m": {"S": rec.modality}})
    upd = "SET updated_at = :now" + "".join(f", #a{i} = :a{i}" for i in range(len(sets)))
    if has_modality:
        cond = "attribute_exists(pk) AND contains(modalities, :m)"
    else:
        upd += ", modalities = list_append(modalities, :ml)"
        values[":ml"] = {"L": [{"S": rec.modality}]}
        cond = "attribute_exists(pk) AND NOT contains(modalities, :m)"
    upd += " ADD num_instances :one, num_series :ns"
    if removes:
        upd += " REMOVE " + ", ".join(removes)
    items.append({"Update": {
        "TableName": table, "Key": {"pk": {"S": pk}, "sk": {"S": STUDY_SK}}, "UpdateExpression": upd,
        "ConditionExpression": cond, "ExpressionAttributeValues": values,
        **({"ExpressionAttributeNames": names} if names else {}),
    }})
    return items
