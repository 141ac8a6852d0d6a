"""Wires the pipeline orchestrator service's dependencies into its context at start-up."""

from __future__ import annotations

import asyncio
import contextlib

from services.pipeline_orchestrator.domain.executors import DefinitionSource, Executor, LocalExecutor, SageMakerExecutor
from services.pipeline_orchestrator.domain.orchestrator import Orchestrator
from services.pipeline_orchestrator.settings import OrchestratorSettings
from shared.service import ServiceContext


async def startup(ctx: ServiceContext) -> None:
    """Create the orchestrator (store, executor) and start its ticker (tracking, follow-ups, schedule)."""
    settings = ctx.settings
    if not isinstance(settings, OrchestratorSettings):
        # The stand-alone worker passes base Settings: read this service's own fields from the environment.
        settings = OrchestratorSettings().model_copy(update={"service_name": settings.service_name})
    definitions = DefinitionSource(settings)
    executor: Executor = (
        SageMakerExecutor(settings, ctx.clients, definitions)
        if settings.executor == "sagemaker"
        else LocalExecutor(settings, definitions)
    )
    orch = Orchestrator(settings, ctx.clients, ctx.publisher, executor)
    ctx.extras["orchestrator"] = orch
    ctx.extras["ticker"] = asyncio.create_task(orch.run_forever(), name="orchestrator-ticker")


async def shutdown(ctx: ServiceContext) -> None:
    """Stop the ticker. Local executions keep running in their own session; the next start re-attaches."""
    task = ctx.extras.get("ticker")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
