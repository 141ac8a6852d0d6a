"""`radloop up` as a user runs it: every service healthy, `radloop status --json` agrees, Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from radloop.local.embedded_aws import free_port
from shared.settings import DEFAULT_PORTS

ROOT = Path(__file__).resolve().parents[2]


def test_radloop_up_brings_every_service_to_healthy_and_stops_cleanly(tmp_path: Path) -> None:
    env = dict(os.environ, RADLOOP_VAR_DIR=str(tmp_path), PYTHONPATH=str(ROOT))
    env.pop("AWS_ENDPOINT_URL", None)
    ports = {name: free_port() for name in DEFAULT_PORTS}
    for name, port in ports.items():
        env[f"RADLOOP_PORT_{name.upper()}"] = str(port)
    out = open(tmp_path / "up.log", "wb")  # noqa: SIM115
    up = subprocess.Popen([sys.executable, "-m", "radloop.cli", "up"], env=env, cwd=ROOT,
                          stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 150
        status = None
        while time.monotonic() < deadline and up.poll() is None:
            r = subprocess.run([sys.executable, "-m", "radloop.cli", "status", "--json"], env=env, cwd=ROOT,
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                status = json.loads(r.stdout)
                break
            time.sleep(1)
        logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                          for p in [tmp_path / "up.log", *sorted((tmp_path / "run").glob("*.log"))])
        assert status is not None, f"radloop up did not become healthy:\n{logs}"
        assert set(status["services"]) == {"ingestion", "streaming_gateway", "triage", "verification",
                                           "pipeline_orchestrator", "registry", "entry"}
        assert all(v["healthy"] for v in status["services"].values())
        assert status["dimse_port"] == ports["dimse"]
        assert all(q["dlq"] == 0 for q in status["queues"].values())
        pids = [v["pid"] for v in status["services"].values()]
        # the entry point routes by path: STOW (POST) to ingestion, QIDO (GET) to the gateway
        assert httpx.get(f"http://127.0.0.1:{ports['entry']}/healthz").json()["service"] == "entry"
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
    assert up.returncode == 0
    for pid in pids:
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        assert not alive, f"service process {pid} still running after radloop up stopped"
