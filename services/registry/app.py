"""HTTP app of the registry service (routes under ``/registry``) with its SQS worker inside."""

from __future__ import annotations

from fastapi import FastAPI

from services.registry.bootstrap import SPEC
from shared.service import build_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The registry app (see :data:`services.registry.bootstrap.SPEC`)."""
    return build_app(SPEC, settings)
