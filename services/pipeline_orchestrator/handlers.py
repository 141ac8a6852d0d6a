"""Event handlers of the pipeline orchestrator: the map from event class to handler."""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared.consumer import MessageContext
from shared.events import DriftDetected, ImageVerified, ModelPerformanceDegraded
from shared.service import HandlerMap

if TYPE_CHECKING:  # bootstrap imports this module to declare the service
    from services.pipeline_orchestrator.bootstrap import OrchestratorDeps


async def image_verified(deps: OrchestratorDeps, event: ImageVerified, _m: MessageContext) -> None:
    """Project the final label; the label-count policy may start a run."""
    await deps.orchestrator.on_image_verified(event)


async def performance_degraded(deps: OrchestratorDeps, event: ModelPerformanceDegraded, _m: MessageContext) -> None:
    """Request a run (subject to the cooldown and single-flight) when so configured."""
    await deps.orchestrator.on_degraded(event)


async def drift_detected(deps: OrchestratorDeps, event: DriftDetected, _m: MessageContext) -> None:
    """Drift: logged, and a run requested when ``trigger_on_drift`` is on."""
    await deps.orchestrator.on_drift(event)


HANDLERS: HandlerMap = {ImageVerified: image_verified, ModelPerformanceDegraded: performance_degraded,
                        DriftDetected: drift_detected}
