"""HTTP app of the streaming gateway service: DICOMweb QIDO-RS and WADO-RS under /dicomweb, the viewer at /viewer."""

from __future__ import annotations

from fastapi import FastAPI

from services.streaming_gateway.bootstrap import SPEC
from shared.service import build_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The gateway app (settings: :class:`~services.streaming_gateway.settings.GatewaySettings`; plain settings get
    the gateway's own fields from the environment)."""
    return build_app(SPEC, settings)
