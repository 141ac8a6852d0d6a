"""The transactional outbox: an event left in the outbox by a crash is republished by the sweeper, then deleted; the
in-memory queue stays bounded while EventBridge is down; an unparseable item does not block later sweeps."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.ingestion.adapters.outbox import Outbox
from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.events import InstanceStored
from shared.idempotency import IdempotencyStore
from shared.publisher import EventPublisher
from shared.service import Runtime
from shared.settings import Settings
from shared.uids import generate_uid


def _event() -> InstanceStored:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    return InstanceStored(
        study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT",
        number_of_frames=1, rows=8, columns=8, original_key=f"dicom/{study}/{series}/{sop}.dcm",
        frames_prefix=f"frames/{study}/{series}/{sop}", metadata_key=f"metadata/{study}/{series}/{sop}.json",
        content_sha256="0" * 64, size_bytes=1, htj2k_bytes=1, patient_pseudo_id="p", source="stow")


def _runtime(deployment: Settings, clients: AwsClients, publisher: object = None) -> Runtime[Settings]:
    return Runtime("ingestion", deployment, clients, publisher or EventPublisher(clients, "ingestion"),  # type: ignore[arg-type]
                   IdempotencyStore(clients), AuditLog(clients, "ingestion"))


async def _received(clients: AwsClients, deployment: Settings, want: int) -> list[dict[str, object]]:
    sqs = await clients.sqs()
    url = (await sqs.get_queue_url(QueueName=deployment.topology.queue_for("triage").name))["QueueUrl"]
    got: list[dict[str, object]] = []
    for _ in range(15):
        msgs = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)).get("Messages", [])
        for m in msgs:
            got.append(json.loads(m["Body"])["detail"])
            await sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if len(got) >= want and not msgs:
            break
    return got


@pytest.mark.asyncio(loop_scope="session")
async def test_sweeper_republishes_leftovers(adeployment, clients: AwsClients) -> None:
    rt = _runtime(adeployment, clients)
    outbox = Outbox(rt, stale_s=0.0)
    event = _event()
    sop = event.sop_uid
    ddb = await clients.dynamodb()
    # as if the process died right after the transaction that wrote it
    await ddb.transact_write_items(TransactItems=[outbox.transaction_item(event)])
    await asyncio.sleep(0.01)
    assert await outbox.sweep_once(older_than_s=0.0) == 1
    assert (await ddb.scan(TableName=outbox.table)).get("Items") == []
    sqs = await clients.sqs()
    url = (await sqs.get_queue_url(QueueName=adeployment.topology.queue_for("triage").name))["QueueUrl"]
    got = []
    for _ in range(10):
        msgs = (await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)).get("Messages", [])
        got += [json.loads(m["Body"])["detail"] for m in msgs]
        if got:
            break
    assert [d["sop_uid"] for d in got] == [sop] and got[0]["event_id"] == event.event_id


class FailingPublisher:
    """EventBridge down: every PutEvents fails (after a short delay, like a timed-out call)."""

    def __init__(self) -> None:
        self.calls = 0

    async def publish_many(self, events: object) -> None:
        self.calls += 1
        await asyncio.sleep(0.01)
        raise ConnectionError("EventBridge unreachable")

    async def publish(self, event: object) -> None:
        await self.publish_many([event])


@pytest.mark.asyncio(loop_scope="session")
async def test_queue_is_bounded_while_eventbridge_is_down(adeployment, clients: AwsClients) -> None:
    """With EventBridge failing, the in-memory queue never holds more than its bound and the publisher backs off;
    every event is still in the outbox table, and the sweeper publishes all of them once EventBridge is back."""
    failing = FailingPublisher()
    settings = adeployment.model_copy()
    object.__setattr__(settings, "outbox_queue_max", 20)  # what IngestionSettings(outbox_queue_max=20) sets
    rt = _runtime(settings, clients, failing)
    outbox = Outbox(rt, stale_s=0.0, sweep_every_s=3600)
    ddb = await clients.dynamodb()
    events = [_event() for _ in range(60)]
    for e in events:  # as the pipeline does: the transaction makes it durable, then it is queued
        await ddb.transact_write_items(TransactItems=[outbox.transaction_item(e)])
    outbox.start()
    try:
        peak = 0
        for e in events * 5:  # 300 enqueues while every publish fails
            outbox.enqueue(e)
            peak = max(peak, outbox._queue.qsize())
        await asyncio.sleep(1.0)
        peak = max(peak, outbox._queue.qsize())
        assert peak <= 20, f"the publisher queue grew to {peak} events"
        assert outbox.overflowed >= 300 - 20 - 10
        # backing off, not a hot loop of failing PutEvents (without back-off: ~100 calls in that second)
        assert 1 <= failing.calls <= 10, failing.calls
    finally:
        await outbox.stop(timeout_s=0.1)
    items = (await ddb.scan(TableName=outbox.table, ConsistentRead=True))["Items"]
    assert {i["id"]["S"] for i in items} >= {outbox._id(e) for e in events}  # nothing lost
    outbox.rt = _runtime(adeployment, clients)  # EventBridge is back
    assert await outbox.sweep_once(older_than_s=0.0) == len(events)
    got = await _received(clients, adeployment, len(events))
    assert {d["sop_uid"] for d in got} == {e.sop_uid for e in events}  # type: ignore[misc]


@pytest.mark.asyncio(loop_scope="session")
async def test_an_unparseable_item_does_not_block_later_sweeps(adeployment, clients: AwsClients) -> None:
    rt = _runtime(adeployment, clients)
    outbox = Outbox(rt, stale_s=0.0)
    ddb = await clients.dynamodb()
    before, after = _event(), _event()
    await ddb.transact_write_items(TransactItems=[outbox.transaction_item(before)])
    bad = outbox.transaction_item(_event())["Put"]["Item"]
    bad["id"] = {"S": "ingestion#poison"}
    bad["detail"] = {"S": "{not json"}
    await ddb.put_item(TableName=outbox.table, Item=bad)
    wrong = dict(bad, id={"S": "ingestion#wrong-shape"}, detail={"S": json.dumps({"sop_uid": 5})})
    await ddb.put_item(TableName=outbox.table, Item=wrong)
    await ddb.transact_write_items(TransactItems=[outbox.transaction_item(after)])
    await asyncio.sleep(0.01)
    assert await outbox.sweep_once(older_than_s=0.0) == 2
    assert outbox.unparseable == 2
    got = await _received(clients, adeployment, 2)
    assert {d["sop_uid"] for d in got} == {before.sop_uid, after.sop_uid}
    # both bad items are moved aside (kept for an operator), not selected again
    left = {i["id"]["S"]: i for i in (await ddb.scan(TableName=outbox.table, ConsistentRead=True))["Items"]}
    assert set(left) == {"ingestion#poison", "ingestion#wrong-shape"}
    assert {i["service"]["S"] for i in left.values()} == {"ingestion#unparseable"}
    # a later event still goes out
    later = _event()
    await ddb.transact_write_items(TransactItems=[outbox.transaction_item(later)])
    await asyncio.sleep(0.01)
    assert await outbox.sweep_once(older_than_s=0.0) == 1 and outbox.unparseable == 2
    assert [d["sop_uid"] for d in await _received(clients, adeployment, 1)] == [later.sop_uid]
