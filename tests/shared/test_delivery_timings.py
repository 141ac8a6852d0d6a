"""Delivery timings: what decides whether a healthy message can be dead-lettered, and DLQ operations.

Production ratios (issue: a killed worker must not dead-letter its message; ride out a 10-minute outage).
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from radloop import dlq
from shared.aws import AwsClients
from shared.consumer import SqsConsumer, idempotency_payload
from shared.events import ModelApproved
from shared.settings import Settings
from shared.topology import QueueSpec, build_topology
from tests.support.aws import depth, envelope, queue_url


def test_every_queue_rides_out_a_ten_minute_outage() -> None:
    # With the old schedule (1 s doubling, capped at the visibility timeout; 3-5 receives) ingestion dead-lettered
    # after ~7 s of an outage and the others after ~31 s.
    for q in build_topology("radloop").queues.values():
        assert q.outage_tolerance_s() >= 600, q
        assert q.max_receive_count >= 3, q


def test_forwarding_rides_out_a_two_hour_destination_outage() -> None:
    """A PACS down for a maintenance window: its results are retried for two hours before the dead-letter queue
    (9 receives dead-lettered them after 13.5 minutes; found by a review, session 22)."""
    from shared.topology import FORWARDING_OUTAGE_S

    q = build_topology("radloop").queue_for("interop")
    assert FORWARDING_OUTAGE_S >= 7200 and q.outage_tolerance_s() >= FORWARDING_OUTAGE_S
    assert q.outage_tolerance_s() < q.retention_s  # still on the queue when the last retry comes


def test_the_backoff_doubles_up_to_its_cap() -> None:
    q = QueueSpec("q", "q-dlq", retry_backoff_s=2.0, retry_backoff_max_s=300, max_receive_count=9)
    assert [q.retry_delay_s(n) for n in range(1, 10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300]
    assert q.outage_tolerance_s() == 810


def test_settings_refuse_timings_that_dead_letter_healthy_messages() -> None:
    with pytest.raises(ValueError, match="outage_tolerance_s"):
        Settings(outage_tolerance_s=3600)
    with pytest.raises(ValueError, match="SQS's longest visibility"):
        Settings(idempotency_inprogress_expiry_s=50_000)
    assert Settings().outage_tolerance_s == 600


async def test_a_message_in_progress_elsewhere_waits_until_the_record_is_stale(clients: AwsClients) -> None:
    """The redelivery of a killed handler's message is hidden until its INPROGRESS record goes stale.

    Before: it was retried with a 1-2-4-8 s backoff, which spent the queue's receives within ~15 s while the record
    stayed INPROGRESS for 120 s, so the message reached the DLQ and the image never got its score.
    """
    e = ModelApproved(version=1, model_package_arn="arn", model_artifact_uri="s3://b/m", threshold=0.5,
                      approved_by="policy", reason="test")
    from shared.idempotency import INPROGRESS, IdempotencyStore, payload_hash

    store = IdempotencyStore(clients)
    payload = idempotency_payload(json.loads(e.to_detail()))
    # What a handler that was SIGKILLed leaves behind: a fresh INPROGRESS record that nobody heartbeats any more.
    now = int(time.time())
    ddb = await clients.dynamodb()
    await ddb.put_item(TableName=store.table, Item={
        "id": {"S": f"triage:{e.event_id}"}, "status": {"S": INPROGRESS}, "payload_hash": {"S": payload_hash(payload)},
        "expiration": {"N": str(now + 3600)}, "in_progress_expiry": {"N": str(now + store.inprogress_expiry_s)},
        "owner": {"S": "killed"}})
    seen: list[str] = []

    async def handle(event: ModelApproved, _m: object) -> None:
        seen.append(event.event_id)

    consumer = SqsConsumer(clients, "triage", {e.name: handle}, idempotency=store, wait_time_s=0)
    sqs = await clients.sqs()
    q = clients.settings.topology.queues["triage"]
    url = await queue_url(clients, q.name)
    await sqs.send_message(QueueUrl=url, MessageBody=envelope(e))
    await consumer.run(max_messages=1)
    assert seen == []
    # Hidden for the record's remaining life (120 s at production settings), not a short backoff (the old code made
    # it visible again after 1 s, and each such receive counted towards maxReceiveCount).
    await asyncio.sleep(3)
    resp = await sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert resp.get("Messages", []) == [], "the message must stay hidden until the record is stale"
    assert await depth(clients, q.name) == (0, 1)
    assert await depth(clients, q.dlq_name) == (0, 0)


async def test_dlq_show_and_redrive(clients: AwsClients) -> None:
    sqs = await clients.sqs()
    q = clients.settings.topology.queues["verification"]
    e = ModelApproved(version=2, model_package_arn="arn", model_artifact_uri="s3://b/m", threshold=0.5,
                      approved_by="policy", reason="test")
    consumer = SqsConsumer(clients, "verification", {}, wait_time_s=0)
    await sqs.send_message(QueueUrl=await queue_url(clients, q.name), MessageBody=envelope(e))
    await sqs.send_message(QueueUrl=await queue_url(clients, q.name), MessageBody="not json")
    await consumer.run(max_messages=2)  # no handler + unparseable: both dead-lettered with a reason
    assert await depth(clients, q.dlq_name) == (2, 0)

    rows = await dlq.depths(clients, "verification")
    assert rows[0]["dlq_depth"] == 2
    shown = await dlq.show(clients, "verification")
    assert sorted(d.reason[:20] for d in shown) == sorted(["message body is not ", "verification has no "])
    assert {d.detail_type for d in shown} == {"ModelApproved", ""}
    assert await depth(clients, q.dlq_name) == (2, 0), "show leaves the messages where they are"

    target = next(d for d in shown if d.detail_type == "ModelApproved")
    moved = await dlq.redrive(clients, "verification", message_id=target.message_id)
    assert [d.event_id for d in moved] == [e.event_id]
    assert await depth(clients, q.name) == (1, 0)
    assert (await depth(clients, q.dlq_name))[0] + (await depth(clients, q.dlq_name))[1] == 1
    with pytest.raises(ValueError, match="unknown queue"):
        dlq.queues_for(clients, "nope")
