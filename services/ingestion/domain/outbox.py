"""A transactional outbox for the events ingestion publishes.

``InstanceStored`` is written into the ``outbox`` table in the same ``TransactWriteItems`` as the index items (so an
acknowledged instance always has its event durably recorded, and a failed transaction leaves neither). After the
commit the event is handed to a background publisher that sends PutEvents in batches of up to 10 and then deletes
the outbox items. A sweeper republishes items left behind by a crash (older than ``stale_s``). Event ids are
deterministic, so the rare double publication (crash between PutEvents and the delete) is recognised by consumers'
idempotency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from shared.events import Event, parse_detail
from shared.service import ServiceContext

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, ctx: ServiceContext, *, stale_s: float = 30.0, sweep_every_s: float = 30.0) -> None:
        self.ctx = ctx
        self.table = ctx.settings.topology.table("outbox")
        self.service = ctx.service
        self.stale_s = stale_s
        self.sweep_every_s = sweep_every_s
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.published = 0

    def _id(self, event: Event) -> str:
        return f"{self.service}#{event.event_id}"

    def transaction_item(self, event: Event) -> dict[str, Any]:
        """The ``Put`` to include in the transaction that makes the announced state durable."""
        return {"Put": {"TableName": self.table, "Item": {
            "id": {"S": self._id(event)}, "service": {"S": self.service}, "detail_type": {"S": event.name},
            "detail": {"S": event.to_detail()}, "created_at": {"N": f"{time.time():.3f}"}}}}

    def enqueue(self, event: Event) -> None:
        """Publish soon (after the transaction committed)."""
        self._queue.put_nowait(event)

    def start(self) -> None:
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
        while True:
            batch = [await self._queue.get()]
            # Gather whatever else is ready (a few ms), up to a PutEvents batch.
            with contextlib.suppress(asyncio.TimeoutError):
                while len(batch) < 10:
                    batch.append(await asyncio.wait_for(self._queue.get(), timeout=0.005))
            try:
                await self._publish(batch)
            except Exception:  # left in the table: the sweeper retries
                log.exception("outbox publish failed; the sweeper will retry", extra={"events": len(batch)})

    async def _publish(self, events: list[Event]) -> None:
        await self.ctx.publisher.publish_many(events)
        self.published += len(events)
        ddb = await self.ctx.clients.dynamodb()
        await ddb.batch_write_item(RequestItems={self.table: [
            {"DeleteRequest": {"Key": {"id": {"S": self._id(e)}}}} for e in events]})

    async def sweep_once(self, *, older_than_s: float | None = None) -> int:
        """Publish outbox items of this service older than ``older_than_s``; return how many."""
        ddb = await self.ctx.clients.dynamodb()
        cutoff = time.time() - (self.stale_s if older_than_s is None else older_than_s)
        found: list[Event] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table, "FilterExpression": "#s = :svc AND created_at < :cut",
            "ExpressionAttributeNames": {"#s": "service"},
            "ExpressionAttributeValues": {":svc": {"S": self.service}, ":cut": {"N": f"{cutoff:.3f}"}},
        }
        while True:
            resp = await ddb.scan(**kwargs)
            for item in resp.get("Items", []):
                ev = parse_detail(item["detail_type"]["S"], json.loads(item["detail"]["S"]))
                if isinstance(ev, Event):
                    found.append(ev)
            if "LastEvaluatedKey" not in resp:
                break
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        for i in range(0, len(found), 10):
            await self._publish(found[i : i + 10])
        if found:
            log.info("outbox sweep republished events", extra={"events": len(found)})
        return len(found)

    async def _sweeper(self) -> None:
        while True:
            try:
                await self.sweep_once()
            except Exception:
                log.exception("outbox sweep failed")
            await asyncio.sleep(self.sweep_every_s)
