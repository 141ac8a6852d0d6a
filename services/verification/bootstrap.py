"""Wires the verification service's dependencies into its context at start-up."""

from __future__ import annotations

from services.verification.settings import verification_settings
from services.verification.workflow import Verification
from shared.service import ServiceContext


async def startup(ctx: ServiceContext) -> None:
    """Create the workflow (case store, publisher) and start its outbox sweeper."""
    v = Verification(ctx.clients, verification_settings(ctx.settings), ctx.publisher)
    ctx.extras["verification"] = v
    v.start()


async def shutdown(ctx: ServiceContext) -> None:
    v = ctx.extras.get("verification")
    if v is not None:
        await v.stop()
