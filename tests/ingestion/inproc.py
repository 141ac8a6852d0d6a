"""The real ingestion pipeline and STOW-RS routes in the test's own process (one CPU worker thread), against a
deployment on the session's moto server: for tests that need to reach inside (a failing audit table, a busy claim,
a gated pipeline) without starting a service process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from services.ingestion.bootstrap import SPEC, IngestionDeps
from services.ingestion.domain.pool import CpuPool
from services.ingestion.service import IngestPipeline
from services.ingestion.settings import IngestionSettings
from shared.audit import AuditLog
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.idempotency import IdempotencyStore
from shared.publisher import EventPublisher
from shared.service import Runtime, build_app
from shared.settings import Settings


def pipeline(deployment: Settings, clients: AwsClients, **update: Any) -> tuple[IngestPipeline, CpuPool]:
    """The ingestion pipeline against ``deployment`` with settings ``update``d."""
    settings = IngestionSettings().model_copy(update={"aws_endpoint_url": deployment.aws_endpoint_url,
                                                      "prefix": deployment.prefix, **update})
    rt = Runtime("ingestion", settings, clients, EventPublisher(clients, "ingestion"), IdempotencyStore(clients),
                 AuditLog(clients, "ingestion"))
    pool = CpuPool(1, "thread")
    return IngestPipeline(rt, pool), pool


@asynccontextmanager
async def stow_client(pipe: IngestPipeline, pool: CpuPool) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the real ingestion app (routes, auth, error mapping) serving ``pipe``; stops both after."""
    app = build_app(SPEC, pipe.settings)
    app.state.deps = IngestionDeps(rt=pipe.rt, pool=pool, pipeline=pipe)
    token = mint_token(pipe.settings, "pacs")
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
                                     headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            yield client
    finally:
        await pipe.outbox.stop(timeout_s=1)
        pool.shutdown()


async def audit_records(clients: AwsClients, deployment: Settings) -> list[dict[str, Any]]:
    """Every audit record of the deployment (a consistent scan; the test tables are small)."""
    from shared.ddb import collect

    ddb = await clients.dynamodb()
    return await collect(ddb.scan, TableName=deployment.topology.table("audit"), ConsistentRead=True)
