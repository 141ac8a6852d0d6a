"""Event handlers of the verification service, and the map from event name to handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.verification.workflow import Verification
from shared import event_names as ev
from shared.consumer import Handler, MessageContext
from shared.events import InstanceScored, InstanceStored
from shared.service import ServiceContext


def handlers(ctx: ServiceContext) -> Mapping[str, Handler]:
    """Event name -> handler. Either event may arrive first; both complete the same case record."""
    v: Verification = ctx["verification"]

    async def instance_stored(event: InstanceStored, _m: MessageContext) -> dict[str, Any]:
        return await v.on_stored(event)

    async def instance_scored(event: InstanceScored, _m: MessageContext) -> dict[str, Any]:
        return await v.on_scored(event)

    return {ev.INSTANCE_STORED: instance_stored, ev.INSTANCE_SCORED: instance_scored}
