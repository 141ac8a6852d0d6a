"""The ingestion service's declaration: its dependencies, start-up, shutdown and :data:`SPEC`."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from services.ingestion import SERVICE
from services.ingestion.adapters.dimse import StorageSCP
from services.ingestion.api.stow import router as stow_router
from services.ingestion.domain.pool import CpuPool
from services.ingestion.handlers import HANDLERS
from services.ingestion.service import IngestPipeline
from services.ingestion.settings import IngestionSettings
from shared.service import Runtime, ServiceSpec

log = logging.getLogger(__name__)


@dataclass
class IngestionDeps:
    """What the ingestion routes and handlers use: the pipeline, its CPU pool, and the DIMSE SCP when it runs."""

    rt: Runtime[IngestionSettings]
    pool: CpuPool
    pipeline: IngestPipeline
    scp: StorageSCP | None = None


async def startup(rt: Runtime[IngestionSettings]) -> IngestionDeps:
    """Create the CPU pool and the pipeline, start the outbox, and start the DIMSE SCP in the app process when a
    port is configured (a worker-only process never listens: the HTTP process has the SCP)."""
    s = rt.settings
    pool = CpuPool(s.ingest_workers, s.ingest_pool)
    await asyncio.to_thread(pool.warm_up)
    pipeline = IngestPipeline(rt, pool)
    pipeline.outbox.start()
    pipeline.imports.start()
    deps = IngestionDeps(rt=rt, pool=pool, pipeline=pipeline)
    if s.dimse_port and rt.role == "app":
        deps.scp = StorageSCP(pipeline, s, asyncio.get_running_loop())
        deps.scp.start()
        log.info("DIMSE SCP listening", extra={"port": s.dimse_port, "ae_title": s.dimse_ae_title})
    return deps


async def shutdown(deps: IngestionDeps) -> None:
    """Stop the SCP (no new associations), then the imports (the open batch is started), the outbox, the CPU pool."""
    if deps.scp is not None:
        await asyncio.to_thread(deps.scp.stop)
    await deps.pipeline.imports.stop()
    await deps.pipeline.outbox.stop()
    await asyncio.to_thread(deps.pool.shutdown)


SPEC: ServiceSpec[IngestionSettings, IngestionDeps] = ServiceSpec(
    name=SERVICE,
    title="radloop ingestion",
    description="STOW-RS, DIMSE C-STORE and S3 drop-folder ingestion with HTJ2K transcoding.",
    settings=IngestionSettings,
    startup=startup,
    shutdown=shutdown,
    routers=[stow_router],
    handlers=HANDLERS,
)
