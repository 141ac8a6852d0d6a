"""The typed dependency of the registry routes: the service's :class:`~services.registry.bootstrap.RegistryDeps`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends

from shared.service import get_deps

if TYPE_CHECKING:  # bootstrap imports the routes to declare the service; FastAPI needs only the dependency
    from services.registry.bootstrap import RegistryDeps

DepsDep = Annotated["RegistryDeps", Depends(get_deps)]
