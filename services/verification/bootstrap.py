"""Wires the verification service's dependencies into its context at start-up."""

from __future__ import annotations

from shared.service import ServiceContext


async def startup(ctx: ServiceContext) -> None:
    """Create the service's stores and put them into ``ctx.extras``."""
