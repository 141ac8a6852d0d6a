"""The SQS consumer runtime every worker uses.

Guarantees (delivery is at least once, handlers are made effectively-once by the idempotency store):

- long polling with bounded concurrency (a semaphore of ``concurrency`` in-flight handlers);
- a message is deleted only after its handler succeeded (or was a recognised duplicate);
- a failing handler leaves the message on the queue; it becomes visible again after a short backoff and, after the
  queue's ``maxReceiveCount``, SQS moves it to the DLQ;
- a message that cannot be parsed can never succeed, so it is sent to the DLQ at once, with the reason as a message
  attribute and in the log, and deleted from the source queue (no crash loop, no retry storm);
- long handlers keep their message invisible with a heartbeat (``ChangeMessageVisibility`` every third of the
  visibility timeout);
- :meth:`SqsConsumer.stop` (wired to SIGTERM, which is how ECS stops tasks) stops receiving, and
  :meth:`SqsConsumer.run` returns only after in-flight handlers finished and their messages were deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from shared.aws import AwsClients
from shared.events import Envelope, Event, ImportJobChanged, S3ObjectCreated, parse_detail, parse_envelope
from shared.exceptions import EventParseError, IdempotencyInProgressError, IdempotencyPayloadMismatchError
from shared.idempotency import IdempotencyStore
from shared.metrics import instrument
from shared.telemetry import extract_context, tracer

log = logging.getLogger(__name__)

_SQS_MAX_VISIBILITY_S = 43_200
#: How often the consumer reads its queue's and DLQ's depth for the ``radloop.queue.depth`` gauge.
QUEUE_DEPTH_INTERVAL_S = 30.0
#: SQS attribute -> the ``state`` label of ``radloop.queue.depth``.
_DEPTH_ATTRIBUTES = {"ApproximateNumberOfMessages": "visible", "ApproximateNumberOfMessagesNotVisible": "in_flight",
                     "ApproximateNumberOfMessagesDelayed": "delayed"}

Message = Event | S3ObjectCreated | ImportJobChanged

#: Fields of an event detail that say when and under which trace it was published, not what happened: left out of the
#: idempotency payload hash.
_NOT_CONTENT = frozenset({"occurred_at", "traceparent", "tracestate"})


def idempotency_payload(detail: dict[str, Any]) -> dict[str, Any]:
    """What the idempotency store hashes for an event: its detail without :data:`_NOT_CONTENT`. The same event
    published again (a producer re-run after a kill) differs only there, so it is a duplicate, not "the same key with
    a different payload"."""
    return {k: v for k, v in detail.items() if k not in _NOT_CONTENT}


@dataclass
class MessageContext:
    """What a handler may want to know about the delivery, besides the event itself."""

    envelope: Envelope
    message_id: str
    receive_count: int
    receipt_handle: str


Handler = Callable[[Any, MessageContext], Awaitable[Any]]


@dataclass
class ConsumerStats:
    received: int = 0
    succeeded: int = 0
    duplicates: int = 0
    failed: int = 0
    dead_lettered: int = 0
    in_flight: int = 0
    last_error: str | None = None
    started_at: float = field(default_factory=time.time)


class SqsConsumer:
    def __init__(
        self,
        clients: AwsClients,
        service: str,
        handlers: Mapping[str, Handler],
        *,
        idempotency: IdempotencyStore | None = None,
        concurrency: int | None = None,
        wait_time_s: int | None = None,
        queue_name: str | None = None,
        retry_backoff_s: float | None = None,
        visibility_timeout_s: int | None = None,
        on_missing_queue: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        settings = clients.settings
        spec = settings.topology.queue_for(service)
        self.clients = clients
        self.service = service
        self.handlers = dict(handlers)
        self.idempotency = idempotency
        self.concurrency = concurrency or settings.consumer_concurrency
        self.wait_time_s = settings.consumer_wait_time_s if wait_time_s is None else wait_time_s
        self.queue_name = queue_name or spec.name
        self.dlq_name = spec.dlq_name
        #: Must equal the queue's VisibilityTimeout (the topology's value unless a deployment changed it).
        self.visibility_timeout_s = visibility_timeout_s or spec.visibility_timeout_s
        self.spec = spec
        #: Overrides the queue's backoff base (tests); the cap and the schedule stay the queue's.
        self.retry_backoff_s = spec.retry_backoff_s if retry_backoff_s is None else retry_backoff_s
        #: A record INPROGRESS elsewhere is stale at most this long from now (its holder heartbeats it otherwise).
        self.inprogress_expiry_s = (idempotency.inprogress_expiry_s if idempotency is not None
                                    else settings.idempotency_inprogress_expiry_s)
        self.stats = ConsumerStats()
        #: Called (with the error) when the queue does not exist any more: the embedded endpoint restarted and lost
        #: its state. The service passes :func:`shared.bootstrap.rebootstrap`; without a hook the loop backs off.
        self.on_missing_queue = on_missing_queue
        #: Since when the queue has been missing (readiness reports it), or None.
        self.queue_missing_since: float | None = None
        #: After :meth:`stop`, in-flight handlers get this long (SIGTERM budget); unfinished messages reappear later.
        self.drain_timeout_s: float | None = settings.drain_timeout_s
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sem = asyncio.Semaphore(self.concurrency)
        self._queue_url: str | None = None
        self._dlq_url: str | None = None
        # Metrics (shared/metrics.py): labels are the queue name, the event type and an outcome word only.
        self._m_received = instrument("radloop.messages.received")
        self._m_handled = instrument("radloop.messages.handled")
        self._m_duration = instrument("radloop.message.handler.duration")
        self._m_age = instrument("radloop.message.queue.age")
        self._m_depth = instrument("radloop.queue.depth")

    # -- lifecycle ------------------------------------------------------------------------------------------------
    async def _urls(self) -> tuple[str, str]:
        if self._queue_url is None or self._dlq_url is None:
            sqs = await self.clients.sqs()
            self._queue_url = (await sqs.get_queue_url(QueueName=self.queue_name))["QueueUrl"]
            self._dlq_url = (await sqs.get_queue_url(QueueName=self.dlq_name))["QueueUrl"]
        return self._queue_url, self._dlq_url

    def stop(self) -> None:
        """Stop receiving; in-flight handlers finish and :meth:`run` returns after them."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _queue_missing(self, exc: BaseException) -> None:
        """The queue is gone (the endpoint lost its state): re-create the topology through the hook, then carry on."""
        if self.queue_missing_since is None:
            self.queue_missing_since = time.time()
        self._queue_url = self._dlq_url = None
        log.warning("queue does not exist; the endpoint lost its state?",
                    extra={"queue": self.queue_name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        if self.on_missing_queue is not None:
            try:
                await self.on_missing_queue(f"{type(exc).__name__}: {exc}")
            except Exception as hook_exc:
                log.warning("re-creating the topology failed; retrying",
                            extra={"error": f"{type(hook_exc).__name__}: {hook_exc}"[:300]})
        await asyncio.sleep(1.0)

    async def _queue_url_or_wait(self) -> str | None:
        """The queue's URL; None (after handling it) if the queue does not exist."""
        from shared.bootstrap import is_missing_resource

        try:
            url, _ = await self._urls()
        except Exception as exc:
            if not is_missing_resource(exc):
                raise
            await self._queue_missing(exc)
            return None
        if self.queue_missing_since is not None:
            log.info("queue is back", extra={"queue": self.queue_name,
                                              "missing_s": round(time.time() - self.queue_missing_since, 1)})
            self.queue_missing_since = None
        return url

    async def run(self, *, max_messages: int | None = None) -> None:
        """Receive and handle until :meth:`stop` (or until ``max_messages`` were received, for tools and tests).

        A queue that disappears (the embedded endpoint restarted) is not fatal: :attr:`on_missing_queue` re-creates
        the topology and the loop carries on with the new queue.
        """
        from shared.bootstrap import is_missing_resource

        queue_url = await self._queue_url_or_wait()
        sqs = await self.clients.sqs()
        log.info("consumer started", extra={"queue": self.queue_name, "concurrency": self.concurrency})
        depth = asyncio.create_task(self._poll_depth(), name=f"{self.service}-queue-depth")
        try:
            while not self._stopping.is_set():
                if max_messages is not None and self.stats.received >= max_messages:
                    break
                if queue_url is None:
                    queue_url = await self._queue_url_or_wait()
                    continue
                # Wait for a free slot before asking for more, so a slow handler never holds extra messages invisibly.
                await self._sem.acquire()
                self._sem.release()
                free = max(1, min(10, self._free_slots()))
                receive = asyncio.ensure_future(
                    sqs.receive_message(
                        QueueUrl=queue_url,
                        MaxNumberOfMessages=free,
                        WaitTimeSeconds=self.wait_time_s,
                        MessageAttributeNames=["All"],
                        MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
                    )
                )
                stop_wait = asyncio.ensure_future(self._stopping.wait())
                done, _ = await asyncio.wait({receive, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                if receive not in done:
                    # Stopping during a long poll. Let the poll finish so no received message is stranded invisible.
                    with contextlib.suppress(Exception):
                        resp = await asyncio.wait_for(receive, timeout=self.wait_time_s + 5)
                        for m in resp.get("Messages", []):
                            await self._release(m)
                    break
                try:
                    resp = receive.result()
                except Exception as exc:
                    if is_missing_resource(exc):
                        await self._queue_missing(exc)
                        queue_url = None
                        continue
                    log.warning("receive_message failed; backing off", extra={"error": f"{type(exc).__name__}: {exc}"})
                    await asyncio.sleep(1.0)
                    continue
                for m in resp.get("Messages", []):
                    self.stats.received += 1
                    self._observe_received(m)
                    await self._sem.acquire()
                    task = asyncio.create_task(self._handle(m))
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
        finally:
            depth.cancel()
            await self.drain(self.drain_timeout_s)
            self._stopped.set()
            log.info("consumer stopped", extra={"queue": self.queue_name, **self._stats_dict()})

    async def drain(self, timeout_s: float | None = None) -> None:
        """Wait for in-flight handlers (bounded by ``timeout_s`` when given)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)

    def _free_slots(self) -> int:
        return self.concurrency - len(self._tasks)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    def _stats_dict(self) -> dict[str, Any]:
        s = self.stats
        return {"received": s.received, "succeeded": s.succeeded, "duplicates": s.duplicates, "failed": s.failed,
                "dead_lettered": s.dead_lettered}

    def _observe_received(self, m: dict[str, Any]) -> None:
        self._m_received.add(1, {"queue": self.queue_name})
        sent = m.get("Attributes", {}).get("SentTimestamp")
        if sent:
            with contextlib.suppress(ValueError):
                self._m_age.record(max(0.0, time.time() - int(sent) / 1000), {"queue": self.queue_name})

    async def _poll_depth(self) -> None:
        """Set ``radloop.queue.depth`` for the queue and its DLQ every :data:`QUEUE_DEPTH_INTERVAL_S` (best effort)."""
        while True:
            try:
                sqs = await self.clients.sqs()
                queue_url, dlq_url = await self._urls()
                for name, url in ((self.queue_name, queue_url), (self.dlq_name, dlq_url)):
                    attrs = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(_DEPTH_ATTRIBUTES))
                    for attr, state in _DEPTH_ATTRIBUTES.items():
                        value = attrs.get("Attributes", {}).get(attr)
                        if value is not None:
                            self._m_depth.set(int(value), {"queue": name, "state": state})
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a missed reading is a gap in a graph, never a consumer failure
                log.debug("queue depth poll failed", extra={"error": type(exc).__name__})
            await asyncio.sleep(QUEUE_DEPTH_INTERVAL_S)

    def _handled(self, event: str, outcome: str, started: float | None = None) -> None:
        labels = {"queue": self.queue_name, "event": event, "outcome": outcome}
        self._m_handled.add(1, labels)
        if started is not None:
            self._m_duration.record(time.perf_counter() - started, labels)

    async def _release(self, m: dict[str, Any]) -> None:
        sqs = await self.clients.sqs()
        queue_url, _ = await self._urls()
        await sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)

    # -- one message ----------------------------------------------------------------------------------------------
    async def _handle(self, m: dict[str, Any]) -> None:
        self.stats.in_flight += 1
        try:
            await self._handle_inner(m)
        finally:
            self.stats.in_flight -= 1

    async def _handle_inner(self, m: dict[str, Any]) -> None:
        sqs = await self.clients.sqs()
        queue_url, _ = await self._urls()
        receive_count = int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            envelope = parse_envelope(m["Body"])
            handler = self.handlers.get(envelope.detail_type)
            if handler is None:
                raise EventParseError(
                    f"{self.service} has no handler for detail-type {envelope.detail_type!r} (routing error)"
                )
            event = parse_detail(envelope.detail_type, envelope.detail)
        except EventParseError as exc:
            await self._dead_letter(m, str(exc))
            # The detail-type of an unparseable message is untrusted text: it is not a label.
            self._handled("_unparsed", "dead_lettered")
            return

        parent = extract_context(envelope.detail)
        span = tracer("radloop.consumer").start_span(
            f"process {envelope.detail_type}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "aws_sqs",
                "messaging.operation.type": "process",
                "messaging.destination.name": self.queue_name,
                "messaging.message.id": m["MessageId"],
                "messaging.consumer.group.name": self.service,
                "radloop.event": envelope.detail_type,
                "radloop.event_id": getattr(event, "event_id", envelope.id),
                "radloop.receive_count": receive_count,
            },
        )
        ctx = MessageContext(envelope, m["MessageId"], receive_count, m["ReceiptHandle"])
        heartbeat = asyncio.create_task(self._heartbeat(queue_url, m["ReceiptHandle"]))
        started = time.perf_counter()
        event_label = envelope.detail_type
        try:
            with trace.use_span(span, end_on_exit=False):
                ran = await self._invoke(handler, event, envelope, ctx)
        except IdempotencyInProgressError as exc:
            # Not a failure: either another process is running this event (its record is heartbeated) or the
            # process that received it was killed. Hide the message until the record would be stale, so the next
            # receive either finds the work done or takes it over; a short backoff would spend every receive
            # before the record goes stale and dead-letter a healthy message.
            heartbeat.cancel()
            span.set_attribute("radloop.outcome", "in_progress_elsewhere")
            log.info("event in progress elsewhere; waiting for it to finish or go stale", extra={"reason": str(exc)})
            await self._hide(queue_url, m["ReceiptHandle"], min(_SQS_MAX_VISIBILITY_S, self.inprogress_expiry_s + 1))
            self._handled(event_label, "deferred", started)
            return
        except IdempotencyPayloadMismatchError as exc:
            heartbeat.cancel()
            await self._dead_letter(m, str(exc))
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            self._handled(event_label, "dead_lettered", started)
            return
        except Exception as exc:
            heartbeat.cancel()
            self.stats.failed += 1
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, self.stats.last_error))
            log.warning(
                "handler failed; message left for redelivery",
                extra={"event": envelope.detail_type, "event_id": getattr(event, "event_id", envelope.id),
                       "receive_count": receive_count, "error": self.stats.last_error},
                exc_info=not isinstance(exc, (ValueError, LookupError)),
            )
            await self._backoff(queue_url, m["ReceiptHandle"], receive_count)
            self._handled(event_label, "failed", started)
            return
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            span.end()
        await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])
        if ran:
            self.stats.succeeded += 1
        else:
            self.stats.duplicates += 1
        self._handled(event_label, "succeeded" if ran else "duplicate", started)

    async def _invoke(self, handler: Handler, event: Message, envelope: Envelope, ctx: MessageContext) -> bool:
        if self.idempotency is None:
            await handler(event, ctx)
            return True
        key = f"{self.service}:{getattr(event, 'event_id', None) or _s3_dedupe_id(event, envelope)}"
        payload = idempotency_payload(envelope.detail)
        _, ran = await self.idempotency.run(key, payload, lambda: handler(event, ctx))
        return ran

    async def _heartbeat(self, queue_url: str, receipt: str) -> None:
        sqs = await self.clients.sqs()
        interval = max(1.0, self.visibility_timeout_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await sqs.change_message_visibility(
                    QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=self.visibility_timeout_s
                )
            except Exception as exc:  # the next beat may succeed; redelivery is safe anyway (idempotency)
                log.warning("visibility heartbeat failed", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _backoff(self, queue_url: str, receipt: str, receive_count: int) -> None:
        """Hide a failed message on the queue's exponential schedule, so retries span an outage of minutes."""
        delay = int(min(self.spec.retry_backoff_max_s, self.retry_backoff_s * 2 ** max(0, receive_count - 1)))
        await self._hide(queue_url, receipt, delay)

    async def _hide(self, queue_url: str, receipt: str, seconds: int) -> None:
        sqs = await self.clients.sqs()
        with contextlib.suppress(Exception):  # if this fails, the queue's visibility timeout applies instead
            await sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=receipt, VisibilityTimeout=seconds)

    async def _dead_letter(self, m: dict[str, Any], reason: str) -> None:
        """Send an unprocessable message straight to the DLQ with its reason, then delete it from the queue."""
        sqs = await self.clients.sqs()
        queue_url, dlq_url = await self._urls()
        self.stats.dead_lettered += 1
        log.error("message dead-lettered", extra={"message_id": m["MessageId"], "reason": reason[:500]})
        await sqs.send_message(
            QueueUrl=dlq_url,
            MessageBody=m["Body"] if m["Body"] else "(empty)",
            MessageAttributes={
                "radloop-dead-letter-reason": {"DataType": "String", "StringValue": reason[:1000]},
                "radloop-source-queue": {"DataType": "String", "StringValue": self.queue_name},
            },
        )
        await sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def _s3_dedupe_id(event: Message, envelope: Envelope) -> str:
    """The idempotency id of a notification without an ``event_id`` (S3's own events).

    moto gives every S3 notification of a bucket the same envelope ``id``, so the id alone would make distinct
    objects look like one redelivered message; the object's identity (key, ETag, sequencer, version) is added.
    """
    if not isinstance(event, S3ObjectCreated):
        return envelope.id
    import hashlib

    o = event.object
    raw = "|".join(str(x) for x in (envelope.id, envelope.time, event.bucket_name, event.key, o.get("etag", ""),
                                     o.get("sequencer", ""), o.get("version-id", "")))
    return "s3-" + hashlib.sha256(raw.encode()).hexdigest()[:40]
