"""Wires the ingestion service's dependencies into its context at start-up."""

from __future__ import annotations

import asyncio
import logging

from services.ingestion.domain.pipeline import IngestPipeline
from services.ingestion.domain.pool import CpuPool
from services.ingestion.settings import ingestion_settings
from shared.service import ServiceContext

log = logging.getLogger(__name__)


async def startup(ctx: ServiceContext) -> None:
    """Create the CPU pool and the pipeline, and start the DIMSE SCP when a port is configured."""
    settings = ingestion_settings(ctx.settings)
    pool = CpuPool(settings.ingest_workers, settings.ingest_pool)
    await asyncio.to_thread(pool.warm_up)
    pipeline = IngestPipeline(ctx, settings, pool)
    ctx.extras["pool"] = pool
    ctx.extras["pipeline"] = pipeline
    pipeline.outbox.start()
    if settings.dimse_port and not ctx.extras.get("worker_only"):
        from services.ingestion.domain.dimse import StorageSCP

        scp = StorageSCP(pipeline, settings, asyncio.get_running_loop())
        scp.start()
        ctx.extras["scp"] = scp
        log.info("DIMSE SCP listening", extra={"port": settings.dimse_port, "ae_title": settings.dimse_ae_title})


async def worker_startup(ctx: ServiceContext) -> None:
    """Start-up of the worker-only process: the pipeline and outbox, but no DIMSE SCP (the HTTP process has it)."""
    ctx.extras["worker_only"] = True
    await startup(ctx)


async def shutdown(ctx: ServiceContext) -> None:
    """Stop the SCP (no new associations), then the CPU pool."""
    scp = ctx.extras.get("scp")
    if scp is not None:
        await asyncio.to_thread(scp.stop)
    pipeline = ctx.extras.get("pipeline")
    if pipeline is not None:
        await pipeline.outbox.stop()
    pool = ctx.extras.get("pool")
    if pool is not None:
        await asyncio.to_thread(pool.shutdown)
