"""The typed dependency of the ingestion routes: the service's :class:`~services.ingestion.bootstrap.IngestionDeps`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends

from shared.service import get_deps

if TYPE_CHECKING:  # bootstrap imports the routes to declare the service; FastAPI needs only the dependency
    from services.ingestion.bootstrap import IngestionDeps

DepsDep = Annotated["IngestionDeps", Depends(get_deps)]
