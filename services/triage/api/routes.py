"""``/triage/model`` (what is loaded) and on-request heatmaps."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError
from fastapi import APIRouter, HTTPException, status

from services.triage.scoring import Triage
from shared.auth import ReadUser
from shared.service import ContextDep
from shared.uids import validate_uid

router = APIRouter(prefix="/triage", tags=["triage"])


@router.get("/model", summary="The champion model in memory, the precision it runs in and batching statistics.")
async def model_status(ctx: ContextDep, _user: ReadUser) -> dict[str, Any]:
    """What the service scores with now (None before the first approval)."""
    triage: Triage = ctx["triage"]
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
async def heatmap_on_request(study: str, series: str, sop: str, ctx: ContextDep, user: ReadUser) -> dict[str, Any]:
    """Render the heatmap of one instance with the current champion and store it; returns its key."""
    for what, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop)):
        try:
            validate_uid(uid, what=what)
        except ValueError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    triage: Triage = ctx["triage"]
    model = triage.holder.current
    if model is None:
        raise HTTPException(status.HTTP_409_CONFLICT, "no approved model is loaded, so no heatmap can be computed")
    try:
        frame = await triage.read_frame(study, series, sop)
    except ClientError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"instance {sop} has no stored frame 1") from None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    key = await triage.write_heatmap(study, series, sop, model, frame)
    await ctx.audit.record(user, "heatmap.create", {"sop_uid": sop, "model_version": model.version})
    return {"heatmap_key": key, "model_version": model.version}
