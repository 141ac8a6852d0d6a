"""Wires the triage service's dependencies into its context at start-up."""

from __future__ import annotations

import logging

import torch

from services.triage.scoring import Triage
from services.triage.settings import triage_settings
from shared.service import ServiceContext

log = logging.getLogger(__name__)


async def startup(ctx: ServiceContext) -> None:
    """Create the scorer, load the champion named by the registry's pointer (if any), start the micro-batcher."""
    settings = triage_settings(ctx.settings)
    if settings.triage_torch_threads > 0:
        torch.set_num_threads(settings.triage_torch_threads)
    triage = Triage(ctx.clients, settings, ctx.publisher)
    ctx.extras["triage"] = triage
    try:
        await triage.holder.ensure_loaded()
    except Exception:  # readiness reports it and scoring retries the load; the service itself stays up
        log.exception("champion could not be loaded at start-up")
    triage.batcher.start()
    triage.schedule_backlog()  # a restart finishes a backlog that an earlier process left (no-op without a model)


async def shutdown(ctx: ServiceContext) -> None:
    """Stop the micro-batcher after the consumer drained."""
    triage = ctx.extras.get("triage")
    if triage is not None:
        await triage.cancel_backlog()
        await triage.batcher.stop()


async def model_ready(ctx: ServiceContext) -> str | None:
    """Readiness: not ready while the registry's champion could not be loaded."""
    triage = ctx.extras.get("triage")
    if triage is None:
        return "starting"
    return triage.holder.load_error
