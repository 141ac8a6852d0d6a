"""The triage service's declaration (:data:`SPEC`) and its start-up: the scorer, the champion, the micro-batcher."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from services.triage import SERVICE
from services.triage.api.routes import router
from services.triage.handlers import HANDLERS
from services.triage.service import Triage
from services.triage.settings import TriageSettings
from shared.service import Runtime, ServiceSpec

log = logging.getLogger(__name__)


@dataclass
class TriageDeps:
    """What the handlers and routes of the triage service use."""

    rt: Runtime[TriageSettings]
    triage: Triage


async def startup(rt: Runtime[TriageSettings]) -> TriageDeps:
    """Create the scorer, load the champion named by the registry's pointer (if any), start the micro-batcher."""
    settings = rt.settings
    if settings.triage_torch_threads > 0:
        torch.set_num_threads(settings.triage_torch_threads)
    triage = Triage(rt.clients, settings, rt.publisher)
    try:
        await triage.holder.ensure_loaded()
    except Exception:  # readiness reports it and scoring retries the load; the service itself stays up
        log.exception("champion could not be loaded at start-up")
    triage.batcher.start()
    triage.schedule_backlog()  # a restart finishes a backlog that an earlier process left (no-op without a model)
    triage.schedule_rescore()  # and a re-scoring pass that an earlier process left unfinished
    return TriageDeps(rt=rt, triage=triage)


async def shutdown(deps: TriageDeps) -> None:
    """Stop the backlog and the micro-batcher after the consumer drained."""
    await deps.triage.cancel_backlog()
    await deps.triage.batcher.stop()


async def model_ready(deps: TriageDeps) -> str | None:
    """Readiness: not ready while the registry's champion could not be loaded."""
    return deps.triage.holder.load_error


SPEC: ServiceSpec[TriageSettings, TriageDeps] = ServiceSpec(
    name=SERVICE,
    title="radloop triage",
    description="Scores stored chest radiographs with the approved model (micro-batched, hot-swapped) and renders "
                "Grad-CAM heatmaps.",
    settings=TriageSettings,
    startup=startup,
    shutdown=shutdown,
    routers=[router],
    handlers=HANDLERS,
    readiness=[model_ready],
    # enough messages in flight for micro-batches to fill
    consumer_options=lambda s: {"concurrency": s.triage_concurrency},
)
