"""HTTP app of the triage service."""

from __future__ import annotations

from fastapi import FastAPI

from services.triage import SERVICE
from services.triage.bootstrap import startup
from services.triage.handlers import handlers
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return service_app(
        SERVICE,
        settings or Settings(),
        title="radloop triage",
        startup=startup,
        handlers=handlers,
    )
