"""HTTP routes of the registry, under ``/registry`` (the entry proxy does not rewrite paths)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from services.registry.domain.card import card_markdown
from services.registry.domain.registry import Registry, RegistryError
from shared.auth import ApproveUser, Principal, ReadUser
from shared.service import ContextDep, ServiceContext

router = APIRouter(prefix="/registry", tags=["models"])


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=3, max_length=1000, description="Why; kept in the approval history.")


def _reg(ctx: ServiceContext) -> Registry:
    return ctx["registry"]  # type: ignore[no-any-return]


async def _with_package(reg: Registry, model: dict[str, Any]) -> dict[str, Any]:
    champion = await reg.champion()
    out = dict(model)
    out["champion"] = bool(champion and int(champion["version"]) == int(model["version"]))
    try:
        out["model_package"] = await reg.describe_package(model["model_package_arn"])
    except Exception as exc:  # the record is still useful when SageMaker is briefly unreachable
        out["model_package"] = {"error": f"{type(exc).__name__}"}
    return out


async def _decide(ctx: ServiceContext, principal: Principal, action: str, version: int, reason: str) -> dict[str, Any]:
    reg = _reg(ctx)
    fn = {"approve": reg.approve, "reject": reg.reject, "rollback": reg.rollback}[action]
    try:
        model = await fn(version, principal.subject, reason)
    except RegistryError as exc:
        await ctx.audit.record(principal, f"model_{action}", {"version": str(version)}, outcome=f"denied {exc.status}")
        raise HTTPException(exc.status, str(exc)) from None
    await ctx.audit.record(principal, f"model_{action}", {"version": str(version)})
    return await _with_package(reg, model)


@router.get("/models", summary="Every model version with metrics, decision and status.")
async def list_models(ctx: ContextDep, _: ReadUser) -> dict[str, Any]:
    reg = _reg(ctx)
    champion = await reg.champion()
    keys = ("version", "status", "decision", "decision_reason", "metrics", "run_id", "model_package_arn", "created_at")
    return {
        "champion": int(champion["version"]) if champion else None,
        "policy": reg.policy.as_dict(),
        "models": [{k: m.get(k) for k in keys} for m in await reg.list()],
    }


@router.get("/models/champion", summary="The champion pointer (what triage serves).")
async def get_champion(ctx: ContextDep, _: ReadUser) -> dict[str, Any]:
    champion = await _reg(ctx).champion()
    if champion is None:
        raise HTTPException(404, "there is no champion yet: no model version has been approved")
    return champion



@router.get("/models/{version}", summary="One version: metrics, lineage, approval history, SageMaker package.")
async def get_model(version: int, ctx: ContextDep, _: ReadUser) -> dict[str, Any]:
    reg = _reg(ctx)
    try:
        return await _with_package(reg, await reg.get(version))
    except RegistryError as exc:
        raise HTTPException(exc.status, str(exc)) from None


@router.get("/models/{version}/card", summary="The model card (JSON, or Markdown with ?format=md).")
async def get_card(
    version: int, ctx: ContextDep, _: ReadUser, format: str = Query("json", pattern="^(json|md)$")
) -> Any:
    try:
        card = await _reg(ctx).card(version)
    except RegistryError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    if format == "md":
        return PlainTextResponse(card_markdown(card), media_type="text/markdown")
    return card


@router.post("/models/{version}/approve", summary="Approve a pending version and make it champion (role ml).")
async def approve(version: int, body: Decision, ctx: ContextDep, principal: ApproveUser) -> dict[str, Any]:
    return await _decide(ctx, principal, "approve", version, body.reason)


@router.post("/models/{version}/reject", summary="Reject a version; it is never deployed (role ml).")
async def reject(version: int, body: Decision, ctx: ContextDep, principal: ApproveUser) -> dict[str, Any]:
    return await _decide(ctx, principal, "reject", version, body.reason)


@router.post("/models/{version}/rollback", summary="Make an earlier approved version champion again (role ml).")
async def rollback(version: int, body: Decision, ctx: ContextDep, principal: ApproveUser) -> dict[str, Any]:
    return await _decide(ctx, principal, "rollback", version, body.reason)
