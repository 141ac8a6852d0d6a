"""Event handlers of the triage service, and the map from event name to handler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.triage.scoring import Triage
from shared import event_names as ev
from shared.consumer import Handler, MessageContext
from shared.events import ImageVerified, InstanceStored, ModelApproved
from shared.service import ServiceContext


def handlers(ctx: ServiceContext) -> Mapping[str, Handler]:
    """Event name -> handler. The whole event-driven behaviour of the service is listed here."""
    triage: Triage = ctx["triage"]

    async def instance_stored(event: InstanceStored, _m: MessageContext) -> dict[str, Any]:
        return await triage.on_instance_stored(event)

    async def model_approved(event: ModelApproved, _m: MessageContext) -> dict[str, Any]:
        model = await triage.holder.on_approved(event.version, event.model_artifact_uri, event.threshold,
                                                event.model_package_arn)
        triage.schedule_backlog()  # images that arrived before any model get this one's score
        return {"model_version": model.version}

    async def image_verified(event: ImageVerified, _m: MessageContext) -> dict[str, Any]:
        return await triage.on_verified(event)

    return {ev.INSTANCE_STORED: instance_stored, ev.MODEL_APPROVED: model_approved, ev.IMAGE_VERIFIED: image_verified}
