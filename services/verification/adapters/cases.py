"""DynamoDB storage of cases (``cases`` table, worklist index ``by_status``) and labels (``labels`` table).

Invariants:

- every change to a case is a read-modify-write guarded by the case's revision number (optimistic concurrency), so
  two readers, or a read racing an ``InstanceScored``, can never overwrite each other: the loser retries on the new
  state;
- the rows a read appends (the read itself and, when it makes a label final, the label version) are written in the
  same transaction as the case, each with ``attribute_not_exists``: the labels table is append-only, with who and when;
- ImageVerified events travel in the case's ``outbox`` within that transaction, and leave it only after they were
  published (deterministic event ids, so a publish repeated after a crash is deduplicated downstream);
- the keys of the sparse indexes (:func:`index_keys`) are derived from the case on every write, in the same write,
  so an index never disagrees with its case: ``by_outbox`` holds the cases with unpublished events (the sweeper reads
  it), ``by_outcome`` the scored and verified cases per model version and ``by_pair`` the double-read final cases
  (live performance reads a window of each). The model versions that have outcomes are a set in the state table,
  added to in the transaction that gives a version its first outcome (as far as this process knows).

No path reads the whole table: every read is a key, a page of the worklist, or a bounded window of an index.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from services.verification.domain import performance as perf
from services.verification.domain.errors import CaseConflict
from shared.aws import AwsClients
from shared.ddb import collect, from_item, pages, to_item, to_value, write_if
from shared.exceptions import ConditionFailedError

#: How the change function of :meth:`CaseStore.mutate` answers: (new case or None, rows to append, result).
Change = Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, list[dict[str, Any]], Any]]
#: The worklist index's key attributes: a cursor is exactly these, taken from the last case of a page.
CURSOR_KEYS = ("case_id", "status", "priority_sk")
#: Attributes derived by :func:`index_keys` (never set by the domain).
INDEX_KEYS = ("outbox_pk", "outcome_pk", "outcome_sk", "pair_pk", "pair_sk")
#: The state-table item listing the model versions that have outcomes (a number set, ``versions``).
VERSIONS_KEY = "verification#outcome-versions"


def index_keys(case: dict[str, Any]) -> dict[str, Any]:
    """The case with its sparse-index keys derived from its content (absent where the case is not in that index)."""
    out = {k: v for k, v in case.items() if k not in INDEX_KEYS}
    if out.get("outbox"):
        out["outbox_pk"] = "pending"
        out.setdefault("outbox_since", 0)
    o = perf.outcome_of(out)
    if o is not None:
        out["outcome_pk"] = f"v{o.model_version}"
        out["outcome_sk"] = f"{o.verified_at}#{out['case_id']}"
    final = out.get("final") or {}
    if final and len(out.get("paired_reads") or []) == 2:
        out["pair_pk"] = "paired"
        out["pair_sk"] = f"{final.get('at', '')}#{out['case_id']}"
    return out


def _transaction_conflict(exc: ClientError) -> bool:
    """A transaction cancelled because another one held an item (not a false condition): retry it as well."""
    reasons = exc.response.get("CancellationReasons") or []
    return any(r.get("Code") == "TransactionConflict" for r in reasons)


class CaseStore:
    """Cases and their labels."""

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients
        topo = clients.settings.topology
        self.cases = topo.table("cases")
        self.labels = topo.table("labels")
        self.state = topo.table("state")
        #: model versions this process knows are in the versions set (so it is written once per version)
        self._versions_noted: set[int] = set()

    async def get(self, case_id: str) -> dict[str, Any] | None:
        """The case (consistent read), or None."""
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.cases, Key={"case_id": to_value(case_id)}, ConsistentRead=True)
        return from_item(resp.get("Item"))

    async def mutate(self, case_id: str, change: Change, *, attempts: int = 10) -> tuple[dict[str, Any] | None, Any]:
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
            new = index_keys(dict(new, rev=rev + 1, case_id=case_id))
            version = int(new["outcome_pk"][1:]) if "outcome_pk" in new else None
            note = [] if version is None or version in self._versions_noted else [{"Update": {
                "TableName": self.state, "Key": {"key": to_value(VERSIONS_KEY)},
                "UpdateExpression": "ADD versions :v", "ExpressionAttributeValues": {":v": {"NS": [str(version)]}}}}]
            cond = ({"ConditionExpression": "attribute_not_exists(case_id)"} if current is None else
                    {"ConditionExpression": "#rev = :rev", "ExpressionAttributeNames": {"#rev": "rev"},
                     "ExpressionAttributeValues": {":rev": to_value(rev)}})
            try:
                if appends or note:
                    items = [{"Put": {"TableName": self.cases, "Item": to_item(new), **cond}}]
                    items += [{"Put": {"TableName": self.labels, "Item": to_item(dict(a, case_id=case_id)),
                                       "ConditionExpression": "attribute_not_exists(label_sk)"}} for a in appends]
                    await write_if(ddb.transact_write_items, TransactItems=items + note)
                else:
                    await write_if(ddb.put_item, TableName=self.cases, Item=to_item(new), **cond)
                if version is not None:
                    self._versions_noted.add(version)
                return new, result
            except ConditionFailedError:
                pass  # changed since we read it: apply the change again to the fresh case
            except ClientError as exc:
                if not _transaction_conflict(exc):
                    raise
            await asyncio.sleep(random.uniform(0.005, 0.03) * (attempt + 1))
        raise CaseConflict(f"case {case_id} is being changed concurrently; try again")

    async def history(self, case_id: str) -> list[dict[str, Any]]:
        """Reads and label versions of a case, oldest first."""
        ddb = await self.clients.dynamodb()
        return await collect(ddb.query, TableName=self.labels, KeyConditionExpression="case_id = :c",
                             ExpressionAttributeValues={":c": to_value(case_id)}, ConsistentRead=True)

    async def worklist_page(
        self, status: str, *, start: dict[str, Any] | None, keep: Callable[[dict[str, Any]], bool], limit: int,
        max_scanned: int = 5000,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Up to ``limit`` cases of ``status`` in worklist order that pass ``keep``, and the cursor to continue.

        At most ``max_scanned`` cases are read per page: a filter that matches little answers a short page with a
        cursor rather than walking the whole index.
        """
        ddb = await self.clients.dynamodb()

        async def query(**kw: Any) -> dict[str, Any]:
            # the cursor starts the first page; pages() supplies the key of every following one
            first = {"ExclusiveStartKey": start} if start and "ExclusiveStartKey" not in kw else {}
            return await ddb.query(**kw, **first)  # type: ignore[no-any-return]

        out: list[dict[str, Any]] = []
        scanned = 0
        async for page in pages(query, limit_items=max_scanned, TableName=self.cases, IndexName="by_status",
                                KeyConditionExpression="#s = :s", ExpressionAttributeNames={"#s": "status"},
                                ExpressionAttributeValues={":s": to_value(status)}, Limit=100):
            for raw in page:
                scanned += 1
                c = from_item(raw)
                if c is not None and keep(c):
                    out.append(c)
                    if len(out) == limit:
                        return out, {k: raw[k] for k in CURSOR_KEYS}
                if scanned >= max_scanned:  # the budget ran out: continue after the last case read
                    return out, {k: raw[k] for k in CURSOR_KEYS}
        return out, None

    async def pending_outboxes(self, older_than: float, *, limit: int = 1000) -> list[dict[str, Any]]:
        """Cases with unpublished events whose outbox is older than ``older_than`` (epoch seconds), oldest first,
        from the sparse ``by_outbox`` index: the cost is the pending cases, not the table."""
        ddb = await self.clients.dynamodb()
        return await collect(ddb.query, limit_items=limit, TableName=self.cases, IndexName="by_outbox",
                             KeyConditionExpression="outbox_pk = :p AND outbox_since <= :cut",
                             ExpressionAttributeValues={":p": to_value("pending"), ":cut": to_value(older_than)})

    async def outcomes(self, model_version: int, window: int) -> list[dict[str, Any]]:
        """The most recently verified ``window`` outcome cases of a model version (``by_outcome``), newest first."""
        ddb = await self.clients.dynamodb()
        return await collect(ddb.query, limit_items=window, TableName=self.cases, IndexName="by_outcome",
                             KeyConditionExpression="outcome_pk = :v", ScanIndexForward=False,
                             ExpressionAttributeValues={":v": to_value(f"v{model_version}")}, Limit=min(window, 1000))

    async def paired(self, window: int) -> list[dict[str, Any]]:
        """The most recently final ``window`` double-read cases (``by_pair``), newest first."""
        ddb = await self.clients.dynamodb()
        return await collect(ddb.query, limit_items=window, TableName=self.cases, IndexName="by_pair",
                             KeyConditionExpression="pair_pk = :p", ScanIndexForward=False,
                             ExpressionAttributeValues={":p": to_value("paired")}, Limit=min(window, 1000))

    async def outcome_versions(self) -> list[int]:
        """The model versions that have outcomes, ascending."""
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.state, Key={"key": to_value(VERSIONS_KEY)}, ConsistentRead=True)
        return sorted(int(v) for v in (resp.get("Item") or {}).get("versions", {}).get("NS", []))


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    """The opaque worklist cursor of an index key (None: no more pages)."""
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Inverse of :func:`encode_cursor`; ValueError names a malformed cursor."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(key, dict) or set(key) != set(CURSOR_KEYS):
            raise ValueError
        for v in key.values():
            if not isinstance(v, dict) or set(v) != {"S"} or not isinstance(v["S"], str):
                raise ValueError
        return key
    except ValueError:
        raise ValueError(f"cursor {cursor[:40]!r} is not a cursor this worklist returned") from None
