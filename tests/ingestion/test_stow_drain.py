"""STOW's clean-up when a request is cancelled: in-flight parts finish, but not past SIGTERM's drain deadline.

The medium chaos run measured a SIGTERMed 128 MB STOW taking 38.4 s to stop against a 35 s budget, because the
cancelled request waited for every in-flight part without a deadline; ECS would have SIGKILLed the task first.
"""

from __future__ import annotations

import asyncio

from services.ingestion.api.stow import _drain
from shared.service import loop_time


async def test_parts_still_running_at_the_deadline_are_cancelled() -> None:
    fast = asyncio.create_task(asyncio.sleep(0.05, result="stored"))
    stuck = asyncio.create_task(asyncio.sleep(3600))
    started = loop_time()
    await _drain([fast, stuck], deadline=started + 0.5)
    assert loop_time() - started < 2.0
    assert fast.result() == "stored"
    assert stuck.cancelled()


async def test_without_a_deadline_every_part_finishes() -> None:
    parts = [asyncio.create_task(asyncio.sleep(0.05 * i, result=i)) for i in range(4)]
    await _drain(parts)
    assert [p.result() for p in parts] == [0, 1, 2, 3]


async def test_a_deadline_already_past_cancels_at_once() -> None:
    stuck = asyncio.create_task(asyncio.sleep(3600))
    started = loop_time()
    await _drain([stuck], deadline=started - 1)
    assert stuck.cancelled() and loop_time() - started < 1.0
