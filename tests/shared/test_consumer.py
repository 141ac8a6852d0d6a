"""The SQS consumer runtime and the idempotency store, against a real moto server process."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from shared import event_names as ev
from shared.aws import AwsClients
from shared.consumer import MessageContext, SqsConsumer
from shared.events import ModelApproved
from shared.exceptions import IdempotencyPayloadMismatchError
from shared.idempotency import IdempotencyStore
from tests.support.aws import counter, depth, drain_queue, envelope, queue_url, wait_for


def approved(**kw: Any) -> ModelApproved:
    return ModelApproved(version=kw.pop("version", 1), model_package_arn="arn:aws:sagemaker:x", model_artifact_uri="s3://b/m",
                         threshold=0.5, approved_by="policy", reason="test", **kw)


async def bump(clients: AwsClients, key: str) -> None:
    ddb = await clients.dynamodb()
    await ddb.update_item(TableName=clients.settings.topology.table("state"), Key={"key": {"S": key}},
                          UpdateExpression="ADD n :one", ExpressionAttributeValues={":one": {"N": "1"}})


async def send(clients: AwsClients, body: str, queue: str | None = None, copies: int = 1) -> None:
    sqs = await clients.sqs()
    url = await queue_url(clients, queue or clients.settings.topology.queues["triage"].name)
    for _ in range(copies):
        await sqs.send_message(QueueUrl=url, MessageBody=body)


async def run_until(consumer: SqsConsumer, predicate: Any, timeout_s: float = 30.0) -> Any:
    task = asyncio.create_task(consumer.run())
    try:
        return await wait_for(predicate, timeout_s)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 15)


async def test_duplicate_deliveries_cause_one_effect(clients: AwsClients) -> None:
    event = approved()
    body = envelope(event)

    async def handle(e: ModelApproved, ctx: MessageContext) -> None:
        await asyncio.sleep(0.3)  # long enough that the 10 copies overlap
        await bump(clients, f"effect#{e.event_id}")

    await send(clients, body, copies=2)  # the same event delivered twice...
    await send(clients, body, copies=10)  # ...and ten more copies processed concurrently
    # Copies that find the record in progress are hidden until it would be stale (here 2 s), then find it complete.
    consumer = SqsConsumer(clients, "triage", {ev.MODEL_APPROVED: handle},
                           idempotency=IdempotencyStore(clients, inprogress_expiry_s=2),
                           concurrency=12, wait_time_s=1, retry_backoff_s=0.2)
    triage_q = clients.settings.topology.queues["triage"].name

    async def settled() -> bool:
        return await depth(clients, triage_q) == (0, 0)

    assert await run_until(consumer, settled)
    assert await counter(clients, f"effect#{event.event_id}") == 1
    assert consumer.stats.succeeded == 1
    assert consumer.stats.duplicates + consumer.stats.succeeded == 12


async def test_a_republished_event_is_a_duplicate_whatever_its_time_and_trace(clients: AwsClients) -> None:
    """A producer that re-runs after a kill republishes the same event (same id, same content) with a new
    ``occurred_at`` and trace context: consumers skip it as a duplicate. (The short chaos run dead-lettered such a
    re-published ``InstanceScored`` in verification and interop as "a different payload": the hash covered
    ``occurred_at``.) The same id with different *content* is still refused
    (``test_idempotency_store_runs_once_under_parallel_calls``)."""
    from datetime import timedelta

    first = approved()
    rerun = first.model_copy(update={"occurred_at": first.occurred_at + timedelta(seconds=42),
                                     "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"})
    assert envelope(first) != envelope(rerun)
    triage_q = clients.settings.topology.queues["triage"]

    async def handle(e: ModelApproved, ctx: MessageContext) -> None:
        await bump(clients, f"effect#{e.event_id}")

    await send(clients, envelope(first))
    consumer = SqsConsumer(clients, "triage", {ev.MODEL_APPROVED: handle}, idempotency=IdempotencyStore(clients),
                           wait_time_s=1, retry_backoff_s=0.1)

    async def settled() -> bool:
        return await depth(clients, triage_q.name) == (0, 0)

    assert await run_until(consumer, settled)
    await send(clients, envelope(rerun))
    again = SqsConsumer(clients, "triage", {ev.MODEL_APPROVED: handle}, idempotency=IdempotencyStore(clients),
                        wait_time_s=1, retry_backoff_s=0.1)
    assert await run_until(again, settled)
    assert await counter(clients, f"effect#{first.event_id}") == 1
    assert (again.stats.duplicates, again.stats.dead_lettered) == (1, 0)
    assert (await depth(clients, triage_q.dlq_name))[0] == 0


async def test_idempotency_store_runs_once_under_parallel_calls(clients: AwsClients) -> None:
    store = IdempotencyStore(clients, namespace="direct")
    calls = 0

    async def effect() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return {"answer": 42}

    results = await asyncio.gather(*(store.run("k1", {"a": 1}, effect) for _ in range(10)), return_exceptions=True)
    ran = [r for r in results if isinstance(r, tuple) and r[1]]
    assert calls == 1 and len(ran) == 1
    # once completed, a duplicate returns the stored result without running
    result, again = await store.run("k1", {"a": 1}, effect)
    assert (result, again, calls) == ({"answer": 42}, False, 1)
    with pytest.raises(IdempotencyPayloadMismatchError):
        await store.run("k1", {"a": 2}, effect)


async def test_failed_handler_clears_its_record_so_a_retry_runs(clients: AwsClients) -> None:
    store = IdempotencyStore(clients, namespace="retry")
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise RuntimeError("transient")
        return "ok"

    with pytest.raises(RuntimeError):
        await store.run("k", {}, flaky)
    assert await store.run("k", {}, flaky) == ("ok", True)


async def test_poison_message_reaches_the_dlq_and_others_keep_flowing(clients: AwsClients, caplog: Any) -> None:
    topo = clients.settings.topology
    q = topo.queues["triage"]
    sqs = await clients.sqs()
    dlq_arn = (await sqs.get_queue_attributes(QueueUrl=await queue_url(clients, q.dlq_name),
                                              AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    await sqs.set_queue_attributes(QueueUrl=await queue_url(clients, q.name), Attributes={
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})})
    poison = approved(version=666)
    good = [approved(version=i) for i in range(1, 6)]

    async def handle(e: ModelApproved, ctx: MessageContext) -> None:
        if e.version == 666:
            raise RuntimeError("this handler always fails for version 666")
        await bump(clients, f"good#{e.event_id}")

    await send(clients, envelope(poison))
    await send(clients, "{not json")
    await send(clients, json.dumps({"detail-type": "Nope", "source": "x", "id": "1", "detail": {}}))
    for g in good:
        await send(clients, envelope(g))
    consumer = SqsConsumer(clients, "triage", {ev.MODEL_APPROVED: handle}, idempotency=IdempotencyStore(clients),
                           wait_time_s=1, retry_backoff_s=0.1)

    async def all_settled() -> bool:
        return await depth(clients, q.name) == (0, 0) and (await depth(clients, q.dlq_name))[0] == 3

    with caplog.at_level(logging.ERROR, logger="shared.consumer"):
        assert await run_until(consumer, all_settled, timeout_s=40)
    for g in good:
        assert await counter(clients, f"good#{g.event_id}") == 1
    dead = await drain_queue(clients, q.dlq_name, wait_s=1)
    bodies = [m["Body"] for m in dead]
    assert any(poison.event_id in b for b in bodies), "the poison message ends in the DLQ after maxReceiveCount"
    reasons = [m.get("MessageAttributes", {}).get("radloop-dead-letter-reason", {}).get("StringValue", "") for m in dead]
    assert any("not JSON" in r for r in reasons)
    assert any("no handler for detail-type 'Nope'" in r for r in reasons)
    assert any("not JSON" in r.getMessage() or "not JSON" in str(getattr(r, "reason", "")) for r in caplog.records)


async def test_heartbeat_keeps_a_long_handler_from_redelivery(clients: AwsClients) -> None:
    q = clients.settings.topology.queues["triage"]
    sqs = await clients.sqs()
    await sqs.set_queue_attributes(QueueUrl=await queue_url(clients, q.name), Attributes={"VisibilityTimeout": "2"})
    invocations = 0
    event = approved()

    async def slow(e: ModelApproved, ctx: MessageContext) -> None:
        nonlocal invocations
        invocations += 1
        await asyncio.sleep(6.5)  # > 3 x the visibility timeout

    await send(clients, envelope(event))
    # no idempotency here: a redelivery would show up as a second invocation
    consumer = SqsConsumer(clients, "triage", {ev.MODEL_APPROVED: slow}, concurrency=4, wait_time_s=1,
                           visibility_timeout_s=2)

    async def done() -> bool:
        return consumer.stats.succeeded == 1 and await depth(clients, q.name) == (0, 0)

    assert await run_until(consumer, done, timeout_s=30)
    assert invocations == 1
