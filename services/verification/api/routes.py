"""``/verification/...``: worklist, claims, case view, reads, live model performance."""

from __future__ import annotations

import time
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, HTTPException, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from services.verification.domain.cases import ADJUDICATION, FINAL, OPEN, display_status, lease_holder
from services.verification.domain.errors import CaseConflict, CaseNotFound, InvalidRead
from services.verification.store import decode_cursor, encode_cursor
from services.verification.workflow import Verification
from shared.auth import Principal, ReadUser, VerifyUser
from shared.exceptions import IdempotencyInProgressError, IdempotencyPayloadMismatchError
from shared.service import ContextDep, ServiceContext
from shared.uids import validate_uid

router = APIRouter(prefix="/verification", tags=["verification"])


class ReadIn(BaseModel):
    """One radiologist's read of a case."""

    model_config = ConfigDict(extra="forbid")

    label: Literal["pneumonia", "normal", "indeterminate"]
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    comment: str | None = Field(default=None, max_length=2000)


def _v(ctx: ServiceContext) -> Verification:
    return ctx["verification"]  # type: ignore[no-any-return]


def _case_id(case_id: str) -> str:
    try:
        return validate_uid(case_id, what="case id (SOP Instance UID)")
    except ValueError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such case: {exc}") from None


def _http(exc: Exception) -> HTTPException:
    if isinstance(exc, CaseNotFound):
        return HTTPException(status.HTTP_404_NOT_FOUND, str(exc))
    if isinstance(exc, CaseConflict):
        return HTTPException(status.HTTP_409_CONFLICT, str(exc))
    if isinstance(exc, InvalidRead):
        return HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc))
    raise exc


def _ai(case: dict[str, Any]) -> dict[str, Any]:
    s = case.get("score") or {}
    return {"status": s.get("status", "pending"), "probability": s.get("probability"),
            "threshold": s.get("threshold"), "priority": s.get("priority", "routine"),
            "model_version": s.get("model_version"), "reason": s.get("reason")}


def _entry(case: dict[str, Any], now: float) -> dict[str, Any]:
    return {
        "case_id": case["case_id"], "study_uid": case["study_uid"], "series_uid": case["series_uid"],
        "sop_uid": case["sop_uid"], "modality": case.get("modality"), "body_part": case.get("body_part") or None,
        "arrived_at": case.get("arrived_at"), "status": display_status(case, now),
        "lease_owner": lease_holder(case, now), "lease_expires_at": case.get("lease_expires_at")
        if lease_holder(case, now) else None,
        "reads_done": len(case.get("readers") or []), "reads_required": 2 if case.get("mode") == "double" else 1,
        "ai": _ai(case),
    }


@router.get("/worklist", summary="Unread and in-progress cases: priority, then AI probability, then arrival.")
async def worklist(
    ctx: ContextDep,
    user: ReadUser,
    status_: Annotated[Literal["unread", "in_progress", "adjudication"] | None, Query(alias="status")] = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> dict[str, Any]:
    """One page of the worklist. ``status`` narrows to unread, in-progress or the adjudication queue."""
    v = _v(ctx)
    now = time.time()
    partition = ADJUDICATION if status_ == "adjudication" else OPEN
    try:
        start = decode_cursor(cursor) if cursor else None
    except ValueError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    if start and start["status"]["S"] != partition:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "cursor belongs to another status filter")
    lo, hi = (date_from.isoformat() if date_from else ""), (date_to.isoformat() if date_to else "")
    mod = modality.upper() if modality else None

    def keep(c: dict[str, Any]) -> bool:
        if status_ in ("unread", "in_progress") and display_status(c, now) != status_:
            return False
        if mod and (c.get("modality") or "").upper() != mod:
            return False
        day = str(c.get("arrived_at", ""))[:10]
        return not (lo and day < lo or hi and day > hi)

    cases, next_key = await v.store.worklist_page(partition, start=start, keep=keep, limit=limit)
    await ctx.audit.record(user, "worklist.list", {"status": status_ or "open", "modality": mod},
                           count=len(cases))
    return {"items": [_entry(c, now) for c in cases], "next_cursor": encode_cursor(next_key), "count": len(cases)}


@router.post("/cases/{case_id}/claim", summary="Claim a case: a time-limited lease that keeps others off it.")
async def claim(case_id: str, ctx: ContextDep, user: VerifyUser) -> dict[str, Any]:
    cid = _case_id(case_id)
    try:
        out = await _v(ctx).claim(cid, user.subject)
    except (CaseNotFound, CaseConflict) as exc:
        raise _http(exc) from None
    await ctx.audit.record(user, "case.claim", {"case_id": cid})
    return out


@router.delete("/cases/{case_id}/claim", status_code=status.HTTP_204_NO_CONTENT, summary="Release your claim.")
async def release(case_id: str, ctx: ContextDep, user: VerifyUser) -> Response:
    cid = _case_id(case_id)
    try:
        await _v(ctx).release(cid, user.subject)
    except (CaseNotFound, CaseConflict) as exc:
        raise _http(exc) from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _visible_history(case: dict[str, Any], rows: list[dict[str, Any]], user: Principal) -> list[dict[str, Any]]:
    """Reads and labels; in double-read mode other readers' reads stay hidden until the case is decided."""
    blind = case.get("mode") == "double" and case.get("status") != FINAL and "admin" not in user.roles
    out = []
    for r in rows:
        if r.get("kind") == "read":
            entry = {k: r.get(k) for k in ("read_no", "read_kind", "reader", "label", "confidence", "comment", "at")}
            if blind and r.get("reader") != user.subject:
                entry.update(label=None, confidence=None, comment=None, hidden=True)
            out.append({"type": "read", **entry})
        else:
            out.append({"type": "label", **{k: r.get(k) for k in ("version", "label", "resolution", "readers",
                                                                 "decided_by", "excluded", "at")}})
    return out


@router.get("/cases/{case_id}", summary="A case: identifiers, AI score, heatmap and viewer URLs, read history.")
async def case_view(case_id: str, ctx: ContextDep, user: ReadUser) -> dict[str, Any]:
    """The case view. Audited: it leads to the patient's images."""
    cid = _case_id(case_id)
    v = _v(ctx)
    try:
        case = await v.existing(cid)
    except CaseNotFound as exc:
        await ctx.audit.record(user, "case.view", {"case_id": cid}, outcome="not_found")
        raise _http(exc) from None
    now = time.time()
    s = v.settings
    base = s.verification_gateway_base_url.rstrip("/")
    wado = f"{base}/dicomweb/studies/{case['study_uid']}/series/{case['series_uid']}/instances/{case['sop_uid']}"
    heatmap_key = (case.get("score") or {}).get("heatmap_key")
    heatmap_url = None
    if heatmap_key:
        s3 = await ctx.clients.s3()
        heatmap_url = await s3.generate_presigned_url(
            "get_object", Params={"Bucket": s.topology.bucket("images"), "Key": heatmap_key},
            ExpiresIn=s.verification_heatmap_url_ttl_s)
    rows = await v.store.history(cid)
    final = case.get("final")
    await ctx.audit.record(user, "case.view", {"case_id": cid, "study_uid": case["study_uid"]})
    return {
        **_entry(case, now),
        "workflow_status": case.get("status"),
        "read_mode": case.get("mode"),
        "ai": {**_ai(case), "heatmap_key": heatmap_key, "heatmap_url": heatmap_url},
        "viewer": {"wado_rs": wado, "metadata": f"{wado}/metadata", "frame": f"{wado}/frames/1",
                   "rendered": f"{wado}/rendered"},
        "final_label": None if not final else {k: final.get(k) for k in
                                               ("label", "version", "resolution", "excluded", "at")},
        "history": _visible_history(case, rows, user),
    }


@router.post("/cases/{case_id}/reads", summary="Submit a read (radiologist). Idempotency-Key makes retries safe.")
async def submit_read(
    case_id: str,
    body: ReadIn,
    ctx: ContextDep,
    user: VerifyUser,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> dict[str, Any]:
    """Record the read; answers the new case status and, when a label became final, its version."""
    cid = _case_id(case_id)
    v = _v(ctx)

    async def run() -> dict[str, Any]:
        return await v.read(cid, user.subject, body.label, body.confidence, body.comment)

    try:
        if idempotency_key:
            payload = {"case_id": cid, **body.model_dump()}
            out, ran = await ctx.idempotency.run(f"verification:read:{user.subject}:{idempotency_key}", payload, run)
            if not ran:
                response.headers["Idempotent-Replayed"] = "true"
        else:
            out = await run()
    except IdempotencyPayloadMismatchError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY,
                            f"Idempotency-Key {idempotency_key!r} was already used for a different read") from None
    except IdempotencyInProgressError:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"a read with Idempotency-Key {idempotency_key!r} is still being processed") from None
    except (CaseNotFound, CaseConflict, InvalidRead) as exc:
        raise _http(exc) from None
    await ctx.audit.record(user, "case.read", {"case_id": cid, "label_version": out.get("label_version")})
    return out  # type: ignore[no-any-return]


@router.get("/metrics/model-performance",
            summary="Rolling sensitivity, specificity, PPV, AUC per model version against verified labels; kappa.")
async def model_performance(
    ctx: ContextDep, _user: ReadUser, model_version: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    """Live performance; a floor breach over the minimum sample publishes ModelPerformanceDegraded (once)."""
    v = _v(ctx)
    report = await v.performance(model_version)
    for entry in report["versions"]:
        if entry["degraded"]:
            await v.check_degradation(int(entry["model_version"]))
    return report
