"""A failure before the index transaction leaves nothing half-visible: no index item, no claim, no outbox event, and
the sender gets 0xA700 (retry later), not an acknowledgement. The retry then succeeds."""

from __future__ import annotations

import pytest

from services.ingestion.domain.pool import CpuPool
from services.ingestion.service import IngestPipeline
from services.ingestion.settings import IngestionSettings
from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.dicom.errors import OUT_OF_RESOURCES, TransientFailure
from shared.idempotency import IdempotencyStore
from shared.publisher import EventPublisher
from shared.service import Runtime
from tests.ingestion.stow_helpers import fresh


def _pipeline(deployment, clients: AwsClients, **update: object) -> tuple[IngestPipeline, CpuPool]:
    """The real ingestion pipeline in this process (one worker thread), against ``deployment``."""
    settings = IngestionSettings().model_copy(update={"aws_endpoint_url": deployment.aws_endpoint_url,
                                                      "prefix": deployment.prefix, **update})
    rt = Runtime("ingestion", settings, clients, EventPublisher(clients, "ingestion"), IdempotencyStore(clients),
                 AuditLog(clients, "ingestion"))
    pool = CpuPool(1, "thread")
    return IngestPipeline(rt, pool), pool


@pytest.mark.asyncio(loop_scope="session")
async def test_storage_failure_leaves_nothing_then_retry_succeeds(adeployment, clients: AwsClients) -> None:
    pipeline, pool = _pipeline(adeployment, clients)
    ds, data = fresh("SC_rgb.dcm")
    real_bucket = pipeline.images.bucket
    pipeline.images.bucket = f"{adeployment.prefix}-no-such-bucket"  # S3 refuses every PUT: a real storage failure
    try:
        with pytest.raises(TransientFailure) as info:
            await pipeline.ingest(data, source="stow")
        assert info.value.failure_reason == OUT_OF_RESOURCES and "retry" in info.value.reason
        ddb = await clients.dynamodb()
        table = adeployment.topology.table("instances")
        assert (await ddb.scan(TableName=table)).get("Items") == []
        assert (await ddb.scan(TableName=adeployment.topology.table("outbox"))).get("Items") == []
        claim = await ddb.get_item(TableName=adeployment.topology.table("idempotency"),
                                   Key={"id": {"S": f"ingest#sop#{ds.SOPInstanceUID}"}})
        assert "Item" not in claim  # released, so the retry is not mistaken for a duplicate
        pipeline.images.bucket = real_bucket
        result = await pipeline.ingest(data, source="stow")
        assert result.status == "stored"
        items = (await ddb.scan(TableName=table)).get("Items")
        assert {i["sk"]["S"].split("#")[0] for i in items} == {"STUDY", "SERIES", "INSTANCE"}
    finally:
        await pipeline.outbox.stop(timeout_s=1)
        pool.shutdown()


@pytest.mark.asyncio(loop_scope="session")
async def test_overwrite_when_configured(adeployment, clients: AwsClients) -> None:
    """With allow_overwrite, other content under a stored SOP Instance UID replaces it; counts do not change."""
    import io

    import pydicom

    pipeline, pool = _pipeline(adeployment, clients, allow_overwrite=True)
    try:
        ds, first = fresh("SC_rgb.dcm")
        assert (await pipeline.ingest(first, source="stow")).status == "stored"
        ds.PixelData = bytes(len(ds.PixelData))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        second = buf.getvalue()
        assert (await pipeline.ingest(second, source="stow")).status == "stored"
        ddb = await clients.dynamodb()
        items = [i for i in (await ddb.scan(TableName=adeployment.topology.table("instances")))["Items"]
                 if i["pk"]["S"] == f"STUDY#{ds.StudyInstanceUID}"]
        inst = next(i for i in items if i["sk"]["S"].startswith("INSTANCE#"))
        import hashlib

        assert inst["content_sha256"]["S"] == hashlib.sha256(second).hexdigest()
        study = next(i for i in items if i["sk"]["S"] == "STUDY")
        assert study["num_instances"]["N"] == "1"
        s3 = await clients.s3()
        obj = await s3.get_object(Bucket=pipeline.images.bucket, Key=inst["original_key"]["S"])
        async with obj["Body"] as body:
            assert pydicom.dcmread(io.BytesIO(await body.read())).PixelData == ds.PixelData
    finally:
        await pipeline.outbox.stop(timeout_s=1)
        pool.shutdown()


@pytest.mark.asyncio(loop_scope="session")
async def test_lost_claim_waits_for_the_new_owner_instead_of_failing(adeployment, clients: AwsClients) -> None:
    """Another sender takes the claim over while this one is storing (its lease looked expired): the index
    transaction's claim condition fails, and the instance is still acknowledged exactly once, not refused."""
    import time

    pipeline, pool = _pipeline(adeployment, clients)
    ds, data = fresh("SC_rgb.dcm")
    ddb = await clients.dynamodb()
    claims_table = adeployment.topology.table("idempotency")
    real_store = pipeline._store
    stolen: list[str] = []

    async def store_then_lose_claim(prep, claim):  # type: ignore[no-untyped-def]
        receipt = await real_store(prep, claim)
        if not stolen:  # once: a real write that replaces our claim with another (already expired) owner's
            item = (await ddb.get_item(TableName=claims_table, Key={"id": {"S": f"ingest#sop#{prep.sop_uid}"}},
                                       ConsistentRead=True))["Item"]
            item.update({"owner": {"S": "someone-else"}, "in_progress_expiry": {"N": f"{time.time() - 1:.3f}"}})
            await ddb.put_item(TableName=claims_table, Item=item)
            stolen.append(prep.sop_uid)
        return receipt

    pipeline._store = store_then_lose_claim  # type: ignore[method-assign]
    try:
        result = await pipeline.ingest(data, source="stow")
        assert stolen == [str(ds.SOPInstanceUID)]
        assert result.status == "stored"
        claim = (await ddb.get_item(TableName=claims_table, Key={"id": {"S": f"ingest#sop#{ds.SOPInstanceUID}"}},
                                    ConsistentRead=True))["Item"]
        assert claim["status"]["S"] == "COMPLETED"
        items = [i for i in (await ddb.scan(TableName=adeployment.topology.table("instances")))["Items"]
                 if i["pk"]["S"] == f"STUDY#{ds.StudyInstanceUID}"]
        assert sum(i["sk"]["S"].startswith("INSTANCE#") for i in items) == 1
        # A resend is a plain duplicate.
        assert (await pipeline.ingest(data, source="stow")).status == "duplicate"
    finally:
        await pipeline.outbox.stop(timeout_s=1)
        pool.shutdown()
