"""HTTP routes of the orchestrator, under ``/orchestrator`` (the entry proxy does not rewrite paths).

Errors are :class:`~shared.exceptions.DomainError` subclasses, answered as ``{"detail": ...}`` by shared code.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.pipeline_orchestrator.api.deps import DepsDep
from services.pipeline_orchestrator.service import COMPARISONS, OVERRIDABLE
from shared.auth import ApproveUser, ReadUser
from shared.exceptions import ConflictError, NotFoundError

router = APIRouter(prefix="/orchestrator", tags=["trainings"])
RUN_ID = re.compile(r"^run-[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


class TrainingRequest(BaseModel):
    """A manual trigger. ``force`` re-runs an unchanged manifest (for example with other parameters)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500)
    force: bool = False
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("parameters")
    @classmethod
    def _known(cls, v: dict[str, Any]) -> dict[str, Any]:
        for k, val in v.items():
            if k not in OVERRIDABLE:
                raise ValueError(f"parameter {k!r} cannot be overridden; choose from {', '.join(sorted(OVERRIDABLE))}")
            try:
                OVERRIDABLE[k](val)
            except (TypeError, ValueError):
                raise ValueError(f"parameter {k}={val!r} is not a valid {OVERRIDABLE[k].__name__}") from None
            if k == "Comparison" and val not in COMPARISONS:
                raise ValueError(f"parameter Comparison must be one of {', '.join(COMPARISONS)}")
        return v


def _summary(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("run_id", "status", "trigger", "executor", "manifest_sha256", "label_count", "label_counts",
            "created_at", "ended_at", "failure_reason", "metrics", "champion_version", "locked_set")
    return {k: run.get(k) for k in keys}


def _detail(run: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in run.items() if k not in ("pid", "status_file", "log_file")}
    steps = []
    for s in run.get("steps") or []:
        s = dict(s)
        s["log_tail"] = (s.get("log_tail") or "")[-2000:]
        steps.append(s)
    out["steps"] = steps
    return out


@router.get("/trainings", summary="Pipeline runs, newest first, with the trigger state.")
async def list_trainings(deps: DepsDep, _: ReadUser) -> dict[str, Any]:
    orch = deps.orchestrator
    state = await orch.store.state()
    runs = await orch.store.list_runs()
    p = orch.policy
    return {
        "runs": [_summary(r) for r in runs],
        "active_run": state.get("active_run"),
        "pending": state.get("pending"),
        "new_labels": orch.store.new_counts(state),
        "last_snapshot_sha": state.get("last_snapshot_sha"),
        "policy": {"min_new_labels": p.min_new_labels, "min_per_class": p.min_per_class,
                   "schedule_s": p.schedule_s, "cooldown_s": p.cooldown_s},
    }


@router.get("/trainings/{run_id}", summary="One run: parameters, per-step status, timings and log tail.")
async def get_training(run_id: str, deps: DepsDep, _: ReadUser) -> dict[str, Any]:
    run = await deps.orchestrator.store.get_run(run_id) if RUN_ID.match(run_id) else None
    if run is None:
        raise NotFoundError(f"training run {run_id!r} does not exist")
    return _detail(run)


@router.post("/trainings", summary="Trigger a run by hand (role ml). Coalesces if one is running.")
async def trigger_training(
    deps: DepsDep, principal: ApproveUser, response: Response, body: TrainingRequest | None = None
) -> dict[str, Any]:
    body = body or TrainingRequest()
    result = await deps.orchestrator.request("manual", force=body.force, overrides=body.parameters,
                                             requested_by=principal.subject)
    await deps.rt.audit.record(
        principal, "trigger_training", {"run_id": result.get("run_id", "")}, outcome=result["outcome"]
    )
    if result["outcome"] in ("empty", "no_locked_set"):
        raise ConflictError(result["detail"])
    response.status_code = status.HTTP_200_OK if result["outcome"] == "unchanged" else status.HTTP_202_ACCEPTED
    return result
