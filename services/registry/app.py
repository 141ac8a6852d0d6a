"""HTTP app of the registry service."""

from __future__ import annotations

from fastapi import FastAPI

from services.registry import SERVICE
from services.registry.bootstrap import startup
from services.registry.handlers import handlers
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return service_app(
        SERVICE,
        settings or Settings(),
        title="radloop registry",
        startup=startup,
        handlers=handlers,
    )
