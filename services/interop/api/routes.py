"""HTTP routes of the interop service: what it has done (counters), for operators (the admin role)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.interop.api.deps import DepsDep
from shared.auth import AdminUser

router = APIRouter(prefix="/interop", tags=["interop"])


@router.get("/status", summary="Forwarding and Query/Retrieve counters of this process.")
async def status(deps: DepsDep, _: AdminUser) -> dict[str, Any]:
    """Counters only (no identifiers): forwarded, failed and dead-lettered sends, and SCP operations."""
    return {
        "forwarding": dict(deps.forwarder.stats),
        "destinations": [d.name for d in deps.rt.settings.interop_destinations],
        "qr": dict(deps.qr_scp.stats) if deps.qr_scp is not None else None,
    }
