"""``/verification/...``: worklist, claims, case view, reads, live model performance."""

from __future__ import annotations

import time
from datetime import date
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from services.verification.api.deps import DepsDep
from services.verification.domain.cases import (
    ADJUDICATION,
    OPEN,
    display_status,
    lease_holder,
    reads_visible_to,
)
from services.verification.domain.errors import CaseNotFound
from shared.auth import Principal, ReadUser, VerifyUser
from shared.metrics import instrument

router = APIRouter(prefix="/verification", tags=["verification"])


class ReadIn(BaseModel):
    """One radiologist's read of a case."""

    model_config = ConfigDict(extra="forbid")

    label: Literal["pneumonia", "normal", "indeterminate"]
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)
    comment: str | None = Field(default=None, max_length=2000)


def _ai(case: dict[str, Any]) -> dict[str, Any]:
    s = case.get("score") or {}
    return {"status": s.get("status", "pending"), "probability": s.get("probability"),
            "threshold": s.get("threshold"), "priority": s.get("priority", "routine"),
            "model_version": s.get("model_version"), "reason": s.get("reason")}


#: What a double-reading case's lease holder is shown as to anyone else: the readers are blind to each other.
ANOTHER_READER = "another reader"


def worklist_entry(case: dict[str, Any], now: float, caller: str | None = None) -> dict[str, Any]:
    """A case as the worklist (and the workstation's *My reads*) lists it: identifiers, status, lease, AI.

    For ``caller``: ``read_by_me`` says whether they already read it (in double reading a case stays open after the
    first read, and the workstation offered it to the same reader again as their next case), and a double-reading
    case's lease holder is named only to themselves (the second reader saw the first one's user id; both found by a
    review, session 22)."""
    holder = lease_holder(case, now)
    double = case.get("mode") == "double"
    if double and holder is not None and holder != caller:
        holder = ANOTHER_READER
    return {
        "case_id": case["case_id"], "study_uid": case["study_uid"], "series_uid": case["series_uid"],
        "sop_uid": case["sop_uid"], "modality": case.get("modality"), "body_part": case.get("body_part") or None,
        "arrived_at": case.get("arrived_at"), "status": display_status(case, now),
        "lease_owner": holder, "lease_expires_at": case.get("lease_expires_at") if holder else None,
        "reads_done": len(case.get("readers") or []), "reads_required": 2 if double else 1,
        "read_by_me": caller is not None and caller in (case.get("readers") or []),
        "ai": _ai(case),
    }


@router.get("/worklist", summary="Unread and in-progress cases: priority, then AI probability, then arrival.")
async def worklist(
    deps: DepsDep,
    user: ReadUser,
    status_: Annotated[Literal["unread", "in_progress", "adjudication"] | None, Query(alias="status")] = None,
    modality: Annotated[str | None, Query(max_length=16)] = None,
    date_from: date | None = None,
    date_to: date | None = None,
    priority: Annotated[Literal["urgent", "routine"] | None, Query(
        description="only cases of this AI priority (filtered on the server, so every page is full)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=2000)] = None,
) -> dict[str, Any]:
    """One page of the worklist. ``status`` narrows to unread, in-progress or the adjudication queue."""
    now = time.time()
    partition = ADJUDICATION if status_ == "adjudication" else OPEN
    lo, hi = (date_from.isoformat() if date_from else ""), (date_to.isoformat() if date_to else "")
    mod = modality.upper() if modality else None

    def keep(c: dict[str, Any]) -> bool:
        if status_ in ("unread", "in_progress") and display_status(c, now) != status_:
            return False
        if mod and (c.get("modality") or "").upper() != mod:
            return False
        if priority and (c.get("score") or {}).get("priority", "routine") != priority:
            return False
        day = str(c.get("arrived_at", ""))[:10]
        return not (lo and day < lo or hi and day > hi)

    cases, next_cursor = await deps.verification.worklist(partition, keep, limit=limit, cursor=cursor)
    # The filter's value is the client's free text (a user may type a patient name into it): like QIDO's query
    # values it is never recorded, since audit records are logged too; only whether the list was filtered.
    await deps.rt.audit.record(user, "worklist.list", {"status": status_ or "open", "modality_filter": mod is not None,
                                                       "priority": priority}, count=len(cases))
    return {"items": [worklist_entry(c, now, user.subject) for c in cases], "next_cursor": next_cursor,
            "count": len(cases)}


@router.post("/cases/{case_id}/claim", summary="Claim a case: a time-limited lease that keeps others off it.")
async def claim(
    case_id: str, deps: DepsDep, user: VerifyUser,
    renew: Annotated[bool, Query(description="only extend the caller's own live lease: 409 when it has ended "
                                             "(released or expired), so a late renewal never claims a left case")] = False,
) -> dict[str, Any]:
    """Lease the case to the caller."""
    v = deps.verification
    cid = v.case_id(case_id)
    out = await v.claim(cid, user.subject, renew=renew)
    await deps.rt.audit.record(user, "case.claim", {"case_id": cid, "renew": renew or None})
    return out


@router.delete("/cases/{case_id}/claim", status_code=status.HTTP_204_NO_CONTENT, summary="Release your claim.")
async def release(case_id: str, deps: DepsDep, user: VerifyUser) -> Response:
    """End the caller's lease."""
    v = deps.verification
    await v.release(v.case_id(case_id), user.subject)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _visible_history(case: dict[str, Any], rows: list[dict[str, Any]], user: Principal) -> list[dict[str, Any]]:
    """Reads and labels; in double-read mode other readers' reads stay hidden until the case is decided, except
    from the adjudicator (:func:`~services.verification.domain.cases.reads_visible_to`)."""
    blind = not reads_visible_to(case, user.subject, user.roles, user.can("verify"))
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
async def case_view(case_id: str, deps: DepsDep, user: ReadUser) -> dict[str, Any]:
    """The case view. Audited: it leads to the patient's images."""
    v = deps.verification
    cid = v.case_id(case_id)
    try:
        case = await v.existing(cid)
    except CaseNotFound:
        await deps.rt.audit.record(user, "case.view", {"case_id": cid}, outcome="not_found")
        raise
    now = time.time()
    s = v.settings
    base = s.verification_gateway_base_url.rstrip("/")
    wado = f"{base}/dicomweb/studies/{case['study_uid']}/series/{case['series_uid']}/instances/{case['sop_uid']}"
    heatmap_key = (case.get("score") or {}).get("heatmap_key")
    heatmap_url = await v.heatmap_url(heatmap_key)
    rows = await v.history(cid)
    final = case.get("final")
    await deps.rt.audit.record(user, "case.view", {"case_id": cid, "study_uid": case["study_uid"]})
    return {
        **worklist_entry(case, now, user.subject),
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
    deps: DepsDep,
    user: VerifyUser,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
) -> dict[str, Any]:
    """Record the read; answers the new case status and, when a label became final, its version."""
    v = deps.verification
    cid = v.case_id(case_id)
    out, replayed = await v.read_once(cid, user.subject, body.label, body.confidence, body.comment, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:  # per reader ROLE only: never the subject or name
        instrument("radloop.verification.reads").add(1, {"role": user.role, "outcome": str(out.get("status", "read"))})
    await deps.rt.audit.record(user, "case.read", {"case_id": cid, "label_version": out.get("label_version")})
    return out


@router.get("/metrics/model-performance",
            summary="Rolling sensitivity, specificity, PPV, AUC per model version against verified labels; kappa.")
async def model_performance(
    deps: DepsDep, _user: ReadUser, model_version: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    """Live performance; a floor breach over the minimum sample publishes ModelPerformanceDegraded (once)."""
    v = deps.verification
    report = await v.performance(model_version)
    for entry in report["versions"]:
        if entry["degraded"]:
            await v.check_degradation(int(entry["model_version"]))
    return report
