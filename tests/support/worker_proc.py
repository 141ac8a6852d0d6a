"""A consumer process for the foundation tests (crash, SIGTERM, trace context).

``python -m tests.support.worker_proc`` runs :func:`shared.worker.run_worker` for the ``triage`` queue of the
deployment named by RADLOOP_PREFIX, with a handler whose behaviour is set by environment variables:

- ``WORKER_SLEEP_S``: seconds the handler sleeps (simulating long work) before its effect;
- the effect: ``ADD n 1`` on item ``effect#{event_id}`` of the state table, plus ``started#{event_id}`` before
  sleeping, so a test can see that a handler is in flight and count effects exactly.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from shared import event_names as ev
from shared.consumer import MessageContext
from shared.service import ServiceContext
from shared.worker import run_worker


def handlers(ctx: ServiceContext) -> dict[str, Any]:
    table = ctx.settings.topology.table("state")
    sleep_s = float(os.environ.get("WORKER_SLEEP_S", "0"))

    async def bump(key: str) -> None:
        ddb = await ctx.clients.dynamodb()
        await ddb.update_item(
            TableName=table,
            Key={"key": {"S": key}},
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )

    async def handle(event: Any, mctx: MessageContext) -> None:
        await bump(f"started#{event.event_id}")
        await asyncio.sleep(sleep_s)
        await bump(f"effect#{event.event_id}")

    return {ev.MODEL_APPROVED: handle, ev.INSTANCE_STORED: handle}


if __name__ == "__main__":
    vis = os.environ.get("WORKER_VISIBILITY_S")
    asyncio.run(run_worker("triage", handlers, visibility_timeout_s=int(vis) if vis else None, wait_time_s=1))
