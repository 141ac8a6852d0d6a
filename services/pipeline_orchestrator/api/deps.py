"""The typed dependency of the orchestrator routes: the service's
:class:`~services.pipeline_orchestrator.bootstrap.OrchestratorDeps`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends

from shared.service import get_deps

if TYPE_CHECKING:  # bootstrap imports the routes to declare the service; FastAPI needs only the dependency
    from services.pipeline_orchestrator.bootstrap import OrchestratorDeps

DepsDep = Annotated["OrchestratorDeps", Depends(get_deps)]
