"""HTTP app of the triage service (health, ``/triage/model``, on-request heatmaps) with its SQS worker inside."""

from __future__ import annotations

from fastapi import FastAPI

from services.triage import SERVICE
from services.triage.api.routes import router
from services.triage.bootstrap import model_ready, shutdown, startup
from services.triage.handlers import handlers
from services.triage.settings import triage_settings
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The triage app; the consumer runs enough messages at once for micro-batches to fill."""
    s = triage_settings(settings)
    return service_app(
        SERVICE,
        s,
        title="radloop triage",
        routers=[router],
        startup=startup,
        shutdown=shutdown,
        handlers=handlers,
        readiness=[model_ready],
        consumer_options={"concurrency": s.triage_concurrency},
    )
