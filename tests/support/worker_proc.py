"""A consumer process for the foundation tests (crash, SIGTERM, trace context).

``python -m tests.support.worker_proc`` runs :func:`shared.service.run_worker` with a small :class:`ServiceSpec` on
the ``triage`` queue of the deployment named by RADLOOP_PREFIX, with a handler whose behaviour is set by environment
variables:

- ``WORKER_SLEEP_S``: seconds the handler sleeps (simulating long work) before its effect;
- ``WORKER_VISIBILITY_S``: the consumer's visibility timeout;
- the effect: ``ADD n 1`` on item ``effect#{event_id}`` of the state table, plus ``started#{event_id}`` before
  sleeping, so a test can see that a handler is in flight and count effects exactly.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from shared.consumer import MessageContext
from shared.events import InstanceStored, ModelApproved
from shared.service import HandlerMap, Runtime, ServiceSpec, run_worker
from shared.settings import Settings


@dataclass
class ProbeDeps:
    """The probe's dependencies: the runtime and how long each handler works."""

    rt: Runtime[Settings]
    sleep_s: float


async def startup(rt: Runtime[Settings]) -> ProbeDeps:
    """Read the handler's behaviour from the environment."""
    return ProbeDeps(rt=rt, sleep_s=float(os.environ.get("WORKER_SLEEP_S", "0")))


async def bump(deps: ProbeDeps, key: str) -> None:
    """``ADD n 1`` on state-table item ``key`` (an effect a test can count)."""
    ddb = await deps.rt.clients.dynamodb()
    await ddb.update_item(
        TableName=deps.rt.settings.topology.table("state"),
        Key={"key": {"S": key}},
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )


async def handle(deps: ProbeDeps, event: Any, _m: MessageContext) -> None:
    """Mark the handler started, work for ``sleep_s``, then record its one effect."""
    await bump(deps, f"started#{event.event_id}")
    await asyncio.sleep(deps.sleep_s)
    await bump(deps, f"effect#{event.event_id}")


HANDLERS: HandlerMap = {ModelApproved: handle, InstanceStored: handle}


def _consumer_options(_s: Settings) -> dict[str, Any]:
    vis = os.environ.get("WORKER_VISIBILITY_S")
    return {"visibility_timeout_s": int(vis) if vis else None, "wait_time_s": 1}


#: Named after the queue it consumes (the triage queue receives both events); not the triage service itself.
SPEC: ServiceSpec[Settings, ProbeDeps] = ServiceSpec(
    name="triage",
    title="worker probe",
    settings=Settings,
    startup=startup,
    handlers=HANDLERS,
    consumer_options=_consumer_options,
)


if __name__ == "__main__":
    asyncio.run(run_worker(SPEC))
