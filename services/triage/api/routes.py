"""``/triage/model`` (what is loaded) and on-request heatmaps."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from services.triage.api.deps import DepsDep
from shared.auth import ReadUser

router = APIRouter(prefix="/triage", tags=["triage"])


@router.get("/model", summary="The champion model in memory, the precision it runs in and batching statistics.")
async def model_status(deps: DepsDep, _user: ReadUser) -> dict[str, Any]:
    """What the service scores with now (None before the first approval)."""
    triage = deps.triage
    m = triage.holder.current
    b = triage.batcher.stats
    return {
        "model_version": m.version if m else None,
        "threshold": m.threshold if m else None,
        "precision": m.precision if m else None,
        "input_size": m.input_size if m else None,
        "probe": m.probe if m else {},
        "load_error": triage.holder.load_error,
        "swaps": triage.holder.swaps,
        "scored": triage.scored,
        "batches": {"count": b.batches, "items": b.items, "largest": b.largest,
                    "mean_size": round(b.items / b.batches, 2) if b.batches else 0.0,
                    "forward_s": round(b.forward_s, 3)},
    }


@router.post("/studies/{study}/series/{series}/instances/{sop}/heatmap", status_code=status.HTTP_201_CREATED,
             summary="Compute a Grad-CAM heatmap on request (for an image the model did not call positive).")
async def heatmap_on_request(study: str, series: str, sop: str, deps: DepsDep, user: ReadUser) -> dict[str, Any]:
    """Render the heatmap of one instance with the current champion and store it; returns its key."""
    key, model = await deps.triage.heatmap_on_request(study, series, sop)
    await deps.rt.audit.record(user, "heatmap.create", {"sop_uid": sop, "model_version": model.version})
    return {"heatmap_key": key, "model_version": model.version}
