"""Shutdown within the platform's stop timeout: SIGTERM under load (issue 16, item 2).

Real processes against the session's moto server: an app process (``shared.service.serve``: uvicorn, the consumer
inside, HTTP routes) and a worker process (``shared.service.run_worker``) read the same queue, as an ECS app task and
a worker task do, while a steady stream of messages and HTTP requests arrives. Then both get SIGTERM.

The promise (``serve``'s docstring): receiving stops at the signal, in-flight handlers finish and their messages are
deleted, HTTP drains, and the process exits 0 within ``drain_timeout_s``. So afterwards:

- every process exited 0 inside ``drain_timeout_s``;
- every handler that started finished, exactly once (no handler ran twice, none was cut off to be redelivered later);
- nothing was received after the signal: the handlers that ran are at most those finished at the signal plus one
  per concurrency slot, and every other message is still visible on the queue (none stranded in flight);
- nothing is in the DLQ, and the HTTP request in flight at the signal was answered.

Before the fix the consumer kept receiving while HTTP drained, then the lifespan waited for those messages too:
disabling the consumer stop in ``_DrainingServer.on_signal`` makes this test fail (more handlers than the bound, and
an exit after the budget).

This module is also the probe service the test runs: ``python -m tests.shared.test_shutdown serve|worker``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from radloop.local.embedded_aws import free_port
from shared.aws import AwsClients
from shared.consumer import MessageContext
from shared.events import ModelApproved
from shared.service import HandlerMap, Runtime, ServiceSpec, run_worker, serve
from shared.settings import Settings
from tests.support.aws import depth, envelope, queue_url

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

#: Scaled down evenly from production (30 s budget, 15 s HTTP drain): small enough for a test, long enough that a
#: handler of 1 s and a slow request of 2.5 s fit.
DRAIN_TIMEOUT_S = 6.0
HANDLER_S = 1.0
CONCURRENCY = 2


# -- the probe service (run in the child processes) ------------------------------------------------------------------
@dataclass
class ProbeDeps:
    """The probe's dependencies: the runtime and how long each handler works."""

    rt: Runtime[Settings]
    sleep_s: float


async def probe_startup(rt: Runtime[Settings]) -> ProbeDeps:
    """Read the handler's behaviour from the environment."""
    return ProbeDeps(rt=rt, sleep_s=float(os.environ.get("PROBE_SLEEP_S", "0")))


async def bump(deps: ProbeDeps, key: str) -> None:
    """``ADD n 1`` on state-table item ``key`` (an effect the test counts)."""
    ddb = await deps.rt.clients.dynamodb()
    await ddb.update_item(TableName=deps.rt.settings.topology.table("state"), Key={"key": {"S": key}},
                          UpdateExpression="ADD n :one", ExpressionAttributeValues={":one": {"N": "1"}})


async def probe_handle(deps: ProbeDeps, event: Any, _m: MessageContext) -> None:
    """Mark the handler started, work for ``sleep_s``, then record its one effect."""
    await bump(deps, f"started#{event.event_id}")
    await asyncio.sleep(deps.sleep_s)
    await bump(deps, f"effect#{event.event_id}")


router = APIRouter()


@router.get("/probe/sleep")
async def probe_sleep(s: float = 0.0) -> dict[str, float]:
    """An HTTP request that takes ``s`` seconds (the request in flight when SIGTERM arrives)."""
    await asyncio.sleep(min(s, 30.0))
    return {"slept": s}


def _probe_options(_s: Settings) -> dict[str, Any]:
    opts: dict[str, Any] = {"wait_time_s": 1, "concurrency": int(os.environ.get("PROBE_CONCURRENCY", "2"))}
    if os.environ.get("PROBE_VISIBILITY_S"):
        opts["visibility_timeout_s"] = int(os.environ["PROBE_VISIBILITY_S"])
    if os.environ.get("PROBE_BACKOFF_S"):
        opts["retry_backoff_s"] = float(os.environ["PROBE_BACKOFF_S"])
    return opts


def probe_spec(service: str = "triage", *, consumer: bool = True) -> ServiceSpec[Settings, ProbeDeps]:
    """A service named after the queue it reads (``PROBE_SERVICE``); not that service itself.

    Without ``consumer`` (``PROBE_NO_CONSUMER=1``) it is an HTTP-only service, like the streaming gateway.
    """
    handlers: HandlerMap | None = {ModelApproved: probe_handle} if consumer else None
    return ServiceSpec(name=service, title="shutdown probe", settings=Settings, startup=probe_startup,
                       handlers=handlers, routers=[router], consumer_options=_probe_options)


def start_probe(settings: Settings, mode: str, log: Path, **env: str) -> subprocess.Popen[bytes]:
    """Start ``python -m tests.shared.test_shutdown MODE`` (``serve`` or ``worker``) against ``settings``' deployment."""
    e = dict(os.environ, AWS_ENDPOINT_URL=settings.aws_endpoint_url, RADLOOP_PREFIX=settings.prefix,
             RADLOOP_VAR_DIR=str(settings.var_dir), PYTHONPATH=str(ROOT), **env)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "tests.shared.test_shutdown", mode], env=e, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill(p: subprocess.Popen[bytes]) -> None:
    """Stop a probe the test started (by PID) if it is still running."""
    if p.poll() is None:
        p.kill()
        p.wait(10)


async def counts(clients: AwsClients) -> dict[str, int]:
    """Every counter of the state table (``started#...`` and ``effect#...``), read consistently."""
    ddb = await clients.dynamodb()
    out: dict[str, int] = {}
    kw: dict[str, Any] = {"TableName": clients.settings.topology.table("state"), "ConsistentRead": True}
    for _ in range(100):
        resp = await ddb.scan(**kw)
        for item in resp.get("Items", []):
            if "n" in item:
                out[item["key"]["S"]] = int(item["n"]["N"])
        if "LastEvaluatedKey" not in resp:
            break
        kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
    return out


def effects(c: dict[str, int]) -> int:
    return sum(1 for k in c if k.startswith("effect#"))


def event(i: int) -> ModelApproved:
    return ModelApproved(version=i, model_package_arn="arn", model_artifact_uri="s3://b/m", threshold=0.5,
                         approved_by="policy", reason="shutdown test")


async def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the app process exited while starting"
            try:
                if (await http.get(url + "/readyz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


async def test_sigterm_under_load_exits_in_time_and_redelivers_nothing(clients: AwsClients, tmp_path: Path) -> None:
    s = clients.settings
    q = s.topology.queues["triage"]
    url = await queue_url(clients, q.name)
    sqs = await clients.sqs()
    port = free_port()
    env = {"RADLOOP_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S), "PROBE_SLEEP_S": str(HANDLER_S),
           "PROBE_CONCURRENCY": str(CONCURRENCY), "PROBE_SERVICE": "triage"}
    app = start_probe(s, "serve", tmp_path / "app.log", RADLOOP_PORT=str(port), **env)
    worker = start_probe(s, "worker", tmp_path / "worker.log", **env)
    procs = {"app": app, "worker": worker}
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(base, app)
        sent = 0
        http_codes: list[int] = []
        stop_load = asyncio.Event()

        async def messages() -> None:  # about 5 a second: more than 2 x 2 one-second slots take, so a backlog builds
            nonlocal sent
            while not stop_load.is_set():
                await sqs.send_message(QueueUrl=url, MessageBody=envelope(event(sent)))
                sent += 1
                await asyncio.sleep(0.2)

        async def requests(http: httpx.AsyncClient) -> None:
            while not stop_load.is_set():
                http_codes.append((await http.get(base + "/probe/sleep", params={"s": 0.05}, timeout=10)).status_code)
                await asyncio.sleep(0.1)

        async with httpx.AsyncClient() as http:
            load = [asyncio.create_task(messages()), asyncio.create_task(requests(http))]
            # Under load for a while: handlers in flight in both processes and a backlog on the queue.
            for _ in range(100):
                await asyncio.sleep(0.2)
                if effects(await counts(clients)) >= 4 and sent >= 20:
                    break
            slow = asyncio.create_task(http.get(base + "/probe/sleep", params={"s": 2.5}, timeout=20))
            await asyncio.sleep(0.3)  # the slow request is in flight
            stop_load.set()
            await asyncio.gather(*load)
            signalled = time.monotonic()
            for p in procs.values():
                p.send_signal(signal.SIGTERM)
            # Every message received before the signal is finished, or in flight in one of the 2 x CONCURRENCY slots
            # (a consumer asks for no more messages than it has free slots).
            at_signal = effects(await counts(clients))
            exits: dict[str, tuple[int | None, float]] = {}
            while len(exits) < len(procs) and time.monotonic() - signalled < DRAIN_TIMEOUT_S + 10:
                for name, p in procs.items():
                    if name not in exits and p.poll() is not None:
                        exits[name] = (p.returncode, time.monotonic() - signalled)
                await asyncio.sleep(0.05)
            slow_resp = await slow

        for name in procs:
            assert name in exits, f"{name} still running {DRAIN_TIMEOUT_S + 10:.0f}s after SIGTERM"
            rc, took = exits[name]
            assert rc == 0, f"{name} exited with {rc}"
            assert took <= DRAIN_TIMEOUT_S, f"{name} took {took:.1f}s to exit, over drain_timeout_s={DRAIN_TIMEOUT_S}"
        assert slow_resp.status_code == 200, "the request in flight at SIGTERM was answered (HTTP drained)"
        assert http_codes and set(http_codes) == {200}

        final = await counts(clients)
        ran = effects(final)
        started = {k.split("#", 1)[1]: n for k, n in final.items() if k.startswith("started#")}
        done = {k.split("#", 1)[1]: n for k, n in final.items() if k.startswith("effect#")}
        assert set(started) == set(done), "every handler that started finished (none cut off to be redelivered)"
        assert set(started.values()) == {1} and set(done.values()) == {1}, "no handler ran twice"
        assert ran <= at_signal + 2 * CONCURRENCY, (
            f"{ran} handlers ran but only {at_signal} had finished and {2 * CONCURRENCY} could be in flight at "
            "SIGTERM: the consumers kept receiving after the signal")
        # Nothing received after the signal is stranded invisible either: what did not run waits on the queue.
        assert await depth(clients, q.name) == (sent - ran, 0)
        assert await depth(clients, q.dlq_name) == (0, 0)
        assert ran < sent, "the test needs a backlog at the signal"
    finally:
        for p in procs.values():
            kill(p)


if __name__ == "__main__":
    _spec = probe_spec(os.environ.get("PROBE_SERVICE", "triage"), consumer=os.environ.get("PROBE_NO_CONSUMER") != "1")
    if sys.argv[1:] == ["worker"]:
        asyncio.run(run_worker(_spec))
    else:
        serve(_spec)
