"""The typed dependency of the triage routes: the service's :class:`~services.triage.bootstrap.TriageDeps`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends

from shared.service import get_deps

if TYPE_CHECKING:  # bootstrap imports the routes to declare the service; FastAPI needs only the dependency
    from services.triage.bootstrap import TriageDeps

DepsDep = Annotated["TriageDeps", Depends(get_deps)]
