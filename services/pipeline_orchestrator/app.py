"""HTTP app of the pipeline orchestrator service."""

from __future__ import annotations

from fastapi import FastAPI

from services.pipeline_orchestrator import SERVICE
from services.pipeline_orchestrator.api.routes import router
from services.pipeline_orchestrator.bootstrap import shutdown, startup
from services.pipeline_orchestrator.handlers import handlers
from services.pipeline_orchestrator.settings import OrchestratorSettings
from shared.service import ServiceContext, service_app
from shared.settings import Settings


async def _ticker_alive(ctx: ServiceContext) -> str | None:
    task = ctx.extras.get("ticker")
    return "orchestrator ticker stopped" if task is not None and task.done() else None


def create_app(settings: Settings | None = None) -> FastAPI:
    if settings is None or not isinstance(settings, OrchestratorSettings):
        # serve() passes base Settings; read this service's own fields from the environment as well.
        base = settings
        settings = OrchestratorSettings()
        if base is not None:
            settings = settings.model_copy(update={"port": base.port, "service_name": base.service_name})
    return service_app(
        SERVICE,
        settings,
        title="radloop pipeline orchestrator",
        description="Retraining policy, dataset snapshots, pipeline executions.",
        routers=[router],
        startup=startup,
        shutdown=shutdown,
        handlers=handlers,
        readiness=[_ticker_alive],
    )
