"""HTTP app of the verification service."""

from __future__ import annotations

from fastapi import FastAPI

from services.verification import SERVICE
from services.verification.bootstrap import startup
from services.verification.handlers import handlers
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return service_app(
        SERVICE,
        settings or Settings(),
        title="radloop verification",
        startup=startup,
        handlers=handlers,
    )
