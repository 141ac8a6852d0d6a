"""HTTP app of the pipeline orchestrator service."""

from __future__ import annotations

from fastapi import FastAPI

from services.pipeline_orchestrator import SERVICE
from services.pipeline_orchestrator.bootstrap import startup
from services.pipeline_orchestrator.handlers import handlers
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return service_app(
        SERVICE,
        settings or Settings(),
        title="radloop pipeline orchestrator",
        startup=startup,
        handlers=handlers,
    )
