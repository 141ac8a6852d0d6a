"""HTTP app of the interop service (health, ``/interop/status``) with its SQS worker and the Q/R SCP inside."""

from __future__ import annotations

from fastapi import FastAPI

from services.interop.bootstrap import SPEC
from shared.service import build_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The interop app (see :data:`services.interop.bootstrap.SPEC`)."""
    return build_app(SPEC, settings)
