"""A killed worker must not dead-letter its message, at the production ratios (issue 16, item 1), with real processes.

Production: the triage queue's visibility timeout is 60 s, verification's 30 s; a killed handler's idempotency record
stays INPROGRESS for 120 s (``idempotency_inprogress_expiry_s``); failed receives back off from 2 s, doubling; SQS
dead-letters after ``maxReceiveCount`` (9) receives. Every duration here is the production one divided by
:data:`SCALE` (all of them, so the ratios are the production ones; queue attributes, the consumer's visibility, the
record's expiry and the backoff base), while ``maxReceiveCount`` is the production topology's.

A worker process (:func:`shared.service.run_worker`) is SIGKILLed mid-handler on each queue; a restarted worker must
run the handler to completion exactly once, and nothing may reach the DLQ.

Fails on the old consumer (an INPROGRESS record counted as a failed receive, backoff 1 s doubling capped at the
visibility timeout, maxReceiveCount 5): the redeliveries spend every receive before the record goes stale and SQS
moves the message to the DLQ (in production at about 90 s for triage and 60 s for verification, before the 120 s).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from shared.aws import AwsClients
from tests.shared.test_shutdown import event, kill, start_probe
from tests.support.aws import counter, depth, envelope, queue_url, wait_for

pytestmark = pytest.mark.integration

#: Production durations divided by this (60 s -> 4 s, 30 s -> 2 s, 120 s -> 8 s, 2 s backoff -> 0.13 s).
SCALE = 15
PRODUCTION_INPROGRESS_EXPIRY_S = 120
QUEUES = ("triage", "verification")


async def test_a_killed_worker_is_taken_over_exactly_once_at_production_ratios(clients: AwsClients,
                                                                             tmp_path: Path) -> None:
    s = clients.settings
    sqs = await clients.sqs()
    expiry = PRODUCTION_INPROGRESS_EXPIRY_S // SCALE
    envs: dict[str, dict[str, str]] = {}
    events = {}
    for i, name in enumerate(QUEUES):
        q = s.topology.queues[name]
        assert q.visibility_timeout_s % SCALE == 0, "the scaled visibility timeout must be whole seconds"
        vis = q.visibility_timeout_s // SCALE
        url = await queue_url(clients, q.name)
        await sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(vis)})
        envs[name] = {"PROBE_SERVICE": name, "PROBE_VISIBILITY_S": str(vis),
                      "PROBE_BACKOFF_S": str(q.retry_backoff_s / SCALE),
                      "RADLOOP_IDEMPOTENCY_INPROGRESS_EXPIRY_S": str(expiry), "RADLOOP_CONSUMER_WAIT_TIME_S": "1"}
        events[name] = event(100 + i)
        await sqs.send_message(QueueUrl=url, MessageBody=envelope(events[name]))

    first = {n: start_probe(s, "worker", tmp_path / f"{n}-first.log", PROBE_SLEEP_S="600", **envs[n]) for n in QUEUES}
    try:
        for n in QUEUES:
            assert await wait_for(lambda n=n: counter(clients, f"started#{events[n].event_id}"), 60), n
        for p in first.values():  # mid-handler, no chance to clean up (OOM, SIGKILL, a task stopped by ECS)
            p.send_signal(signal.SIGKILL)
        for p in first.values():
            await asyncio.to_thread(p.wait, 10)
        for n in QUEUES:
            assert await counter(clients, f"effect#{events[n].event_id}") == 0
    finally:
        for p in first.values():
            kill(p)

    second = {n: start_probe(s, "worker", tmp_path / f"{n}-second.log", PROBE_SLEEP_S="0.2", **envs[n])
              for n in QUEUES}
    try:
        # The takeover needs the record to go stale (the scaled 120 s) plus a visibility timeout: well under 40 s.
        for n in QUEUES:
            done = await wait_for(lambda n=n: counter(clients, f"effect#{events[n].event_id}"), 40)
            dlq = await depth(clients, s.topology.queues[n].dlq_name)
            assert done, f"{n}: the restarted worker never ran the handler (DLQ holds {dlq})"
        await asyncio.sleep(3)  # a wrongly redelivered copy would have run again by now
        for n in QUEUES:
            q = s.topology.queues[n]
            assert await counter(clients, f"effect#{events[n].event_id}") == 1, f"{n}: exactly one effect"
            assert await counter(clients, f"started#{events[n].event_id}") == 2, f"{n}: killed, then taken over"
            assert await depth(clients, q.name) == (0, 0), n
            assert await depth(clients, q.dlq_name) == (0, 0), f"{n}: nothing dead-lettered"
        for p in second.values():
            assert p.poll() is None
    finally:
        for p in second.values():
            kill(p)
