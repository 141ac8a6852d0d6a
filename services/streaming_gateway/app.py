"""HTTP app of the streaming gateway service."""

from __future__ import annotations

from fastapi import FastAPI

from services.streaming_gateway import SERVICE
from services.streaming_gateway.bootstrap import startup
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return service_app(
        SERVICE,
        settings or Settings(),
        title="radloop streaming gateway",
        startup=startup,
        
    )
