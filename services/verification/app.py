"""HTTP app of the verification service (routes under ``/verification``) with its SQS worker inside."""

from __future__ import annotations

from fastapi import FastAPI

from services.verification import SERVICE
from services.verification.api.routes import router
from services.verification.bootstrap import shutdown, startup
from services.verification.handlers import handlers
from services.verification.settings import verification_settings
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    return service_app(
        SERVICE,
        verification_settings(settings),
        title="radloop verification",
        description="Worklist, claims, reads (single and double with adjudication), live model performance.",
        routers=[router],
        startup=startup,
        shutdown=shutdown,
        handlers=handlers,
    )
