"""The typed dependency of the interop routes: the service's :class:`~services.interop.bootstrap.InteropDeps`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends

from shared.service import get_deps

if TYPE_CHECKING:  # bootstrap imports the routes to declare the service; FastAPI needs only the dependency
    from services.interop.bootstrap import InteropDeps

DepsDep = Annotated["InteropDeps", Depends(get_deps)]
