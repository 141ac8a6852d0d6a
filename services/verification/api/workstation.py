"""``GET /verification/my-reads``: the caller's own final reads, so the workstation can offer to amend them.

A router of its own (in ``SPEC.routers`` next to ``routes.router``) because only the workstation uses it; the
amendment itself is an ordinary ``POST /verification/cases/{id}/reads`` by the reader whose read made the label final.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query

from services.verification.api.deps import DepsDep
from services.verification.api.routes import worklist_entry
from shared.auth import VerifyUser

router = APIRouter(prefix="/verification", tags=["verification"])


@router.get("/my-reads", summary="Final labels the caller decided (theirs to amend), most recent first.")
async def my_reads(deps: DepsDep, user: VerifyUser,
                   limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
    """The caller's final reads, newest first (at most ``limit``; scans at most 5000 final cases)."""
    now = time.time()
    cases = await deps.verification.my_reads(user.subject, limit=limit)
    items = []
    for c in cases:
        final = c.get("final") or {}
        items.append({**worklist_entry(c, now, user.subject), "final_label": {k: final.get(k) for k in
                                                       ("label", "version", "resolution", "excluded", "at")}})
    await deps.rt.audit.record(user, "worklist.my_reads", {}, count=len(items))
    return {"items": items, "count": len(items)}
