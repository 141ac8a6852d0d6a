"""Issue 16 §5: triage tasks share the backlog, and each waiting image is claimed by exactly one of them (so only one
scores it and publishes its InstanceScored); a claim whose task died passes with its lease; a scored image leaves
the sparse backlog index."""

from __future__ import annotations

import asyncio

import pytest

from services.triage.adapters.scores import Scores
from shared.aws import AwsClients
from shared.events import InstanceScored
from shared.uids import generate_uid

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _waiting() -> InstanceScored:
    return InstanceScored(study_uid=generate_uid(), series_uid=generate_uid(), sop_uid=generate_uid(),
                          status="unscored", reason="awaiting_model")


async def test_each_backlog_image_is_claimed_by_one_task(clients: AwsClients) -> None:
    tasks = [Scores(clients) for _ in range(4)]  # four triage tasks over one scores table
    waiting = [_waiting() for _ in range(6)]
    for w in waiting:
        await tasks[0].put(w, awaiting_model=True)
    listed = {r["sop_uid"] for r in await tasks[1].backlog(100)}
    assert listed == {w.sop_uid for w in waiting}
    wins = await asyncio.gather(*(t.claim(w.sop_uid, f"task-{i}", 300) for w in waiting
                                  for i, t in enumerate(tasks)))
    assert sum(wins) == len(waiting), "every image is claimed exactly once"
    # a task that died holding a claim: once its lease passed, another task takes the image
    await tasks[0].unclaim(waiting[0].sop_uid, "nobody")  # not the holder: no effect
    holder = next(i for i, won in enumerate(wins[:4]) if won)
    assert not await tasks[(holder + 1) % 4].claim(waiting[0].sop_uid, "late", 300)
    assert not await tasks[1].claim(waiting[1].sop_uid, "task-x", 300)  # another task holds a live claim
    expired = _waiting()
    await tasks[0].put(expired, awaiting_model=True)
    assert await tasks[0].claim(expired.sop_uid, "dies", -1)  # a lease already over
    assert await tasks[2].claim(expired.sop_uid, "next", 300)
    # scored: it leaves the backlog index and can no longer be claimed
    done = waiting[2]
    await tasks[0].put(done.model_copy(update={"status": "scored", "probability": 0.5, "threshold": 0.5,
                                               "model_version": 1, "reason": None}), awaiting_model=False)
    assert done.sop_uid not in {r["sop_uid"] for r in await tasks[3].backlog(100)}
    assert not await tasks[3].claim(done.sop_uid, "late", 300)
    # read before any model: it leaves the backlog (and its claim) too
    assert await tasks[0].leave_backlog(waiting[3].sop_uid, "verified_before_model")
    assert waiting[3].sop_uid not in {r["sop_uid"] for r in await tasks[3].backlog(100)}
