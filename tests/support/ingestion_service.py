"""Run the real ingestion service (``python -m services.ingestion``) in a subprocess for tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from radloop.local.embedded_aws import free_port
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningService:
    url: str
    dimse_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    settings: Settings

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_kib(self) -> int:
        """Peak resident memory (VmHWM) of the service process plus its worker processes, in KiB."""
        pids = [self.process.pid] + _children(self.process.pid)
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = (task / "children").read_text().split()
            for k in kids:
                out.append(int(k))
                out.extend(_children(int(k)))
    except OSError:
        pass
    return out


@contextmanager
def ingestion_service(settings: Settings, tmp: Path, *, dimse: bool = False, env: dict[str, str] | None = None,
                      timeout_s: float = 60.0) -> Iterator[RunningService]:
    """Start the service against ``settings`` (its prefix and endpoint), wait for /readyz, stop it (SIGTERM) after."""
    port = free_port()
    dimse_port = free_port() if dimse else 0
    log_path = tmp / f"ingestion-{port}.log"
    penv = dict(os.environ)
    penv.update({
        "AWS_ENDPOINT_URL": settings.aws_endpoint_url, "RADLOOP_PREFIX": settings.prefix, "RADLOOP_PORT": str(port),
        "RADLOOP_VAR_DIR": str(tmp / "var"), "RADLOOP_DIMSE_PORT": str(dimse_port), "RADLOOP_CONSUMER_WAIT_TIME_S": "1",
        "RADLOOP_AWS_MAX_ATTEMPTS": "3", "PYTHONPATH": str(ROOT), "RADLOOP_DRAIN_TIMEOUT_S": "5",
    })
    penv.update(env or {})
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "services.ingestion"], cwd=ROOT, env=penv, stdout=logf,
                                stderr=subprocess.STDOUT)
    svc = RunningService(f"http://127.0.0.1:{port}", dimse_port, proc, log_path, settings)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"ingestion service exited with {proc.returncode}:\n{svc.log()[-3000:]}")
            try:
                if httpx.get(f"{svc.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingestion service not ready after {timeout_s}s:\n{svc.log()[-3000:]}")
            time.sleep(0.2)
        yield svc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
