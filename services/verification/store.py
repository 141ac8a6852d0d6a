"""DynamoDB storage of cases (``cases`` table, worklist index ``by_status``) and labels (``labels`` table).

Invariants:

- every change to a case is a read-modify-write guarded by the case's revision number (optimistic concurrency), so
  two readers, or a read racing an ``InstanceScored``, can never overwrite each other: the loser retries on the new
  state;
- the rows a read appends (the read itself and, when it makes a label final, the label version) are written in the
  same transaction as the case, each with ``attribute_not_exists``: the labels table is append-only, with who and when;
- ImageVerified events travel in the case's ``outbox`` within that transaction, and leave it only after they were
  published (deterministic event ids, so a publish repeated after a crash is deduplicated downstream).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from services.verification.domain.errors import CaseConflict
from shared.aws import AwsClients

_ser, _de = TypeSerializer(), TypeDeserializer()


def _to_ddb(v: Any) -> Any:
    if isinstance(v, float):
        return Decimal(repr(v))
    if isinstance(v, dict):
        return {k: _to_ddb(x) for k, x in v.items() if x is not None}
    if isinstance(v, (list, tuple)):
        return [_to_ddb(x) for x in v]
    return v


def _from_ddb(v: Any) -> Any:
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() and "." not in str(v) and "E" not in str(v) else float(v)
    if isinstance(v, dict):
        return {k: _from_ddb(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_from_ddb(x) for x in v]
    return v


def serialize(item: dict[str, Any]) -> dict[str, Any]:
    """Python dict -> DynamoDB attribute values (None values dropped, floats as exact decimals)."""
    return {k: _ser.serialize(_to_ddb(v)) for k, v in item.items() if v is not None}


def deserialize(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _from_ddb(_de.deserialize(v)) for k, v in item.items()}


class CaseStore:
    """Cases and their labels."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        topo = clients.settings.topology
        self.cases = topo.table("cases")
        self.labels = topo.table("labels")

    async def get(self, case_id: str) -> dict[str, Any] | None:
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.cases, Key={"case_id": {"S": case_id}}, ConsistentRead=True)
        item = resp.get("Item")
        return deserialize(item) if item else None

    async def mutate(
        self,
        case_id: str,
        change: Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, list[dict[str, Any]], Any]],
        *,
        attempts: int = 10,
    ) -> tuple[dict[str, Any] | None, Any]:
        """Apply ``change(current) -> (new case or None for no change, rows to append, result)`` atomically.

        ``change`` must be pure: it is called again on the fresh record after a concurrent modification.
        Raises whatever ``change`` raises, or :class:`CaseConflict` when the case stays contended.
        """
        ddb = await self.clients.dynamodb()
        for attempt in range(attempts):
            current = await self.get(case_id)
            new, appends, result = change(current)
            if new is None:
                return current, result
            rev = int(current.get("rev", 0)) if current else 0
            new = dict(new, rev=rev + 1, case_id=case_id)
            cond = ({"ConditionExpression": "attribute_not_exists(case_id)"} if current is None else
                    {"ConditionExpression": "#rev = :rev", "ExpressionAttributeNames": {"#rev": "rev"},
                     "ExpressionAttributeValues": {":rev": {"N": str(rev)}}})
            try:
                if appends:
                    items = [{"Put": {"TableName": self.cases, "Item": serialize(new), **cond}}]
                    items += [{"Put": {"TableName": self.labels, "Item": serialize(dict(a, case_id=case_id)),
                                       "ConditionExpression": "attribute_not_exists(label_sk)"}} for a in appends]
                    await ddb.transact_write_items(TransactItems=items)
                else:
                    await ddb.put_item(TableName=self.cases, Item=serialize(new), **cond)
                return new, result
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code not in ("ConditionalCheckFailedException", "TransactionCanceledException"):
                    raise
                await asyncio.sleep(random.uniform(0.005, 0.03) * (attempt + 1))
        raise CaseConflict(f"case {case_id} is being changed concurrently; try again")

    async def history(self, case_id: str) -> list[dict[str, Any]]:
        """Reads and label versions of a case, oldest first."""
        ddb = await self.clients.dynamodb()
        out: list[dict[str, Any]] = []
        kw: dict[str, Any] = {"TableName": self.labels, "KeyConditionExpression": "case_id = :c",
                              "ExpressionAttributeValues": {":c": {"S": case_id}}, "ConsistentRead": True}
        while True:
            resp = await ddb.query(**kw)
            out += [deserialize(i) for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return out
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    async def worklist_page(
        self, status: str, *, start: dict[str, Any] | None, keep: Callable[[dict[str, Any]], bool], limit: int,
        max_scanned: int = 5000,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Up to ``limit`` cases of ``status`` in worklist order that pass ``keep``, and the cursor to continue."""
        ddb = await self.clients.dynamodb()
        kw: dict[str, Any] = {"TableName": self.cases, "IndexName": "by_status",
                              "KeyConditionExpression": "#s = :s", "ExpressionAttributeNames": {"#s": "status"},
                              "ExpressionAttributeValues": {":s": {"S": status}}, "Limit": 100}
        if start:
            kw["ExclusiveStartKey"] = start
        out: list[dict[str, Any]] = []
        scanned = 0
        while True:
            resp = await ddb.query(**kw)
            items = resp.get("Items", [])
            for raw in items:
                scanned += 1
                c = deserialize(raw)
                if keep(c):
                    out.append(c)
                    if len(out) == limit:
                        cursor = {"case_id": raw["case_id"], "status": raw["status"],
                                  "priority_sk": raw["priority_sk"]}
                        return out, cursor
            if "LastEvaluatedKey" not in resp or scanned >= max_scanned:
                return out, (resp.get("LastEvaluatedKey") if scanned >= max_scanned else None)
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    async def scan(self, filter_expression: str, names: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every case matching a filter (performance metrics, outbox sweep; a projection would replace it at scale)."""
        ddb = await self.clients.dynamodb()
        kw: dict[str, Any] = {"TableName": self.cases, "FilterExpression": filter_expression}
        if names:
            kw["ExpressionAttributeNames"] = names
        out: list[dict[str, Any]] = []
        while True:
            resp = await ddb.scan(**kw)
            out += [deserialize(i) for i in resp.get("Items", [])]
            if "LastEvaluatedKey" not in resp:
                return out
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Inverse of :func:`encode_cursor`; ValueError names a malformed cursor."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(key, dict) or set(key) != {"case_id", "status", "priority_sk"}:
            raise ValueError
        for v in key.values():
            if not isinstance(v, dict) or set(v) != {"S"} or not isinstance(v["S"], str):
                raise ValueError
        return key
    except ValueError:
        raise ValueError(f"cursor {cursor[:40]!r} is not a cursor this worklist returned") from None
