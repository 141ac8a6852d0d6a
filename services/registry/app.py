"""HTTP app of the registry service."""

from __future__ import annotations

from fastapi import FastAPI

from services.registry import SERVICE
from services.registry.api.routes import router
from services.registry.bootstrap import startup
from services.registry.handlers import handlers
from services.registry.settings import RegistrySettings
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None or not isinstance(settings, RegistrySettings):
        # serve() passes base Settings; read this service's own fields from the environment as well.
        base = settings
        settings = RegistrySettings()
        if base is not None:
            settings = settings.model_copy(update={"port": base.port, "service_name": base.service_name})
    return service_app(
        SERVICE,
        settings,
        title="radloop registry",
        description="Model versions, metrics, lineage, approval, champion and rollback.",
        routers=[router],
        startup=startup,
        handlers=handlers,
    )
