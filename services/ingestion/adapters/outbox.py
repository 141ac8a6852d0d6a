"""A transactional outbox for the events ingestion publishes.

``InstanceStored`` is written into the ``outbox`` table in the same ``TransactWriteItems`` as the index items (so an
acknowledged instance always has its event durably recorded, and a failed transaction leaves neither). After the
commit the event is handed to a background publisher that sends PutEvents in batches of up to 10 and then deletes
the outbox items. A sweeper republishes items left behind by a crash (older than ``stale_s``). Event ids are
deterministic, so the rare double publication (crash between PutEvents and the delete) is recognised by consumers'
idempotency.

Bounds:
- the in-memory publisher queue holds at most ``queue_max`` events. When it is full (EventBridge slow or down) an
  event is not queued: it is already durable in the table, and the sweeper publishes it once it is stale. After a
  failed publish the publisher backs off (up to ``max_backoff_s``) instead of failing the queue away in a hot loop;
- the sweeper reads the ``by_service`` index (this service's items older than the cut-off, oldest first) page by page
  (at most ``sweep_page`` items) and publishes each page before reading the next: it never reads another service's
  items or young ones, and never holds more than a page;
- an item the sweeper cannot parse is logged (its id only), moved aside (its ``service`` becomes
  ``<service>#unparseable``, so no sweep selects it again; operators find it there) and the sweep goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from shared.ddb import pages
from shared.events import Event, parse_detail
from shared.exceptions import EventParseError
from shared.service import Runtime

log = logging.getLogger(__name__)


class Outbox:
    """The outbox of one service: transaction items, a background publisher and a sweeper."""

    def __init__(self, rt: Runtime[Any], *, stale_s: float = 30.0, sweep_every_s: float = 30.0,
                 queue_max: int | None = None, max_backoff_s: float = 5.0) -> None:
        self.rt = rt
        self.table = rt.settings.topology.table("outbox")
        self.service = rt.service
        self.stale_s = stale_s
        self.sweep_every_s = sweep_every_s
        self.queue_max = queue_max or int(getattr(rt.settings, "outbox_queue_max", 10_000))
        self.max_backoff_s = max_backoff_s
        #: items per page of a sweep (the most it holds in memory at once)
        self.sweep_page = 100
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=self.queue_max)
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0
        #: events not queued because the queue was full (left to the sweeper), and unparseable items moved aside
        self.overflowed = 0
        self.unparseable = 0

    def _id(self, event: Event) -> str:
        return f"{self.service}#{event.event_id}"

    def transaction_item(self, event: Event) -> dict[str, Any]:
        """The ``Put`` to include in the transaction that makes the announced state durable."""
        return {"Put": {"TableName": self.table, "Item": {
            "id": {"S": self._id(event)}, "service": {"S": self.service}, "detail_type": {"S": event.name},
            "detail": {"S": event.to_detail()}, "created_at": {"N": f"{time.time():.3f}"}}}}

    def enqueue(self, event: Event) -> None:
        """Publish soon (after the transaction committed); when the queue is full, the sweeper publishes it later."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed += 1
            if self.overflowed == 1 or self.overflowed % 1000 == 0:  # bounded logging during an outage
                log.warning("outbox queue full; events wait in the outbox table for the sweeper",
                            extra={"overflowed_total": self.overflowed, "queue_max": self.queue_max})

    def start(self) -> None:
        """Start the publisher and the sweeper."""
        self._tasks = [asyncio.create_task(self._publisher(), name="outbox-publisher"),
                       asyncio.create_task(self._sweeper(), name="outbox-sweeper")]

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Publish what is queued (bounded), then stop; anything left stays in the table for the sweeper."""
        deadline = time.monotonic() + timeout_s
        while not self._queue.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _publisher(self) -> None:
        backoff = 0.0
        while True:
            batch = [await self._queue.get()]
            # Gather whatever else is ready (a few ms), up to a PutEvents batch.
            with contextlib.suppress(asyncio.TimeoutError):
                while len(batch) < 10:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout=0.005))
            try:
                await self._publish(batch)
                backoff = 0.0
            except Exception:  # left in the table: the sweeper retries
                log.exception("outbox publish failed; the sweeper will retry", extra={"events": len(batch)})
                # Back off while EventBridge fails: the queue fills (bounded) and overflow waits in the table.
                backoff = min(self.max_backoff_s, max(0.1, backoff * 2))
                await asyncio.sleep(backoff)

    async def _publish(self, events: list[Event]) -> None:
        await self.rt.publisher.publish_many(events)
        self.published += len(events)
        ddb = await self.rt.clients.dynamodb()
        await ddb.batch_write_item(RequestItems={self.table: [
            {"DeleteRequest": {"Key": {"id": {"S": self._id(e)}}}} for e in events]})

    async def sweep_once(self, *, older_than_s: float | None = None) -> int:
        """Publish outbox items of this service older than ``older_than_s``, a page at a time; return how many.

        An item that cannot be parsed is moved aside (see the module docstring) and does not stop the sweep."""
        ddb = await self.rt.clients.dynamodb()
        cutoff = time.time() - (self.stale_s if older_than_s is None else older_than_s)
        total = 0
        async for page in pages(
            ddb.query, TableName=self.table, IndexName="by_service", Limit=self.sweep_page,
            KeyConditionExpression="#s = :svc AND created_at < :cut", ExpressionAttributeNames={"#s": "service"},
            ExpressionAttributeValues={":svc": {"S": self.service}, ":cut": {"N": f"{cutoff:.3f}"}},
        ):
            found: list[Event] = []
            for item in page:
                ev = await self._parse(ddb, item)
                if ev is not None:
                    found.append(ev)
            for i in range(0, len(found), 10):
                await self._publish(found[i : i + 10])
            total += len(found)
        if total:
            log.info("outbox sweep republished events", extra={"events": total})
        return total

    async def _parse(self, ddb: Any, item: dict[str, Any]) -> Event | None:
        try:
            ev = parse_detail(item["detail_type"]["S"], json.loads(item["detail"]["S"]))
            if not isinstance(ev, Event):
                raise EventParseError(f"{item['detail_type']['S']} is not an event this outbox publishes")
            return ev
        except (KeyError, TypeError, ValueError, EventParseError) as exc:
            item_id = str(item.get("id", {}).get("S", ""))
            self.unparseable += 1
            # The id only (service#event id): the detail may hold identifiers that do not belong in logs.
            log.error("unparseable outbox item moved aside", extra={"outbox_id": item_id, "error": type(exc).__name__})
            with contextlib.suppress(Exception):  # if this fails too, the next sweep tries again; it still goes on
                await ddb.update_item(
                    TableName=self.table, Key={"id": {"S": item_id}}, ConditionExpression="attribute_exists(id)",
                    UpdateExpression="SET #s = :aside, unparseable_at = :now, unparseable_error = :err",
                    ExpressionAttributeNames={"#s": "service"},
                    ExpressionAttributeValues={":aside": {"S": f"{self.service}#unparseable"},
                                               ":now": {"N": f"{time.time():.3f}"},
                                               ":err": {"S": type(exc).__name__}})
            return None

    async def _sweeper(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("outbox sweep failed")
            await asyncio.sleep(self.sweep_every_s)
