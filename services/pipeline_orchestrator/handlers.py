"""Event handlers of the pipeline orchestrator service, and the map from event name to handler."""

from __future__ import annotations

from collections.abc import Mapping

from services.pipeline_orchestrator.domain.orchestrator import Orchestrator
from shared import event_names as ev
from shared.consumer import Handler, MessageContext
from shared.events import ImageVerified, ModelPerformanceDegraded
from shared.service import ServiceContext


def handlers(ctx: ServiceContext) -> Mapping[str, Handler]:
    """Event name -> handler. The whole event-driven behaviour of the service is listed here."""

    async def image_verified(event: ImageVerified, _: MessageContext) -> None:
        orch: Orchestrator = ctx["orchestrator"]
        await orch.on_image_verified(event)

    async def performance_degraded(event: ModelPerformanceDegraded, _: MessageContext) -> None:
        orch: Orchestrator = ctx["orchestrator"]
        await orch.on_degraded(event)

    return {ev.IMAGE_VERIFIED: image_verified, ev.MODEL_PERFORMANCE_DEGRADED: performance_degraded}
