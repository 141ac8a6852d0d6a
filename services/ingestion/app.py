"""HTTP app of the ingestion service: STOW-RS routes, the S3 drop-folder worker and the DIMSE SCP."""

from __future__ import annotations

from fastapi import FastAPI

from services.ingestion.bootstrap import SPEC
from shared.service import build_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ingestion app (settings: :class:`~services.ingestion.settings.IngestionSettings` from the environment)."""
    return build_app(SPEC, settings)
