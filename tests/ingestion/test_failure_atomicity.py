"""A failure before the index transaction leaves nothing half-visible: no index item, no claim, no outbox event, and
the sender gets 0xA700 (retry later), not an acknowledgement. The retry then succeeds."""

from __future__ import annotations

import pytest

from services.ingestion.domain.pipeline import IngestPipeline
from services.ingestion.domain.pool import CpuPool
from services.ingestion.settings import IngestionSettings
from shared.audit import AuditLog
from shared.aws import AwsClients
from shared.dicom.errors import OUT_OF_RESOURCES, TransientFailure
from shared.idempotency import IdempotencyStore
from shared.publisher import EventPublisher
from shared.service import ServiceContext
from tests.ingestion.stow_helpers import fresh


@pytest.mark.asyncio(loop_scope="session")
async def test_storage_failure_leaves_nothing_then_retry_succeeds(adeployment, clients: AwsClients) -> None:
    settings = IngestionSettings().model_copy(update={"aws_endpoint_url": adeployment.aws_endpoint_url,
                                                      "prefix": adeployment.prefix})
    ctx = ServiceContext("ingestion", settings, clients, EventPublisher(clients, "ingestion"),
                         IdempotencyStore(clients), AuditLog(clients, "ingestion"))
    pool = CpuPool(1, "thread")
    pipeline = IngestPipeline(ctx, settings, pool)
    ds, data = fresh("SC_rgb.dcm")
    real_bucket = pipeline.images_bucket
    pipeline.images_bucket = f"{adeployment.prefix}-no-such-bucket"  # S3 refuses every PUT: a real storage failure
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
        pipeline.images_bucket = real_bucket
        result = await pipeline.ingest(data, source="stow")
        assert result.status == "stored"
        items = (await ddb.scan(TableName=table)).get("Items")
        assert {i["sk"]["S"].split("#")[0] for i in items} == {"STUDY", "SERIES", "INSTANCE"}
    finally:
        await pipeline.outbox.stop(timeout_s=1)
        pool.shutdown()
