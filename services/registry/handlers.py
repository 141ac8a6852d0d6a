"""Event handlers of the registry service: the map from event class to handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.consumer import MessageContext
from shared.events import TrainingCompleted
from shared.service import HandlerMap

if TYPE_CHECKING:  # bootstrap imports this module to declare the service
    from services.registry.bootstrap import RegistryDeps


async def training_completed(deps: RegistryDeps, event: TrainingCompleted, _m: MessageContext) -> int | None:
    """Register the run's model package as a version (the policy may make it champion at once)."""
    return await deps.registry.on_training_completed(event)


HANDLERS: HandlerMap = {TrainingCompleted: training_completed}
