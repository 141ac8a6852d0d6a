"""HTTP app of the ingestion service."""

from __future__ import annotations

from fastapi import FastAPI

from services.ingestion import SERVICE
from services.ingestion.bootstrap import startup
from services.ingestion.handlers import handlers
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return service_app(
        SERVICE,
        settings or Settings(),
        title="radloop ingestion",
        startup=startup,
        handlers=handlers,
    )
