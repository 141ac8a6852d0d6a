"""The embedded endpoint restarting (issue 16, item 4): moto keeps its state in memory.

Each test runs its own moto server process (the session's one is shared by every test and must not be killed), kills
it with SIGKILL and starts a new one on the same port, as a crash or an OOM kill of the endpoint would. Then:

- a service whose queue vanished re-creates the topology and carries on (its consumer gets QueueDoesNotExist), and
  processes new messages; it does not exit;
- the platform notices: the boot marker written by the bootstrap is gone (or is another one), ``radloop status``
  says plainly that the stored data is gone, and the supervisor restarts a dead endpoint on its port and re-creates
  the topology;
- an HTTP-only service's readiness says the endpoint restarted until the topology is back.

Before the fix: the consumer's loop crashed on every receive (``_run_consumer`` restarted it forever, readiness said
"worker stopped"/"aws unreachable: ResourceNotFoundException"), status showed only a queue error, and the supervisor
did not watch the endpoint at all.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from radloop.local.embedded_aws import EmbeddedAws, free_port, start_embedded_aws
from radloop.local.platform import LocalPlatform
from radloop.status import collect_status
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology, read_boot_id
from shared.settings import DEFAULT_PORTS, Settings
from tests.shared.test_shutdown import event, kill, start_probe
from tests.support.aws import counter, envelope, queue_url, wait_for

pytestmark = pytest.mark.integration


def restart(emb: EmbeddedAws, log: Path) -> EmbeddedAws:
    """SIGKILL the endpoint (no chance to save anything) and start a new one on the same port."""
    emb.process.send_signal(signal.SIGKILL)
    emb.process.wait(10)
    return start_embedded_aws(emb.port, log_path=log)


def write_state(settings: Settings, boot_id: str, port: int) -> None:
    """What ``radloop up`` records, with every service at ``port``."""
    run = settings.var_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    ports = {name: port for name in DEFAULT_PORTS}
    (run / "state.json").write_text(json.dumps({"endpoint": settings.aws_endpoint_url, "boot_id": boot_id,
                                                "ports": ports, "pids": {}, "prefix": settings.prefix}))


async def readyz(url: str) -> tuple[int, Any]:
    async with httpx.AsyncClient() as http:
        try:
            r = await http.get(url + "/readyz", timeout=5)
        except httpx.HTTPError as exc:
            return 0, str(exc)
        return r.status_code, r.json()


async def test_a_service_re_creates_the_topology_and_carries_on(tmp_path: Path) -> None:
    emb = start_embedded_aws(log_path=tmp_path / "moto.log")
    app = None
    try:
        s = Settings(aws_endpoint_url=emb.endpoint, prefix="restart", var_dir=tmp_path / "var", aws_max_attempts=2)
        async with AwsClients(s) as clients:
            boot_id = (await bootstrap_topology(clients))["boot_id"]
        port = free_port()
        write_state(s, boot_id, port)
        app = start_probe(s, "serve", tmp_path / "app.log", RADLOOP_PORT=str(port), RADLOOP_CONSUMER_WAIT_TIME_S="1")
        base = f"http://127.0.0.1:{port}"
        assert await wait_for(lambda: _ready(base), 60), "the probe service became ready"
        first, second = event(1), event(2)
        async with AwsClients(s) as clients:
            sqs = await clients.sqs()
            await sqs.send_message(QueueUrl=await queue_url(clients, s.topology.queues["triage"].name),
                                   MessageBody=envelope(first))
            assert await wait_for(lambda: counter(clients, f"effect#{first.event_id}"), 30)

        emb = restart(emb, tmp_path / "moto.log")
        st = await asyncio.to_thread(collect_status, s)
        assert st["aws_state"]["data_lost"] is True
        assert "STORED DATA IS GONE" in st["aws_state"]["message"]
        assert st["healthy"] is False

        async with AwsClients(s) as clients:
            # The service's consumer found its queue gone and re-created the topology (the marker is back) ...
            assert await wait_for(lambda: read_boot_id(clients), 30), "the service re-created the topology"
            assert await wait_for(lambda: _ready(base), 30), "and is ready again"
            assert app.poll() is None, "the service did not exit"
            # ... and carries on: a new message is handled; what was stored before the restart is gone.
            sqs = await clients.sqs()
            await sqs.send_message(QueueUrl=await queue_url(clients, s.topology.queues["triage"].name),
                                   MessageBody=envelope(second))
            assert await wait_for(lambda: counter(clients, f"effect#{second.event_id}"), 30)
            assert await counter(clients, f"effect#{first.event_id}") == 0
            assert await read_boot_id(clients) != boot_id
        st = await asyncio.to_thread(collect_status, s)
        assert st["aws_state"]["data_lost"] is True, "status still says the data stored before the restart is gone"
        assert "restarted since radloop started" in st["aws_state"]["message"]
        assert "re-creating the topology" in (tmp_path / "app.log").read_text()
    finally:
        if app is not None:
            kill(app)
        emb.stop()


async def _ready(base: str) -> bool:
    return (await readyz(base))[0] == 200


async def test_the_supervisor_restarts_the_endpoint_and_status_says_the_data_is_gone(tmp_path: Path) -> None:
    s = Settings(prefix="restart", var_dir=tmp_path / "var", aws_max_attempts=2)
    platform = LocalPlatform(settings=s, services=(), ports={"entry": free_port(), "aws": free_port()})
    app = None
    try:
        await asyncio.to_thread(platform.start)
        assert platform.embedded is not None and platform.boot_id
        started_boot = platform.boot_id
        ep = s.model_copy(update={"aws_endpoint_url": platform.endpoint})
        port = free_port()
        # An HTTP-only service (no queue, like the streaming gateway): nothing in it re-creates the topology.
        app = start_probe(ep, "serve", tmp_path / "app.log", RADLOOP_PORT=str(port), PROBE_NO_CONSUMER="1")
        base = f"http://127.0.0.1:{port}"
        assert await wait_for(lambda: _ready(base), 60)
        ok = await asyncio.to_thread(collect_status, s)
        assert ok["aws_state"]["data_lost"] is False, ok["aws_state"]

        # 1. The endpoint restarted by something else (its process is a new one on the same port).
        platform.embedded = restart(platform.embedded, tmp_path / "moto2.log")
        code, body = await readyz(base)
        assert code == 503 and any("embedded AWS endpoint restarted" in p for p in body["problems"]), body
        st = await asyncio.to_thread(collect_status, s)
        assert st["aws_state"]["data_lost"] is True and st["healthy"] is False
        assert "STORED DATA IS GONE" in st["aws_state"]["message"]
        assert await asyncio.to_thread(platform.supervise_once) == []  # no service process needed a restart
        assert len(platform.aws_losses) == 1, "the supervisor noticed and re-created the topology"
        assert await wait_for(lambda: _ready(base), 20), "the topology is back"
        st = await asyncio.to_thread(collect_status, s)
        assert st["aws_state"]["data_lost"] is True and len(st["aws_state"]["losses"]) == 1
        assert platform.boot_id == started_boot

        # 2. The endpoint's process dies: the supervisor starts a new one on the same port and re-creates the topology.
        old_pid = platform.embedded.process.pid
        platform.embedded.process.send_signal(signal.SIGKILL)
        platform.embedded.process.wait(10)
        platform._last_endpoint_check = 0.0
        await asyncio.to_thread(platform.supervise_once)
        assert len(platform.aws_losses) == 2
        assert platform.embedded.process.pid != old_pid and platform.embedded.process.poll() is None
        assert await wait_for(lambda: _ready(base), 20)
        state = json.loads(platform.state_path.read_text())
        assert len(state["aws_data_lost"]) == 2 and state["embedded_aws_pid"] == platform.embedded.process.pid
        # Nothing lost since: the next check finds the marker and does nothing.
        platform._last_endpoint_check = 0.0
        await asyncio.to_thread(platform.supervise_once)
        assert len(platform.aws_losses) == 2
        assert time.time() - state["aws_data_lost"][-1]["at"] < 60
    finally:
        if app is not None:
            kill(app)
        await asyncio.to_thread(platform.stop)
