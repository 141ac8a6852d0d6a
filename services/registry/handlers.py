"""Event handlers of the registry service, and the map from event name to handler."""

from __future__ import annotations

from collections.abc import Mapping

from shared.consumer import Handler
from shared.service import ServiceContext


def handlers(ctx: ServiceContext) -> Mapping[str, Handler]:
    """Event name -> handler. The whole event-driven behaviour of the service is listed here."""
    return {}
