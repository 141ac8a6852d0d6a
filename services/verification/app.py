"""HTTP app of the verification service (routes under ``/verification``) with its SQS worker inside."""

from __future__ import annotations

from fastapi import FastAPI

from services.verification.bootstrap import SPEC
from shared.service import build_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The verification app (see :data:`services.verification.bootstrap.SPEC`)."""
    return build_app(SPEC, settings)
