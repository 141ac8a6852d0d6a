"""HTTP routes of the registry, under ``/registry`` (the entry proxy does not rewrite paths).

Errors are :class:`~shared.exceptions.DomainError` subclasses raised by the service (404 unknown version, 409
conflicting decision); shared code turns them into ``{"detail": ...}`` responses.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from services.registry.api.deps import DepsDep
from services.registry.domain.card import card_markdown
from services.registry.domain.errors import RegistryError
from services.registry.service import Registry
from shared.auth import ApproveUser, Principal, ReadUser
from shared.exceptions import NotFoundError

router = APIRouter(prefix="/registry", tags=["models"])


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=3, max_length=1000, description="Why; kept in the approval history.")


async def _with_package(reg: Registry, model: dict[str, Any]) -> dict[str, Any]:
    champion = await reg.champion()
    out = dict(model)
    out["champion"] = bool(champion and champion.version == int(model["version"]))
    try:
        out["model_package"] = await reg.describe_package(model["model_package_arn"])
    except Exception as exc:  # the record is still useful when SageMaker is briefly unreachable
        out["model_package"] = {"error": f"{type(exc).__name__}"}
    return out


async def _decide(deps: DepsDep, principal: Principal, action: str, version: int, reason: str) -> dict[str, Any]:
    reg = deps.registry
    fn = {"approve": reg.approve, "reject": reg.reject, "rollback": reg.rollback}[action]
    try:
        model = await fn(version, principal.subject, reason)
    except RegistryError as exc:  # audited as denied, then answered by the one DomainError mapping
        await deps.rt.audit.record(principal, f"model_{action}", {"version": str(version)},
                                   outcome=f"denied {exc.status}")
        raise
    await deps.rt.audit.record(principal, f"model_{action}", {"version": str(version)})
    return await _with_package(reg, model)


@router.get("/models", summary="Every model version with metrics, decision and status.")
async def list_models(deps: DepsDep, _: ReadUser) -> dict[str, Any]:
    reg = deps.registry
    champion = await reg.champion()
    keys = ("version", "status", "decision", "decision_reason", "metrics", "run_id", "model_package_arn", "created_at")
    return {
        "champion": champion.version if champion else None,
        "policy": reg.policy.as_dict(),
        "models": [{k: m.get(k) for k in keys} for m in await reg.list()],
    }


@router.get("/models/champion", summary="The champion pointer (what triage serves).")
async def get_champion(deps: DepsDep, _: ReadUser) -> dict[str, Any]:
    champion = await deps.registry.champion()
    if champion is None:
        raise NotFoundError("there is no champion yet: no model version has been approved")
    return {k: v for k, v in champion.to_record().items() if v is not None}


@router.get("/models/{version}", summary="One version: metrics, lineage, approval history, SageMaker package.")
async def get_model(version: int, deps: DepsDep, _: ReadUser) -> dict[str, Any]:
    return await _with_package(deps.registry, await deps.registry.get(version))


@router.get("/models/{version}/card", summary="The model card (JSON, or Markdown with ?format=md).")
async def get_card(
    version: int, deps: DepsDep, _: ReadUser, format: str = Query("json", pattern="^(json|md)$")
) -> Any:
    card = await deps.registry.card(version)
    if format == "md":
        return PlainTextResponse(card_markdown(card), media_type="text/markdown")
    return card


@router.post("/models/{version}/approve", summary="Approve a pending version and make it champion (role ml).")
async def approve(version: int, body: Decision, deps: DepsDep, principal: ApproveUser) -> dict[str, Any]:
    return await _decide(deps, principal, "approve", version, body.reason)


@router.post("/models/{version}/reject", summary="Reject a version; it is never deployed (role ml).")
async def reject(version: int, body: Decision, deps: DepsDep, principal: ApproveUser) -> dict[str, Any]:
    return await _decide(deps, principal, "reject", version, body.reason)


@router.post("/models/{version}/rollback", summary="Make an earlier approved version champion again (role ml).")
async def rollback(version: int, body: Decision, deps: DepsDep, principal: ApproveUser) -> dict[str, Any]:
    return await _decide(deps, principal, "rollback", version, body.reason)
