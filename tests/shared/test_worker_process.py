"""Worker processes: SIGKILL mid-handler, SIGTERM draining, and trace context across process boundaries."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from shared.aws import AwsClients
from shared.events import ModelApproved
from shared.publisher import EventPublisher
from shared.telemetry import read_local_spans
from tests.support.aws import counter, depth, envelope, queue_url, wait_for

ROOT = Path(__file__).resolve().parents[2]


def start_worker(clients: AwsClients, tmp: Path, **env: str) -> subprocess.Popen[bytes]:
    s = clients.settings
    e = dict(os.environ, AWS_ENDPOINT_URL=s.aws_endpoint_url, RADLOOP_PREFIX=s.prefix, RADLOOP_VAR_DIR=str(tmp),
             PYTHONPATH=str(ROOT), **env)
    log = open(tmp / f"worker-{len(list(tmp.glob('worker-*.log')))}.log", "wb")  # noqa: SIM115
    return subprocess.Popen([sys.executable, "-m", "tests.support.worker_proc"], env=e, stdout=log,
                            stderr=subprocess.STDOUT, cwd=ROOT)


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.kill()
        p.wait(10)


def event() -> ModelApproved:
    return ModelApproved(version=1, model_package_arn="arn", model_artifact_uri="s3://b/m", threshold=0.5,
                         approved_by="policy", reason="test")


async def set_visibility(clients: AwsClients, seconds: int) -> None:
    sqs = await clients.sqs()
    q = clients.settings.topology.queues["triage"]
    await sqs.set_queue_attributes(QueueUrl=await queue_url(clients, q.name),
                                   Attributes={"VisibilityTimeout": str(seconds)})


async def test_killed_worker_message_is_processed_exactly_once_by_a_new_process(clients: AwsClients,
                                                                                 tmp_path: Path) -> None:
    await set_visibility(clients, 3)
    e = event()
    sqs = await clients.sqs()
    q = clients.settings.topology.queues["triage"]
    await sqs.send_message(QueueUrl=await queue_url(clients, q.name), MessageBody=envelope(e))
    env = {"WORKER_SLEEP_S": "4", "WORKER_VISIBILITY_S": "3", "RADLOOP_IDEMPOTENCY_INPROGRESS_EXPIRY_S": "3"}
    first = start_worker(clients, tmp_path, **env)
    try:
        assert await wait_for(lambda: counter(clients, f"started#{e.event_id}"), 30)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        assert await counter(clients, f"effect#{e.event_id}") == 0
    finally:
        stop(first)
    second = start_worker(clients, tmp_path, **env)
    try:
        assert await wait_for(lambda: counter(clients, f"effect#{e.event_id}"), 40)
        await asyncio.sleep(4)  # a wrongly redelivered copy would have run again by now
        assert await counter(clients, f"effect#{e.event_id}") == 1
        assert await counter(clients, f"started#{e.event_id}") == 2
        assert await depth(clients, q.name) == (0, 0)
        assert await depth(clients, q.dlq_name) == (0, 0)
    finally:
        stop(second)


async def test_sigterm_drains_the_in_flight_handler(clients: AwsClients, tmp_path: Path) -> None:
    e = event()
    sqs = await clients.sqs()
    q = clients.settings.topology.queues["triage"]
    await sqs.send_message(QueueUrl=await queue_url(clients, q.name), MessageBody=envelope(e))
    worker = start_worker(clients, tmp_path, WORKER_SLEEP_S="3")
    try:
        assert await wait_for(lambda: counter(clients, f"started#{e.event_id}"), 30)
        worker.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(worker.wait, 30)
        assert rc == 0
        assert await counter(clients, f"effect#{e.event_id}") == 1, "the in-flight handler finished"
        assert await depth(clients, q.name) == (0, 0), "and its message was deleted"
        assert await depth(clients, q.dlq_name) == (0, 0)
    finally:
        stop(worker)


async def test_trace_context_crosses_processes(clients: AwsClients, tmp_path: Path, spans: object) -> None:
    worker = start_worker(clients, tmp_path)
    try:
        e = event()
        await EventPublisher(clients, "registry").publish(e)
        assert await wait_for(lambda: counter(clients, f"effect#{e.event_id}"), 30)
        producer = [s for s in spans.get_finished_spans() if s.name == "publish ModelApproved"]  # type: ignore[attr-defined]
        assert len(producer) == 1
        p_ctx = producer[0].get_span_context()
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)

        async def consumer_span() -> list[dict[str, object]]:
            return [s for s in read_local_spans(tmp_path / "traces")
                    if s["name"] == "process ModelApproved" and s["attributes"].get("radloop.event_id") == e.event_id]

        found = await wait_for(consumer_span, 10)
        assert found, "the worker process exported its CONSUMER span"
        c = found[0]
        assert c["kind"] == "CONSUMER"
        assert c["trace_id"] == format(p_ctx.trace_id, "032x")
        assert c["parent_span_id"] == format(p_ctx.span_id, "016x")
        assert json.dumps(c)  # serialisable as exported
    finally:
        stop(worker)
