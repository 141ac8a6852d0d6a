"""Event handlers of the registry service, and the map from event name to handler."""

from __future__ import annotations

from collections.abc import Mapping

from services.registry.domain.registry import Registry
from shared import event_names as ev
from shared.consumer import Handler, MessageContext
from shared.events import TrainingCompleted
from shared.service import ServiceContext


def handlers(ctx: ServiceContext) -> Mapping[str, Handler]:
    """Event name -> handler. The whole event-driven behaviour of the service is listed here."""

    async def training_completed(event: TrainingCompleted, _: MessageContext) -> None:
        registry: Registry = ctx["registry"]
        await registry.on_training_completed(event)

    return {ev.TRAINING_COMPLETED: training_completed}
