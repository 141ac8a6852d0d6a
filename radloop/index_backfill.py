"""Backfill the key attributes of the sparse DynamoDB indexes on tables written before those keys existed.

A deployment upgraded in place keeps the items its older code wrote, and an item without an index's key attributes
is not in that index: whatever reads the index never sees it. Three tables have such keys (docs/reliability.md,
"Constant cost per request"; docs/troubleshooting.md, "Old studies missing from searches after an upgrade"):

- ``instances`` (:func:`backfill`): the QIDO-RS access paths read ``level_pk`` (studies and series, sharded),
  ``accession_key`` (studies) and ``modality_key`` (series). Without them a study is invisible to searches by
  accession number, by modality and to the newest-first listings. Each item's keys come from
  :func:`shared.instance_index.index_keys_of`, what the index writer writes today.
- ``scores`` (:func:`backfill_scores`, triage): ``backlog_pk`` puts an image that arrived before any model in the
  backlog the first champion scores (before round 6 the backlog was a Scan of ``awaiting_model``; such an image is
  otherwise never scored), and ``unread_pk`` puts a scored image nobody has read among those a new champion
  re-scores (before session 11 nothing marked an image as read in this table, so whether it was read is taken from
  its case: a final case marks the record ``verified``, as triage does on ``ImageVerified``).
- ``cases`` (:func:`backfill_cases`, verification): ``outbox_pk`` (a decided read whose ``ImageVerified`` is still
  to be published: the sweep reads only this index), ``outcome_pk``/``outcome_sk`` (the live performance and
  degradation check count only these outcomes) and ``pair_pk``/``pair_sk`` (reader agreement). Each case is
  rewritten through the verification service's own :meth:`CaseStore.mutate`, which derives the keys and notes the
  model version in the state table's versions set exactly as a read does.

Safe to run against a live table, and to run again:
- every write is conditional on the item still being in the state the scan read (the attribute a key is derived
  from unchanged; a case's revision); an item changed meanwhile is skipped, since its writer set the keys itself;
- writes are paced (``max_writes_per_s``) so a large backfill does not take the table's write capacity from the
  services;
- items already up to date are not written, so a second run writes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from services.triage.adapters.scores import BACKLOG, UNREAD
from services.verification.adapters.cases import CaseStore, index_keys
from services.verification.domain.errors import CaseConflict
from shared.aws import AwsClients
from shared.ddb import from_item, pages, to_value, write_if
from shared.exceptions import ConditionFailedError
from shared.instance_index import SERIES_PREFIX, STUDY_SK, index_keys_of

#: The tables this module backfills, in the order ``radloop index backfill`` runs them.
TABLES = ("instances", "scores", "cases")

#: The attributes a study or series item's keys are derived from, and the keys themselves (what the scan reads).
_PROJECTED = ("pk", "sk", "study_uid", "study_date", "accession_number", "modality", "level_sk", "level_pk",
              "accession_key", "modality_key")


@dataclass
class BackfillReport:
    table: str = "instances"
    scanned: int = 0  # items read (of the instances table: study and series items)
    up_to_date: int = 0
    updated: int = 0  # written (or, with dry_run, that would be)
    changed_meanwhile: int = 0  # skipped: a service changed the item after the scan read it (and wrote its keys)
    pages: int = 0
    dry_run: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _update(item: dict[str, Any], want: dict[str, Any]) -> dict[str, Any] | None:
    """The UpdateItem arguments (without table and key) that bring ``item`` to ``want``, or None if it is there."""
    sets = {k: v for k, v in want.items() if v is not None and item.get(k) != v}
    removes = [k for k, v in want.items() if v is None and k in item]
    if not sets and not removes:
        return None
    names = {f"#k{i}": k for i, k in enumerate([*sets, *removes])}
    values: dict[str, Any] = {f":v{i}": to_value(v) for i, v in enumerate(sets.values())}
    parts = []
    if sets:
        parts.append("SET " + ", ".join(f"#k{i} = :v{i}" for i in range(len(sets))))
    if removes:
        parts.append("REMOVE " + ", ".join(f"#k{len(sets) + i}" for i in range(len(removes))))
    source = "accession_number" if item.get("sk") == STUDY_SK else "modality"
    names["#src"] = source
    if item.get(source) is None:
        cond = "attribute_exists(pk) AND attribute_not_exists(#src)"
    else:
        cond = "attribute_exists(pk) AND #src = :src"
        values[":src"] = to_value(item[source])
    out: dict[str, Any] = {"UpdateExpression": " ".join(parts), "ConditionExpression": cond,
                           "ExpressionAttributeNames": names}
    if values:
        out["ExpressionAttributeValues"] = values
    return out


class _Pacer:
    """At most ``per_s`` writes a second (0: no pacing)."""

    def __init__(self, per_s: float) -> None:
        self.interval = 1.0 / per_s if per_s > 0 else 0.0
        self.next = time.monotonic()

    async def wait(self) -> None:
        delay = self.next - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        self.next = max(self.next, time.monotonic()) + self.interval


async def _scan(call: Callable[..., Any], report: BackfillReport, max_items: int | None,
                progress: Callable[[BackfillReport], None] | None, **kw: Any) -> AsyncIterator[dict[str, Any]]:
    """The items of a paged Scan, one at a time (``report.pages``, ``report.seconds`` and ``progress`` kept up to
    date after each page); stops after ``max_items`` items the caller counted in ``report.scanned``."""
    t0 = time.monotonic()
    async for page in pages(call, **kw):
        report.pages += 1
        for raw in page:
            if max_items is not None and report.scanned >= max_items:
                break
            yield raw
        report.seconds = round(time.monotonic() - t0, 2)
        if progress is not None:
            progress(report)
        if max_items is not None and report.scanned >= max_items:
            return


#: One item's planned write: returns True when it wrote, False when the item changed since the scan read it.
Write = Callable[[], Awaitable[bool]]


class _Run:
    """One table's backfill: its report, its pace, and the step every scanned item goes through."""

    def __init__(self, table: str, dry_run: bool, max_writes_per_s: float) -> None:
        self.report = BackfillReport(table=table, dry_run=dry_run)
        self.pacer = _Pacer(max_writes_per_s)

    async def apply(self, write: Write | None) -> None:
        """Count one scanned item and, unless it is up to date (``write`` None) or this is a dry run, write it."""
        r = self.report
        r.scanned += 1
        if write is None:
            r.up_to_date += 1
        elif r.dry_run:
            r.updated += 1
        else:
            await self.pacer.wait()
            if await write():
                r.updated += 1
            else:
                r.changed_meanwhile += 1


def _update_if(ddb: Any, **kw: Any) -> Write:
    """A conditional UpdateItem as a :data:`Write` (a false condition: the item changed meanwhile)."""
    async def write() -> bool:
        try:
            await write_if(ddb.update_item, **kw)
        except ConditionFailedError:
            return False
        return True

    return write


async def backfill(clients: AwsClients, *, dry_run: bool = False, page_size: int = 200,
                   max_writes_per_s: float = 50.0, max_items: int | None = None,
                   progress: Callable[[BackfillReport], None] | None = None) -> BackfillReport:
    """Scan the instances table's study and series items and set their missing index keys; see the module doc.
    ``max_items`` stops after that many study and series items (a trial run on a large table)."""
    table = clients.settings.topology.table("instances")
    ddb = await clients.dynamodb()
    run = _Run("instances", dry_run, max_writes_per_s)
    names = {f"#p{i}": a for i, a in enumerate(_PROJECTED)}
    async for raw in _scan(ddb.scan, run.report, max_items, progress, TableName=table, Limit=page_size,
                           FilterExpression="#p1 = :study OR begins_with(#p1, :series)",
                           ProjectionExpression=", ".join(names), ExpressionAttributeNames=names,
                           ExpressionAttributeValues={":study": {"S": STUDY_SK}, ":series": {"S": SERIES_PREFIX}}):
        item = from_item(raw) or {}
        want = index_keys_of(item)
        if want is None:
            continue
        args = _update(item, want)
        await run.apply(None if args is None else
                        _update_if(ddb, TableName=table, Key={"pk": raw["pk"], "sk": raw["sk"]}, **args))
    return run.report


#: What the scores backfill reads of each record.
_SCORE_ATTRS = ("sop_uid", "status", "awaiting_model", "backlog_pk", "unread_pk", "verified", "arrived_at",
                "scored_at")


async def _case_is_final(ddb: Any, cases_table: str, sop_uid: str) -> bool:
    resp = await ddb.get_item(TableName=cases_table, Key={"case_id": to_value(sop_uid)}, ConsistentRead=True,
                              ProjectionExpression="#f", ExpressionAttributeNames={"#f": "final"})
    return bool((from_item(resp.get("Item")) or {}).get("final"))


def _score_update(rec: dict[str, Any], final: bool | None) -> dict[str, Any] | None:
    """The UpdateItem arguments (without table and key) that give a score record the keys triage writes today, or
    None when it has them. ``final``: whether the image's case is final (None: not looked up)."""
    if rec.get("awaiting_model") is True and "backlog_pk" not in rec:
        return {"UpdateExpression": "SET backlog_pk = :b",
                "ConditionExpression": "awaiting_model = :t AND attribute_not_exists(backlog_pk)",
                "ExpressionAttributeValues": {":b": to_value(BACKLOG), ":t": to_value(True)}}
    if rec.get("status") != "scored" or rec.get("verified") or "unread_pk" in rec:
        return None
    cond = "#st = :scored AND attribute_not_exists(verified) AND attribute_not_exists(unread_pk)"
    values: dict[str, Any] = {":scored": to_value("scored")}
    if final:  # read already (triage's mark_read): it stays out of the re-scoring index for good
        return {"UpdateExpression": "SET verified = :t", "ConditionExpression": cond,
                "ExpressionAttributeNames": {"#st": "status"}, "ExpressionAttributeValues": {**values,
                                                                                         ":t": to_value(True)}}
    values[":u"] = to_value(UNREAD)
    values[":arrived"] = to_value(rec.get("arrived_at") or rec.get("scored_at") or "")
    return {"UpdateExpression": "SET unread_pk = :u, arrived_at = if_not_exists(arrived_at, :arrived)",
            "ConditionExpression": cond, "ExpressionAttributeNames": {"#st": "status"},
            "ExpressionAttributeValues": values}


async def backfill_scores(clients: AwsClients, *, dry_run: bool = False, page_size: int = 200,
                          max_writes_per_s: float = 50.0, max_items: int | None = None,
                          progress: Callable[[BackfillReport], None] | None = None) -> BackfillReport:
    """Scan triage's score records and set ``backlog_pk`` and ``unread_pk`` (or ``verified``, for an image whose case
    is final) where records written before those keys lack them; see the module doc."""
    topo = clients.settings.topology
    table, cases_table = topo.table("scores"), topo.table("cases")
    ddb = await clients.dynamodb()
    run = _Run("scores", dry_run, max_writes_per_s)
    names = {f"#p{i}": a for i, a in enumerate(_SCORE_ATTRS)}
    async for raw in _scan(ddb.scan, run.report, max_items, progress, TableName=table, Limit=page_size,
                           ProjectionExpression=", ".join(names), ExpressionAttributeNames=names):
        rec = from_item(raw) or {}
        args = _score_update(rec, None)
        if args is not None and "unread_pk" in args["UpdateExpression"]:
            args = _score_update(rec, await _case_is_final(ddb, cases_table, str(rec["sop_uid"])))
        await run.apply(None if args is None else
                        _update_if(ddb, TableName=table, Key={"sop_uid": raw["sop_uid"]}, **args))
    return run.report


def _rekey(case: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[dict[str, Any]], bool]:
    """A :data:`~services.verification.adapters.cases.Change` that rewrites a case whose index keys are not what
    its content gives (``mutate`` derives them and bumps the revision), and leaves any other case alone."""
    if case is None or index_keys(case) == case:
        return None, [], False
    return case, [], True


async def backfill_cases(clients: AwsClients, *, dry_run: bool = False, page_size: int = 200,
                         max_writes_per_s: float = 50.0, max_items: int | None = None,
                         progress: Callable[[BackfillReport], None] | None = None) -> BackfillReport:
    """Scan verification's cases and rewrite, through :meth:`CaseStore.mutate`, those whose sparse-index keys
    (outbox, outcome, reader pair) are missing or out of date; see the module doc."""
    store = CaseStore(clients)
    ddb = await clients.dynamodb()
    run = _Run("cases", dry_run, max_writes_per_s)

    def rewrite(case_id: str) -> Write:
        async def write() -> bool:
            try:  # re-read consistently and re-derived there: a case a read changed since the scan is up to date
                return bool((await store.mutate(case_id, _rekey))[1])
            except CaseConflict:
                return False

        return write

    async for raw in _scan(ddb.scan, run.report, max_items, progress, TableName=store.cases, Limit=page_size):
        case = from_item(raw) or {}
        await run.apply(rewrite(str(case["case_id"])) if _rekey(case)[2] else None)
    return run.report


#: Each table's backfill (the CLI runs them in :data:`TABLES` order).
BACKFILLS: dict[str, Callable[..., Awaitable[BackfillReport]]] = {
    "instances": backfill, "scores": backfill_scores, "cases": backfill_cases}
