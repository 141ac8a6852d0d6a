"""The pipeline orchestrator's declaration (:data:`SPEC`) and its start-up: the orchestrator and its ticker."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from services.pipeline_orchestrator import SERVICE
from services.pipeline_orchestrator.adapters.executors import (
    DefinitionSource,
    Executor,
    LocalExecutor,
    SageMakerExecutor,
)
from services.pipeline_orchestrator.api.routes import router
from services.pipeline_orchestrator.handlers import HANDLERS
from services.pipeline_orchestrator.service import Orchestrator
from services.pipeline_orchestrator.settings import OrchestratorSettings
from shared.approval import ApprovalPolicy, refuse_removed_variables
from shared.service import Runtime, ServiceSpec


@dataclass
class OrchestratorDeps:
    """What the handlers and routes of the orchestrator use, and the ticker task (tracking, follow-ups, schedule)."""

    rt: Runtime[OrchestratorSettings]
    orchestrator: Orchestrator
    ticker: asyncio.Task[None]


async def startup(rt: Runtime[OrchestratorSettings]) -> OrchestratorDeps:
    """Load the approval policy (a bad document stops start-up), create the orchestrator (store, executor) and start
    its ticker."""
    settings = rt.settings
    refuse_removed_variables()
    approval = ApprovalPolicy.load(settings.approval_policy_file)
    definitions = DefinitionSource(settings)
    executor: Executor = (
        SageMakerExecutor(settings, rt.clients, definitions)
        if settings.executor == "sagemaker"
        else LocalExecutor(settings, definitions)
    )
    orch = Orchestrator(settings, rt.clients, rt.publisher, executor, approval)
    ticker = asyncio.create_task(orch.run_forever(), name="orchestrator-ticker")
    return OrchestratorDeps(rt=rt, orchestrator=orch, ticker=ticker)


async def shutdown(deps: OrchestratorDeps) -> None:
    """Stop the ticker. Local executions keep running in their own session; the next start re-attaches."""
    deps.ticker.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await deps.ticker


async def ticker_alive(deps: OrchestratorDeps) -> str | None:
    """Readiness: not ready once the ticker has stopped (no run would be tracked or started)."""
    return "orchestrator ticker stopped" if deps.ticker.done() else None


SPEC: ServiceSpec[OrchestratorSettings, OrchestratorDeps] = ServiceSpec(
    name=SERVICE,
    title="radloop pipeline orchestrator",
    description="Retraining policy, dataset snapshots, pipeline executions.",
    settings=OrchestratorSettings,
    startup=startup,
    shutdown=shutdown,
    routers=[router],
    handlers=HANDLERS,
    readiness=[ticker_alive],
)
