"""Event handlers of the verification service: either event may arrive first; both complete the same case."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.consumer import MessageContext
from shared.events import InstanceScored, InstanceStored
from shared.service import HandlerMap

if TYPE_CHECKING:  # bootstrap imports this module to declare the service
    from services.verification.bootstrap import VerificationDeps


async def instance_stored(deps: VerificationDeps, event: InstanceStored, _m: MessageContext) -> dict[str, Any]:
    """Create (or complete) the case of the stored instance."""
    return await deps.verification.on_stored(event)


async def instance_scored(deps: VerificationDeps, event: InstanceScored, _m: MessageContext) -> dict[str, Any]:
    """Attach the AI score to the case."""
    return await deps.verification.on_scored(event)


HANDLERS: HandlerMap = {InstanceStored: instance_stored, InstanceScored: instance_scored}
