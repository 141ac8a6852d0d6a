"""Backfill the instance index's key attributes on a table written before those keys existed.

The QIDO-RS access paths (docs/reliability.md, "Constant cost per request") read global secondary indexes whose keys
only new writes carry: ``level_pk`` (studies and series, sharded), ``accession_key`` (studies) and ``modality_key``
(series). A deployment upgraded in place still has study and series items without them, and those studies are
invisible to searches by accession number, by modality and to the newest-first listings. This scans the ``instances``
table for study and series items, derives each item's keys with :func:`shared.instance_index.index_keys_of` (what the
index writer writes today) and sets the missing or outdated ones.

Safe to run against a live table, and to run again:
- each update is conditional on the item still existing and on the attribute the key is derived from (accession
  number, modality) being unchanged since the scan; an item that ingestion changed meanwhile is skipped (ingestion
  writes the keys itself);
- writes are paced (``max_writes_per_s``) so a large backfill does not take the table's write capacity from ingestion;
- items already up to date are not written, so a second run writes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from shared.aws import AwsClients
from shared.ddb import from_item, to_value
from shared.instance_index import SERIES_PREFIX, STUDY_SK, index_keys_of

#: The attributes a study or series item's keys are derived from, and the keys themselves (what the scan reads).
_PROJECTED = ("pk", "sk", "study_uid", "study_date", "accession_number", "modality", "level_sk", "level_pk",
              "accession_key", "modality_key")


@dataclass
class BackfillReport:
    scanned: int = 0  # study and series items read
    up_to_date: int = 0
    updated: int = 0  # written (or, with dry_run, that would be)
    changed_meanwhile: int = 0  # skipped: ingestion changed the item after the scan read it
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


async def backfill(clients: AwsClients, *, dry_run: bool = False, page_size: int = 200,
                   max_writes_per_s: float = 50.0, max_items: int | None = None,
                   progress: Callable[[BackfillReport], None] | None = None) -> BackfillReport:
    """Scan the instances table's study and series items and set their missing index keys; see the module doc.
    ``max_items`` stops after that many study and series items (a trial run on a large table)."""
    table = clients.settings.topology.table("instances")
    ddb = await clients.dynamodb()
    report = BackfillReport(dry_run=dry_run)
    t0 = time.monotonic()
    next_write = t0
    interval = 1.0 / max_writes_per_s if max_writes_per_s > 0 else 0.0
    start: dict[str, Any] | None = None
    names = {f"#p{i}": a for i, a in enumerate(_PROJECTED)}
    while True:  # one page per turn; ends with the table (or at max_items)
        kw: dict[str, Any] = {
            "TableName": table, "Limit": page_size,
            "FilterExpression": "#p1 = :study OR begins_with(#p1, :series)",
            "ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {":study": {"S": STUDY_SK}, ":series": {"S": SERIES_PREFIX}},
        }
        if start:
            kw["ExclusiveStartKey"] = start
        page = await ddb.scan(**kw)
        report.pages += 1
        for raw in page.get("Items", []):
            if max_items is not None and report.scanned >= max_items:
                break
            item = from_item(raw) or {}
            want = index_keys_of(item)
            if want is None:
                continue
            report.scanned += 1
            args = _update(item, want)
            if args is None:
                report.up_to_date += 1
                continue
            if dry_run:
                report.updated += 1
                continue
            delay = next_write - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            next_write = max(next_write, time.monotonic()) + interval
            try:
                await ddb.update_item(TableName=table, Key={"pk": raw["pk"], "sk": raw["sk"]}, **args)
                report.updated += 1
            except ddb.exceptions.ConditionalCheckFailedException:
                report.changed_meanwhile += 1
        report.seconds = round(time.monotonic() - t0, 2)
        if progress is not None:
            progress(report)
        start = page.get("LastEvaluatedKey")
        if not start or (max_items is not None and report.scanned >= max_items):
            return report
