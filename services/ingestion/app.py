"""HTTP app of the ingestion service: STOW-RS routes, the S3 drop-folder worker and the DIMSE SCP."""

from __future__ import annotations

from fastapi import FastAPI

from services.ingestion import SERVICE
from services.ingestion.api.stow import router as stow_router
from services.ingestion.bootstrap import shutdown, startup
from services.ingestion.handlers import handlers
from services.ingestion.settings import ingestion_settings
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ingestion app (settings: :class:`~services.ingestion.settings.IngestionSettings` from the environment)."""
    return service_app(
        SERVICE,
        ingestion_settings(settings),
        title="radloop ingestion",
        description="STOW-RS, DIMSE C-STORE and S3 drop-folder ingestion with HTJ2K transcoding.",
        routers=[stow_router],
        startup=startup,
        shutdown=shutdown,
        handlers=handlers,
    )
