"""Event handlers of the ingestion service (thin: each calls the service), and :data:`HANDLERS`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.consumer import MessageContext
from shared.events import ImportJobChanged, ImportJobCompleted, ImportJobFailed, S3ObjectCreated
from shared.service import HandlerMap

if TYPE_CHECKING:
    from services.ingestion.bootstrap import IngestionDeps


async def object_created(deps: IngestionDeps, event: S3ObjectCreated, _m: MessageContext) -> dict[str, Any]:
    """An object arrived in the S3 drop folder: ingest it (see ``IngestPipeline.ingest_dropped``)."""
    return await deps.pipeline.ingest_dropped(event.bucket_name, event.key)


async def import_job_changed(deps: IngestionDeps, event: ImportJobChanged, _m: MessageContext) -> dict[str, Any]:
    """HealthImaging finished (or failed) an import job: index and announce what it imported
    (``services.ingestion.imports``; polling GetDICOMImportJob is the fallback when this event is late)."""
    return await deps.pipeline.imports.job_changed(event.datastoreId, event.jobId)


HANDLERS: HandlerMap = {S3ObjectCreated: object_created, ImportJobCompleted: import_job_changed,
                        ImportJobFailed: import_job_changed}
