"""Event handlers of the interop service: each delegates to :class:`~services.interop.service.Results` or
:class:`~services.interop.service.Forwarder`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.consumer import MessageContext
from shared.events import ImageVerified, InstanceScored, InstanceStored
from shared.service import HandlerMap

if TYPE_CHECKING:  # bootstrap imports this module to declare the service
    from services.interop.bootstrap import InteropDeps


async def instance_scored(deps: InteropDeps, event: InstanceScored, _m: MessageContext) -> dict[str, Any]:
    """The AI SR (and the Grad-CAM SEG) of a scored image."""
    return await deps.results.on_scored(event)


async def image_verified(deps: InteropDeps, event: ImageVerified, _m: MessageContext) -> dict[str, Any]:
    """The SR of a final read."""
    return await deps.results.on_verified(event)


async def instance_stored(deps: InteropDeps, event: InstanceStored, m: MessageContext) -> dict[str, Any]:
    """A stored result, forwarded to the configured destinations (anything else is skipped at once)."""
    return await deps.forwarder.on_stored(event, m)


HANDLERS: HandlerMap = {InstanceScored: instance_scored, ImageVerified: image_verified,
                        InstanceStored: instance_stored}
