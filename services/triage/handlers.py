"""Event handlers of the triage service: each delegates to :class:`~services.triage.service.Triage`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.consumer import MessageContext
from shared.events import ImageVerified, InstanceStored, ModelApproved
from shared.service import HandlerMap

if TYPE_CHECKING:  # bootstrap imports this module to declare the service
    from services.triage.bootstrap import TriageDeps


async def instance_stored(deps: TriageDeps, event: InstanceStored, _m: MessageContext) -> dict[str, Any]:
    """Score the stored instance (or record why not)."""
    return await deps.triage.on_instance_stored(event)


async def model_approved(deps: TriageDeps, event: ModelApproved, _m: MessageContext) -> dict[str, Any]:
    """Hot-swap to the approved model and score the backlog."""
    return await deps.triage.on_model_approved(event)


async def image_verified(deps: TriageDeps, event: ImageVerified, _m: MessageContext) -> dict[str, Any]:
    """A read image leaves the backlog."""
    return await deps.triage.on_verified(event)


HANDLERS: HandlerMap = {InstanceStored: instance_stored, ModelApproved: model_approved, ImageVerified: image_verified}
