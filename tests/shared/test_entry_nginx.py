"""The local entry point as `radloop up` runs it (``python -m radloop.local.entry``: nginx, or the Python fallback),
in front of real HTTP upstreams on loopback: routing by method, the proxy's own forwarded headers (a client's dropped),
bodies streamed both ways, JSON for a dead upstream, files under var/, stopped by its PID."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from radloop.local.embedded_aws import free_port

pytestmark = pytest.mark.integration  # starts nginx (or the Python proxy) as a process

ROOT = Path(__file__).resolve().parents[2]
STEP_S = 10.0  # each wait below is bounded by this


class Upstream:
    """A real HTTP/1.1 server on 127.0.0.1 that records what reached it and can hold a response half-sent."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, Any]] = []
        self.first_chunk = threading.Event()  # the first request-body chunk reached the upstream
        self.client_got_first = threading.Event()  # the client read the first half of a streamed response
        up = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _answer(self, body: bytes) -> None:
                up.seen.append({"method": self.command, "path": self.path, "headers": self.headers.items(),
                                "body": len(body)})
                out = json.dumps({"upstream": up.name, "method": self.command}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?")[0].endswith("/stream"):  # the first half, then wait for the client to have read it
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = b"a" * 65536
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
                    self.wfile.flush()
                    held = up.client_got_first.wait(STEP_S)
                    rest = b"b" if held else b"x"
                    self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(rest), rest))
                    return
                self._answer(b"")

            do_HEAD = do_GET  # noqa: N815
            do_DELETE = do_GET  # noqa: N815

            def do_POST(self) -> None:  # noqa: N802
                body = b""
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    while True:
                        size = int(self.rfile.readline().strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                        up.first_chunk.set()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._answer(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _entry(flavour: str, tmp: Path, ports: dict[str, int], extra_env: dict[str, str] | None = None
           ) -> tuple[subprocess.Popen[bytes], int]:
    entry_port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), RADLOOP_PORT=str(entry_port), RADLOOP_VAR_DIR=str(tmp),
               **{f"RADLOOP_PORT_{n.upper()}": str(p) for n, p in ports.items()}, **(extra_env or {}))
    env.pop("RADLOOP_ENTRY", None)
    if flavour == "python":
        env["RADLOOP_ENTRY"] = "python"
    with (tmp / "entry.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "radloop.local.entry"], env=env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp / "entry.log").read_text()
        try:
            with socket.create_connection(("127.0.0.1", entry_port), timeout=1):
                return proc, entry_port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"entry did not listen in 30 s: {(tmp / 'entry.log').read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the entry by its PID; SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(params=["nginx", "python"])
def entry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, int, Upstream, Upstream, Path,
                                                                           subprocess.Popen[bytes]]]:
    if request.param == "nginx" and shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        pytest.skip("nginx is not installed (make setup installs Debian's nginx)")
    ingestion, gateway = Upstream("ingestion"), Upstream("streaming_gateway")
    proc, port = _entry(request.param, tmp_path, {"ingestion": ingestion.port, "streaming_gateway": gateway.port,
                                                  "verification": free_port()})
    try:
        yield request.param, port, ingestion, gateway, tmp_path, proc
    finally:
        _stop(proc)
        ingestion.close()
        gateway.close()


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
             body: Any = None) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=STEP_S)
    try:
        c.request(method, path, body=body, headers=headers or {}, encode_chunked=body is not None
                  and not isinstance(body, bytes))
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_entry_routes_sets_forwarded_headers_streams_and_stops_by_pid(entry: tuple[Any, ...]) -> None:
    flavour, port, ingestion, gateway, var, proc = entry
    status, _h, body = _request(port, "GET", "/healthz")
    assert status == 200 and json.loads(body)["service"] == "entry"

    # routing by method: STOW (POST) to ingestion, QIDO/WADO (GET) to the gateway, paths and queries unchanged
    forged = {"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
              "Forwarded": "for=6.6.6.6;host=evil.example", "X-Real-IP": "6.6.6.6", "Host": f"127.0.0.1:{port}"}
    status, _h, body = _request(port, "GET", "/dicomweb/studies?PatientID=X&limit=2", forged)
    assert status == 200 and json.loads(body) == {"upstream": "streaming_gateway", "method": "GET"}
    status, _h, body = _request(port, "POST", "/dicomweb/studies", forged, b"x" * 1000)
    assert status == 200 and json.loads(body) == {"upstream": "ingestion", "method": "POST"}
    assert gateway.seen[-1]["path"] == "/dicomweb/studies?PatientID=X&limit=2"
    for seen in (gateway.seen[-1], ingestion.seen[-1]):
        hdrs: list[tuple[str, str]] = [(k.lower(), v) for k, v in seen["headers"]]
        fwd = {k: [v for kk, v in hdrs if kk == k] for k in ("x-forwarded-for", "x-forwarded-host",
                                                            "x-forwarded-proto", "forwarded", "x-real-ip")}
        # the proxy's own values, one each; nothing the client sent under these names
        assert fwd == {"x-forwarded-for": ["127.0.0.1"], "x-forwarded-host": [f"127.0.0.1:{port}"],
                       "x-forwarded-proto": ["http"], "forwarded": [], "x-real-ip": []}, (flavour, fwd)
    assert ingestion.seen[-1]["body"] == 1000

    # a path no route names, and a routed service that is down: JSON errors from the entry itself
    status, h, body = _request(port, "GET", "/nothing/here")
    assert status == 404 and h["content-type"].startswith("application/json"), body
    status, h, body = _request(port, "GET", "/verification/worklist")
    assert status == 502 and h["content-type"].startswith("application/json"), body

    # the request body streams: the upstream has the first chunk while the client still holds the rest
    def chunks() -> Iterator[bytes]:
        yield b"c" * 65536
        assert ingestion.first_chunk.wait(STEP_S), f"{flavour}: the entry held the request body back"
        yield b"d" * 65536

    status, _h, body = _request(port, "POST", "/dicomweb/studies", {"Content-Type": "multipart/related"}, chunks())
    assert status == 200 and ingestion.seen[-1]["body"] == 131072

    # the response streams: the client reads the first half while the upstream still holds the rest
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=STEP_S)
    try:
        c.request("GET", "/dicomweb/stream")
        r = c.getresponse()
        assert r.status == 200
        first = r.read(65536)
        assert first == b"a" * 65536
        gateway.client_got_first.set()
        assert r.read() == b"b", f"{flavour}: the entry held the response back until the upstream finished"
    finally:
        c.close()

    # stopped by its PID (the started process is nginx's master: it execs); nothing left, pid file removed
    run_dir = var / "run" / f"entry-{port}"
    if flavour == "nginx":
        pid_file = run_dir / "nginx.pid"
        assert int(pid_file.read_text()) == proc.pid  # this PID is nginx's master (the entry exec'd it)
        workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert workers
    proc.send_signal(signal.SIGTERM)
    proc.wait(STEP_S)
    if flavour == "nginx":
        assert not pid_file.exists()
        deadline = time.monotonic() + STEP_S
        while any(Path(f"/proc/{w}").exists() for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(Path(f"/proc/{w}").exists() for w in workers), "an nginx worker outlived its master"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_nginx_spreads_a_service_over_its_replicas_and_passes_over_a_dead_one(tmp_path: Path) -> None:
    """RADLOOP_LOCAL_GATEWAY_REPLICAS: the local platform gives each gateway replica a port and the entry's upstream
    lists them all (least_conn); a replica that does not answer costs no failed request."""
    if shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        pytest.skip("nginx is not installed (make setup installs Debian's nginx)")
    ingestion, first, second = Upstream("ingestion"), Upstream("gateway-1"), Upstream("gateway-2")
    ports = {"ingestion": ingestion.port, "streaming_gateway": first.port, "verification": free_port()}
    procs = []
    (tmp_path / "live").mkdir()
    (tmp_path / "dead").mkdir()
    try:
        proc, port = _entry("nginx", tmp_path / "live", ports, {"RADLOOP_REPLICA_PORTS_STREAMING_GATEWAY": str(second.port)})
        procs.append(proc)
        conf = next((tmp_path / "live" / "run").glob("entry-*/nginx.conf")).read_text()
        assert f"server 127.0.0.1:{first.port};" in conf and f"server 127.0.0.1:{second.port};" in conf
        answered = [json.loads(_request(port, "GET", "/dicomweb/studies")[2])["upstream"] for _ in range(20)]
        assert set(answered) == {"gateway-1", "gateway-2"}, answered
        assert len(first.seen) + len(second.seen) == 20 and not ingestion.seen
        # a replica that is down (nothing listens on its port): every GET is answered by the other
        proc, port = _entry("nginx", tmp_path / "dead", ports, {"RADLOOP_REPLICA_PORTS_STREAMING_GATEWAY": str(free_port())})
        procs.append(proc)
        for _ in range(10):
            status, _h, body = _request(port, "GET", "/dicomweb/studies")
            assert status == 200 and json.loads(body)["upstream"] == "gateway-1"
    finally:
        for proc in procs:
            _stop(proc)
        for u in (ingestion, first, second):
            u.close()


def test_a_failed_upstream_leaves_no_query_string_in_the_entry_log(tmp_path: Path) -> None:
    """nginx's error-level lines quote the request line: an upstream that was down put a QIDO's patient name and
    birth date in the entry's log on every restart (found by a review). The entry logs crit and above, and each
    failed request (5xx) by method, path and status only."""
    if shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None:
        pytest.skip("nginx is not installed (make setup installs Debian's nginx)")
    ports = {"ingestion": free_port(), "streaming_gateway": free_port(), "verification": free_port()}  # all down
    proc, port = _entry("nginx", tmp_path, ports)
    try:
        status, _h, _b = _request(port, "GET", "/dicomweb/studies?PatientName=CANARY%5ENAME&PatientBirthDate=19230517")
        assert status == 502
    finally:
        _stop(proc)
    log = (tmp_path / "entry.log").read_text(errors="replace")
    assert "CANARY" not in log and "19230517" not in log and "PatientName" not in log, log
    assert "GET /dicomweb/studies 502" in log, log
