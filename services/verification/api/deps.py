"""The typed dependency of the verification routes: the service's
:class:`~services.verification.bootstrap.VerificationDeps`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends

from shared.service import get_deps

if TYPE_CHECKING:  # bootstrap imports the routes to declare the service; FastAPI needs only the dependency
    from services.verification.bootstrap import VerificationDeps

DepsDep = Annotated["VerificationDeps", Depends(get_deps)]
