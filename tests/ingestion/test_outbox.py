"""The transactional outbox: an event left in the outbox by a crash is republished by the sweeper, then deleted."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.ingestion.domain.outbox import Outbox
from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.events import InstanceStored
from shared.idempotency import IdempotencyStore
from shared.publisher import EventPublisher
from shared.service import ServiceContext
from shared.uids import generate_uid


@pytest.mark.asyncio(loop_scope="session")
async def test_sweeper_republishes_leftovers(adeployment, clients: AwsClients) -> None:
    ctx = ServiceContext("ingestion", adeployment, clients, EventPublisher(clients, "ingestion"),
                         IdempotencyStore(clients), AuditLog(clients, "ingestion"))
    outbox = Outbox(ctx, stale_s=0.0)
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    event = InstanceStored(
        study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", modality="CT",
        number_of_frames=1, rows=8, columns=8, original_key=f"dicom/{study}/{series}/{sop}.dcm",
        frames_prefix=f"frames/{study}/{series}/{sop}", metadata_key=f"metadata/{study}/{series}/{sop}.json",
        content_sha256="0" * 64, size_bytes=1, htj2k_bytes=1, patient_pseudo_id="p", source="stow")
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
