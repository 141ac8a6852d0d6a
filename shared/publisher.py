"""Publishing events to the EventBridge bus.

``PutEvents`` takes at most 10 entries and can fail per entry (``FailedEntryCount``): the publisher sends in chunks
of 10, retries only the failed entries with exponential backoff, and raises :class:`PublishError` when entries still
fail. Each event gets a PRODUCER span and carries that span's context in its ``detail``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared.aws import AwsClients
from shared.events import Event
from shared.exceptions import PublishError
from shared.telemetry import extract_context, inject_context, tracer

log = logging.getLogger(__name__)
MAX_BATCH = 10


class EventPublisher:
    def __init__(self, clients: AwsClients, service: str, *, max_attempts: int = 5, base_delay_s: float = 0.1) -> None:
        self.clients = clients
        self.source = f"radloop.{service}"
        self.bus_name = clients.settings.topology.bus_name
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s

    async def publish(self, *events: Event) -> None:
        await self.publish_many(events)

    async def publish_many(self, events: Sequence[Event]) -> None:
        """Publish every event or raise :class:`PublishError`; order within a chunk is kept."""
        for start in range(0, len(events), MAX_BATCH):
            await self._publish_chunk(list(events[start : start + MAX_BATCH]))

    async def _publish_chunk(self, events: list[Event]) -> None:
        t = tracer("radloop.publisher")
        entries: list[dict[str, Any]] = []
        spans = []
        for e in events:
            # An event created earlier (e.g. kept in a transactional outbox) carries the context it was created
            # under; its PRODUCER span continues that trace rather than the publishing task's.
            parent = extract_context({"traceparent": e.traceparent, "tracestate": e.tracestate}) if e.traceparent else None
            span = t.start_span(
                f"publish {e.name}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "aws_eventbridge",
                    "messaging.operation.type": "publish",
                    "messaging.destination.name": self.bus_name,
                    "messaging.message.id": e.event_id,
                    "radloop.event": e.name,
                },
            )
            spans.append(span)
            with trace.use_span(span, end_on_exit=False):
                traced = e.with_trace(inject_context())
            entries.append(
                {"Source": self.source, "DetailType": e.name, "Detail": traced.to_detail(), "EventBusName": self.bus_name}
            )
        try:
            await self._put_with_retries(entries)
        except Exception as exc:
            for s in spans:
                s.record_exception(exc)
                s.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            raise
        finally:
            for s in spans:
                s.end()

    async def _put_with_retries(self, entries: list[dict[str, Any]]) -> None:
        client = await self.clients.events()
        pending = entries
        last_error = ""
        for attempt in range(self.max_attempts):
            if attempt:
                await asyncio.sleep(self.base_delay_s * (2 ** (attempt - 1)))
            try:
                resp = await client.put_events(Entries=pending)
            except Exception as exc:  # network or throttling of the whole call: retry everything pending
                last_error = f"{type(exc).__name__}: {exc}"
                log.warning("put_events failed; retrying", extra={"attempt": attempt + 1, "error": last_error})
                continue
            if not resp.get("FailedEntryCount"):
                return
            failed = [entry for entry, res in zip(pending, resp["Entries"], strict=True) if res.get("ErrorCode")]
            last_error = "; ".join(
                sorted({f"{r.get('ErrorCode')}: {r.get('ErrorMessage')}" for r in resp["Entries"] if r.get("ErrorCode")})
            )
            log.warning("put_events had failed entries; retrying those", extra={"failed": len(failed)})
            pending = failed
        raise PublishError(f"{len(pending)} event(s) not published after {self.max_attempts} attempts: {last_error}")
