"""The verification service's declaration (:data:`SPEC`) and its start-up: the workflow and its outbox sweeper."""

from __future__ import annotations

from dataclasses import dataclass

from services.verification import SERVICE
from services.verification.api.imports import router as imports_router
from services.verification.api.routes import router
from services.verification.api.workstation import router as workstation_router
from services.verification.handlers import HANDLERS
from services.verification.service import Verification
from services.verification.settings import VerificationSettings
from shared.service import Runtime, ServiceSpec


@dataclass
class VerificationDeps:
    """What the handlers and routes of the verification service use."""

    rt: Runtime[VerificationSettings]
    verification: Verification


async def startup(rt: Runtime[VerificationSettings]) -> VerificationDeps:
    """Create the workflow (case store, publisher, idempotency) and start its outbox sweeper."""
    v = Verification(rt.clients, rt.settings, rt.publisher, rt.idempotency)
    v.start()
    return VerificationDeps(rt=rt, verification=v)


async def shutdown(deps: VerificationDeps) -> None:
    """Stop the sweeper and the checks in flight after the consumer drained."""
    await deps.verification.stop()


SPEC: ServiceSpec[VerificationSettings, VerificationDeps] = ServiceSpec(
    name=SERVICE,
    title="radloop verification",
    description="Worklist, claims, reads (single and double with adjudication), live model performance.",
    settings=VerificationSettings,
    startup=startup,
    shutdown=shutdown,
    routers=[router, imports_router, workstation_router],
    handlers=HANDLERS,
)
