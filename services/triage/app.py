"""HTTP app of the triage service (health, ``/triage/model``, on-request heatmaps) with its SQS worker inside."""

from __future__ import annotations

from fastapi import FastAPI

from services.triage.bootstrap import SPEC
from shared.service import build_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The triage app (see :data:`services.triage.bootstrap.SPEC`)."""
    return build_app(SPEC, settings)
