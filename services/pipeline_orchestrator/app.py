"""HTTP app of the pipeline orchestrator (routes under ``/orchestrator``) with its SQS worker inside."""

from __future__ import annotations

from fastapi import FastAPI

from services.pipeline_orchestrator.bootstrap import SPEC
from shared.service import build_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The orchestrator app (see :data:`services.pipeline_orchestrator.bootstrap.SPEC`)."""
    return build_app(SPEC, settings)
