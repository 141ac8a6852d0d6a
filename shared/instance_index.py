"""The instance index: study, series and instance items in the ``instances`` table (see the contract in
docs/ingestion.md, "Instance index").

Ingestion writes an instance with :func:`write_instance`: one ``TransactWriteItems`` that puts the instance item
(only if absent) and creates or updates its series and study items, maintaining ``num_series``,
``num_instances`` and ``modalities``. Study and series updates are optimistic (conditioned on the values read just
before), so concurrent writers of the same study retry instead of losing counts. Readers (the streaming gateway)
use :func:`decode_item` and the key helpers.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from botocore.exceptions import ClientError

from shared.uids import validate_uid

LEVEL_STUDY, LEVEL_SERIES = "STUDY", "SERIES"


def study_pk(study: str) -> str:
    return f"STUDY#{validate_uid(study, what='StudyInstanceUID')}"


def series_sk(series: str) -> str:
    return f"SERIES#{validate_uid(series, what='SeriesInstanceUID')}"


def instance_sk(series: str, sop: str) -> str:
    return f"INSTANCE#{validate_uid(series, what='SeriesInstanceUID')}#{validate_uid(sop, what='SOPInstanceUID')}"


@dataclass
class IndexRecord:
    """Everything ingestion writes for one instance. ``study``/``series``/``instance`` hold plain Python values
    (str, int, list of str); :func:`encode_item` turns them into DynamoDB attribute values."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    patient_id: str
    study: dict[str, Any] = field(default_factory=dict)
    series: dict[str, Any] = field(default_factory=dict)
    instance: dict[str, Any] = field(default_factory=dict)


def _av(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"BOOL": v}
    if isinstance(v, int | float):
        return {"N": str(v)}
    if isinstance(v, list):
        return {"L": [_av(x) for x in v]}
    return {"S": str(v)}


def encode_item(values: dict[str, Any]) -> dict[str, Any]:
    """Plain values -> DynamoDB attribute values; ``None`` values are omitted (GSI keys must be absent, not empty)."""
    return {k: _av(v) for k, v in values.items() if v is not None}


def decode_item(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB attribute values -> plain values (N becomes int when integral)."""

    def dv(v: dict[str, Any]) -> Any:
        if "S" in v:
            return v["S"]
        if "N" in v:
            n = float(v["N"])
            return int(n) if n.is_integer() else n
        if "L" in v:
            return [dv(x) for x in v["L"]]
        if "BOOL" in v:
            return v["BOOL"]
        if "NULL" in v:
            return None
        if "M" in v:
            return {k: dv(x) for k, x in v["M"].items()}
        return v

    return {k: dv(v) for k, v in item.items()}


WriteOutcome = Literal["created", "exists"]


class IndexConflictError(Exception):
    """The SOP instance is already indexed with a different content hash."""

    def __init__(self, sop_uid: str, existing_sha256: str) -> None:
        super().__init__(f"SOP instance {sop_uid} is already stored with different content (sha256 {existing_sha256})")
        self.sop_uid = sop_uid
        self.existing_sha256 = existing_sha256


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


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


@dataclass
class _Known:
    """What a writer believes about a study: its series and modalities (a hint; conditions guard correctness)."""

    series: set[str] = field(default_factory=set)
    modalities: set[str] = field(default_factory=set)


class IndexWriter:
    """Writes instances with as few round trips as the index allows.

    A small in-process cache remembers which studies and series exist and which modalities a study lists, so the
    common case (another instance of a known series) is one ``TransactWriteItems`` with no read before it. Every
    belief is a condition in the transaction (series exists, study exists and already lists the modality, instance
    absent), so a wrong belief only cancels the transaction, after which the writer reads the items and retries.
    Counters use ``ADD`` and modalities grow with ``list_append`` guarded by ``NOT contains``, so concurrent writers
    of one study never lose an update and need no version numbers.
    """

    def __init__(self, ddb_factory: Any, table: str, *, cache_size: int = 4096) -> None:
        self._ddb = ddb_factory
        self.table = table
        self._known: dict[str, _Known] = {}
        self._cache_size = cache_size
        #: transactions retried after a cancellation (wrong belief or a concurrent writer), for metrics
        self.retries = 0

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
        for attempt in range(max_attempts):
            replacing = False
            old_sha = ""
            if guess and known is not None:
                study_exists, series_exists = True, True
                has_modality = rec.modality in known.modalities
            else:
                resp = await ddb.batch_get_item(RequestItems={self.table: {"Keys": [
                    {"pk": {"S": pk}, "sk": {"S": "STUDY"}}, {"pk": {"S": pk}, "sk": {"S": s_sk}},
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
                study = got.get("STUDY")
                study_exists, series_exists = study is not None, s_sk in got
                mods = {m.get("S", "") for m in (study or {}).get("modalities", {}).get("L", [])}
                has_modality = rec.modality in mods
                self._remember(rec.study_uid, rec.series_uid if series_exists else None, mods)
            if replacing:
                items = [{"Put": {"TableName": self.table, "Item": encode_item(dict(rec.instance, pk=pk, sk=i_sk)),
                                  "ConditionExpression": "content_sha256 = :old",
                                  "ExpressionAttributeValues": {":old": {"S": old_sha}}}}]
            else:
                items = _transaction(self.table, rec, pk, s_sk, i_sk, study_exists, series_exists, has_modality)
            try:
                await ddb.transact_write_items(TransactItems=items + list(extra_items or []))
                self._remember(rec.study_uid, rec.series_uid, {rec.modality})
                return "created"
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code not in ("TransactionCanceledException", "TransactionConflictException",
                                "ConditionalCheckFailedException"):
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

    def _remember(self, study: str, series: str | None, modalities: set[str]) -> None:
        k = self._known.get(study)
        if k is None:
            if len(self._known) >= self._cache_size:
                self._known.pop(next(iter(self._known)))
            k = self._known[study] = _Known()
        if series:
            k.series.add(series)
        k.modalities |= {m for m in modalities if m}


async def write_instance(ddb: Any, table: str, rec: IndexRecord, *, overwrite: bool = False) -> WriteOutcome:
    """Index one instance with a throw-away :class:`IndexWriter` (reads before writing)."""

    async def factory() -> Any:
        return ddb

    return await IndexWriter(factory, table, cache_size=1).write(rec, overwrite=overwrite)


def _transaction(table: str, rec: IndexRecord, pk: str, s_sk: str, i_sk: str, study_exists: bool,
                 series_exists: bool, has_modality: bool) -> list[dict[str, Any]]:
    now = now_iso()
    inst = dict(rec.instance, pk=pk, sk=i_sk, stored_at=now)
    items: list[dict[str, Any]] = [{"Put": {"TableName": table, "Item": encode_item(inst),
                                            "ConditionExpression": "attribute_not_exists(pk)"}}]
    if not series_exists:
        s_item = dict(rec.series, pk=pk, sk=s_sk, level=LEVEL_SERIES, level_sk=f"{rec.study_uid}#{rec.series_uid}",
                      num_instances=1)
        items.append({"Put": {"TableName": table, "Item": encode_item(s_item),
                              "ConditionExpression": "attribute_not_exists(pk)"}})
    else:
        items.append({"Update": {
            "TableName": table, "Key": {"pk": {"S": pk}, "sk": {"S": s_sk}},
            "UpdateExpression": "ADD num_instances :one", "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {":one": {"N": "1"}},
        }})
    if not study_exists:
        st = dict(rec.study, pk=pk, sk="STUDY", level=LEVEL_STUDY, modalities=[rec.modality], num_series=1,
                  num_instances=1, updated_at=now)
        items.append({"Put": {"TableName": table, "Item": encode_item(st),
                              "ConditionExpression": "attribute_not_exists(pk)"}})
        return items
    # Descriptive study attributes follow the latest instance; identity and counters are maintained here.
    sets = {k: v for k, v in rec.study.items() if k not in ("study_uid", "level_sk", "patient_id") and v is not None}
    names = {f"#a{i}": k for i, k in enumerate(sets)}
    values: dict[str, Any] = {f":a{i}": _av(v) for i, v in enumerate(sets.values())}
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
    items.append({"Update": {
        "TableName": table, "Key": {"pk": {"S": pk}, "sk": {"S": "STUDY"}}, "UpdateExpression": upd,
        "ConditionExpression": cond, "ExpressionAttributeValues": values,
        **({"ExpressionAttributeNames": names} if names else {}),
    }})
    return items
