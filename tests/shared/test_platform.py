"""`radloop up` as a user runs it: every service healthy, `radloop status --json` agrees, the entry proxy sends each
route of :data:`shared.topology.ROUTES` to its service, Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from radloop.local.embedded_aws import free_port
from shared.auth import mint_token
from shared.settings import DEFAULT_PORTS, Settings
from shared.topology import ROUTES, route_for

pytestmark = pytest.mark.integration  # starts `radloop up` (its own moto server and every service process)

ROOT = Path(__file__).resolve().parents[2]
HTTP_SERVICES = ("ingestion", "streaming_gateway", "triage", "verification", "pipeline_orchestrator", "registry",
                 "interop")

#: One request per route of ROUTES that only the route's service answers with a success or its own error: STOW with
#: a body that is not multipart (ingestion's 415; the gateway has no POST there), a QIDO search, the viewer's page, and
#: a listing of each other prefix.
PROBES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("POST", "/dicomweb/studies", {"content": b"{}", "headers": {"Content-Type": "application/json"}}),
    ("GET", "/dicomweb/studies", {"headers": {"Accept": "application/dicom+json"}}),
    ("GET", "/viewer/", {}),
    ("GET", "/ohif/", {}),  # the OHIF build (make ohif)
    ("GET", "/verification/worklist", {}),
    ("GET", "/registry/models", {}),
    ("GET", "/orchestrator/trainings", {}),
)


def _answer(r: httpx.Response) -> tuple[int, str, object]:
    """What identifies an answer: status, media type, and the JSON keys (or the body) -- not timestamps in it."""
    ctype = r.headers.get("content-type", "").split(";")[0]
    if ctype == "application/json" or ctype.endswith("+json"):
        body = r.json() if r.content else None
        return r.status_code, ctype, sorted(body) if isinstance(body, dict) else type(body).__name__
    return r.status_code, ctype, r.content


def check_routing(entry_port: int, ports: dict[str, int], token: str) -> None:
    """Each probe through the entry proxy gets the answer of the service ROUTES names, and no other service gives
    that answer to the same request (so the answer identifies who served it)."""
    probed = {(prefix, service) for prefix, _methods, service in ROUTES}
    covered = {(p, route_for(path, method)) for method, path, _ in PROBES for p, _m, _s in ROUTES
               if path == p or path.startswith(p + "/")}
    assert probed <= covered, f"a route has no probe: {sorted(probed - covered)}"
    with httpx.Client(timeout=30.0, headers={"Authorization": f"Bearer {token}"}) as http:
        for method, path, kw in PROBES:
            service = route_for(path, method)
            assert service is not None, f"{method} {path} is routed nowhere"
            via_entry = http.request(method, f"http://127.0.0.1:{entry_port}{path}", **kw)
            direct = {name: http.request(method, f"http://127.0.0.1:{ports[name]}{path}", **kw)
                      for name in HTTP_SERVICES}
            assert direct[service].status_code < 500, f"{service} failed {method} {path}: {direct[service].text}"
            assert direct[service].status_code not in (404, 405), f"{service} does not serve {method} {path}"
            assert _answer(via_entry) == _answer(direct[service]), (
                f"{method} {path} through the entry proxy did not get {service}'s answer: "
                f"{via_entry.status_code} {via_entry.text[:200]!r}")
            others = [name for name in HTTP_SERVICES if name != service
                      and _answer(direct[name]) == _answer(direct[service])]
            assert not others, f"{method} {path}: {others} answer like {service}, so the probe proves nothing"


def test_radloop_up_brings_every_service_to_healthy_and_stops_cleanly(tmp_path: Path) -> None:
    # two gateway processes behind the entry (RADLOOP_LOCAL_GATEWAY_REPLICAS), as the DICOMweb benchmark runs it
    env = dict(os.environ, RADLOOP_VAR_DIR=str(tmp_path), PYTHONPATH=str(ROOT), RADLOOP_LOCAL_GATEWAY_REPLICAS="2")
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
        assert set(status["services"]) == {"ingestion", "streaming_gateway", "streaming_gateway-2", "triage",
                                           "verification", "pipeline_orchestrator", "registry", "interop", "entry"}
        replica = status["services"]["streaming_gateway-2"]["url"]
        assert replica != f"http://127.0.0.1:{ports['streaming_gateway']}"
        assert httpx.get(f"{replica}/healthz").json()["service"] == "streaming_gateway"
        assert all(v["healthy"] for v in status["services"].values())
        assert status["dimse_port"] == ports["dimse"] and status["qr_port"] == ports["qr"]
        assert all(q["dlq"] == 0 for q in status["queues"].values())
        pids = [v["pid"] for v in status["services"].values()]
        assert httpx.get(f"http://127.0.0.1:{ports['entry']}/healthz").json()["service"] == "entry"
        for name in HTTP_SERVICES:  # each port is the service it claims to be
            assert httpx.get(f"http://127.0.0.1:{ports[name]}/healthz").json()["service"] == name
        # the entry point routes by path and method (STOW POST to ingestion, QIDO GET to the gateway, ...)
        check_routing(ports["entry"], ports, mint_token(Settings(var_dir=tmp_path), "admin"))
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
