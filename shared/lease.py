"""The one lease protocol on the idempotency table, used by the idempotency store and by ingestion's claims.

A record ``id`` carries ``status`` (INPROGRESS or COMPLETED), an ``owner`` token, ``in_progress_expiry`` (the lease:
until when an INPROGRESS record is live) and, when the record is not kept for ever, ``expiration`` (its TTL)::

    holder A: acquire(id) ──ok──> work ──> complete (status COMPLETED, lease removed)
    holder B: acquire(id) ──LeaseTaken──> read the record and decide (duplicate, wait, refuse)
    holder C: acquire(id) after A died (lease passed) ──ok──> C owns it and redoes the (idempotent) work

Invariants:
- :meth:`LeaseTable.acquire` succeeds only if the record is absent, or expired (``expiration`` passed), or
  INPROGRESS with its lease passed (stale), and, where ``match_any`` is given, only if one of those attributes is
  equal too;
- :meth:`renew`, :meth:`complete_item` and :meth:`release` act only while ``owner`` is still the caller's token, so a
  holder whose lease was taken over can never overwrite or delete the new holder's record.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from shared.ddb import from_item, to_value, write_if
from shared.exceptions import ConditionFailedError

INPROGRESS = "INPROGRESS"
COMPLETED = "COMPLETED"

#: ``async () -> DynamoDB client`` (e.g. ``AwsClients.dynamodb``).
DdbFactory = Callable[[], Awaitable[Any]]


def new_token() -> str:
    """A fresh owner token."""
    return uuid.uuid4().hex


def _n(t: float) -> dict[str, str]:
    # Whole seconds stay integers (the idempotency store's records); fractions keep millisecond precision.
    return {"N": str(int(t))} if float(t).is_integer() else {"N": f"{t:.3f}"}


class LeaseTaken(Exception):  # noqa: N818 (a control-flow signal, not a failure of the caller)
    """Someone else holds a live lease on the record (or it is completed and not expired, or ``match_any`` differs)."""


class LeaseTable:
    """Lease records of one DynamoDB table (key attribute ``id``)."""

    def __init__(self, ddb: DdbFactory, table: str) -> None:
        self._ddb = ddb
        self.table = table

    async def acquire(self, rid: str, token: str, *, now: float, lease_until: float, expires_at: float | None = None,
                      attrs: Mapping[str, Any] | None = None, match_any: Mapping[str, Any] | None = None) -> None:
        """Write an INPROGRESS record owned by ``token`` (see the module invariants); raise :class:`LeaseTaken`.

        ``attrs`` are stored with the record (plain values); ``match_any`` are attributes of which a stale INPROGRESS
        record must hold at least one for the takeover (e.g. the same content hash, or the same dataset).
        """
        item: dict[str, Any] = {"id": {"S": rid}, "status": {"S": INPROGRESS}, "owner": {"S": token},
                                "in_progress_expiry": _n(lease_until)}
        if expires_at is not None:
            item["expiration"] = _n(expires_at)
        item.update({k: to_value(v) for k, v in (attrs or {}).items()})
        names = {"#s": "status"}
        values: dict[str, Any] = {":now": _n(now), ":inprogress": {"S": INPROGRESS}}
        stale = "#s = :inprogress AND in_progress_expiry < :now"
        same: list[str] = []
        for i, (k, v) in enumerate((match_any or {}).items()):
            names[f"#m{i}"] = k
            values[f":m{i}"] = to_value(v)
            same.append(f"#m{i} = :m{i}")
        if same:
            stale += " AND (" + " OR ".join(same) + ")"
        try:
            await write_if((await self._ddb()).put_item, TableName=self.table, Item=item,
                           # A record without ``expiration`` (kept for ever) never matches "expiration < :now".
                           ConditionExpression=f"attribute_not_exists(id) OR expiration < :now OR ({stale})",
                           ExpressionAttributeNames=names, ExpressionAttributeValues=values)
        except ConditionFailedError:
            raise LeaseTaken(rid) from None

    async def take_over(self, rid: str, token: str, *, lease_until: float, condition: str,
                        names: Mapping[str, str], values: Mapping[str, Any], attrs: Mapping[str, Any]) -> bool:
        """Replace a record under the caller's own ``condition`` (e.g. a completed one being overwritten) with an
        INPROGRESS record owned by ``token``; False when the condition is false."""
        item: dict[str, Any] = {"id": {"S": rid}, "status": {"S": INPROGRESS}, "owner": {"S": token},
                                "in_progress_expiry": _n(lease_until), **{k: to_value(v) for k, v in attrs.items()}}
        try:
            await write_if((await self._ddb()).put_item, TableName=self.table, Item=item, ConditionExpression=condition,
                           ExpressionAttributeNames=dict(names),
                           ExpressionAttributeValues={k: to_value(v) for k, v in values.items()})
        except ConditionFailedError:
            return False
        return True

    async def get(self, rid: str) -> dict[str, Any] | None:
        """The record as plain values (a consistent read), or None."""
        resp = await (await self._ddb()).get_item(TableName=self.table, Key={"id": {"S": rid}}, ConsistentRead=True)
        return from_item(resp.get("Item"))

    async def holds(self, rid: str, token: str) -> bool:
        """Whether ``token`` still owns the record."""
        item = await self.get(rid)
        return item is not None and item.get("owner") == token

    async def renew(self, rid: str, token: str, lease_until: float) -> bool:
        """Push the lease forward while the owner works; False when the record is no longer ours."""
        try:
            await write_if((await self._ddb()).update_item, TableName=self.table, Key={"id": {"S": rid}},
                           UpdateExpression="SET in_progress_expiry = :e", ConditionExpression="#o = :token",
                           ExpressionAttributeNames={"#o": "owner"},
                           ExpressionAttributeValues={":e": _n(lease_until), ":token": {"S": token}})
        except ConditionFailedError:
            return False
        return True

    def complete_item(self, rid: str, token: str, *, attrs: Mapping[str, Any] | None = None,
                      expires_at: float | None = None) -> dict[str, Any]:
        """The completion as an ``Update`` (for a transaction, or alone): status COMPLETED, lease removed, ``attrs``
        set, only while ``token`` owns the record."""
        names = {"#s": "status", "#o": "owner"}
        values: dict[str, Any] = {":done": {"S": COMPLETED}, ":t": {"S": token}}
        sets = ["#s = :done"]
        extra = dict(attrs or {})
        if expires_at is not None:
            values[":exp"] = _n(expires_at)
            sets.append("expiration = :exp")
        for i, (k, v) in enumerate(extra.items()):
            names[f"#a{i}"] = k
            values[f":a{i}"] = to_value(v)
            sets.append(f"#a{i} = :a{i}")
        return {"Update": {
            "TableName": self.table, "Key": {"id": {"S": rid}},
            "UpdateExpression": "SET " + ", ".join(sets) + " REMOVE in_progress_expiry", "ConditionExpression": "#o = :t",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
        }}

    async def complete(self, rid: str, token: str, *, attrs: Mapping[str, Any] | None = None,
                       expires_at: float | None = None) -> None:
        """Complete an owned record (see :meth:`complete_item`); :class:`ConditionFailedError` if it is not ours."""
        await write_if((await self._ddb()).update_item,
                       **self.complete_item(rid, token, attrs=attrs, expires_at=expires_at)["Update"])

    async def release(self, rid: str, token: str) -> None:
        """Delete the record if ``token`` still owns it (after a failure, so a retry can run)."""
        try:
            await write_if((await self._ddb()).delete_item, TableName=self.table, Key={"id": {"S": rid}},
                           ConditionExpression="#o = :token", ExpressionAttributeNames={"#o": "owner"},
                           ExpressionAttributeValues={":token": {"S": token}})
        except ConditionFailedError:
            pass  # not ours any more: the new holder's record stays
