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


async def write_instance(ddb: Any, table: str, rec: IndexRecord, *, overwrite: bool = False,
                         max_attempts: int = 25) -> WriteOutcome:
    """Write the instance, series and study items in one transaction (see the module docstring).

    Returns ``"created"``, or ``"exists"`` when the same instance (same ``content_sha256``) is already indexed.
    Raises :class:`IndexConflictError` when the SOP instance is indexed with other content and ``overwrite`` is
    false. With ``overwrite``, an existing instance item is replaced and counters are left as they are.
    """
    pk = study_pk(rec.study_uid)
    s_sk = series_sk(rec.series_uid)
    i_sk = instance_sk(rec.series_uid, rec.sop_uid)
    sha = rec.instance["content_sha256"]
    for attempt in range(max_attempts):
        resp = await ddb.batch_get_item(RequestItems={table: {"Keys": [
            {"pk": {"S": pk}, "sk": {"S": "STUDY"}}, {"pk": {"S": pk}, "sk": {"S": s_sk}},
            {"pk": {"S": pk}, "sk": {"S": i_sk}}], "ConsistentRead": True}})
        got = {i["sk"]["S"]: i for i in resp.get("Responses", {}).get(table, [])}
        existing = got.get(i_sk)
        replacing = False
        if existing is not None:
            old_sha = existing.get("content_sha256", {}).get("S", "")
            if old_sha == sha:
                return "exists"
            if not overwrite:
                raise IndexConflictError(rec.sop_uid, old_sha)
            replacing = True
        items = _transaction(table, rec, pk, s_sk, i_sk, got.get("STUDY"), got.get(s_sk), existing, replacing)
        try:
            await ddb.transact_write_items(TransactItems=items)
            return "created"
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code not in ("TransactionCanceledException", "TransactionConflictException",
                            "ConditionalCheckFailedException"):
                raise
        # A concurrent writer changed the study, series or instance: read again and retry, with jitter.
        await asyncio.sleep(min(0.5, 0.01 * (2 ** min(attempt, 6))) * random.random())
    raise RuntimeError(f"index write for SOP instance {rec.sop_uid} kept conflicting after {max_attempts} attempts")


def _transaction(table: str, rec: IndexRecord, pk: str, s_sk: str, i_sk: str, study: dict[str, Any] | None,
                 series: dict[str, Any] | None, existing: dict[str, Any] | None, replacing: bool) -> list[dict[str, Any]]:
    now = now_iso()
    inst = dict(rec.instance, pk=pk, sk=i_sk)
    if replacing and existing is not None:
        put: dict[str, Any] = {"TableName": table, "Item": encode_item(inst), "ConditionExpression": "content_sha256 = :old",
                               "ExpressionAttributeValues": {":old": existing["content_sha256"]}}
        return [{"Put": put}]
    items: list[dict[str, Any]] = [{"Put": {"TableName": table, "Item": encode_item(inst),
                                            "ConditionExpression": "attribute_not_exists(pk)"}}]
    new_series = series is None
    if new_series:
        s_item = dict(rec.series, pk=pk, sk=s_sk, level=LEVEL_SERIES, level_sk=f"{rec.study_uid}#{rec.series_uid}",
                      num_instances=1)
        items.append({"Put": {"TableName": table, "Item": encode_item(s_item),
                              "ConditionExpression": "attribute_not_exists(pk)"}})
    else:
        ver = int(series.get("version", {}).get("N", "0"))  # type: ignore[union-attr]
        items.append({"Update": {
            "TableName": table, "Key": {"pk": {"S": pk}, "sk": {"S": s_sk}},
            "UpdateExpression": "ADD num_instances :one SET version = :nv",
            "ConditionExpression": "attribute_not_exists(version) OR version = :v" if ver == 0 else "version = :v",
            "ExpressionAttributeValues": {":one": {"N": "1"}, ":v": {"N": str(ver)}, ":nv": {"N": str(ver + 1)}},
        }})
    if study is None:
        st = dict(rec.study, pk=pk, sk="STUDY", level=LEVEL_STUDY, modalities=[rec.modality], num_series=1,
                  num_instances=1, updated_at=now, version=1)
        items.append({"Put": {"TableName": table, "Item": encode_item(st),
                              "ConditionExpression": "attribute_not_exists(pk)"}})
    else:
        ver = int(study.get("version", {}).get("N", "0"))
        mods = [m.get("S", "") for m in study.get("modalities", {}).get("L", [])]
        if rec.modality not in mods:
            mods.append(rec.modality)
        # Descriptive study attributes follow the latest instance; identity and counters are maintained here.
        sets = {k: v for k, v in rec.study.items() if k not in ("study_uid", "level_sk", "patient_id") and v is not None}
        names = {f"#a{i}": k for i, k in enumerate(sets)}
        values: dict[str, Any] = {f":a{i}": _av(v) for i, v in enumerate(sets.values())}
        expr = ", ".join(f"#a{i} = :a{i}" for i in range(len(sets)))
        values.update({":one": {"N": "1"}, ":ns": {"N": "1" if new_series else "0"}, ":mods": _av(mods),
                       ":now": {"S": now}, ":v": {"N": str(ver)}, ":nv": {"N": str(ver + 1)}})
        upd = "SET modalities = :mods, updated_at = :now, version = :nv" + (f", {expr}" if expr else "")
        upd += " ADD num_instances :one, num_series :ns"
        items.append({"Update": {
            "TableName": table, "Key": {"pk": {"S": pk}, "sk": {"S": "STUDY"}}, "UpdateExpression": upd,
            "ConditionExpression": "version = :v", "ExpressionAttributeValues": values,
            **({"ExpressionAttributeNames": names} if names else {}),
        }})
    return items
