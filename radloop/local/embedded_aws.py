"""The embedded AWS endpoint: moto server (with radloop's DynamoDB fixes) as a child process on loopback.

moto keeps state in memory only, so the topology is bootstrapped each time the endpoint starts.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path

_PORTS = random.Random()  # its own generator: a test that seeds ``random`` must not make every caller pick alike
_EPHEMERAL_FALLBACK = (32768, 60999)  # Linux's default ip_local_port_range
_LOWEST = 10000
_GIVEN: deque[int] = deque(maxlen=4096)  # ports this process handed out: not handed out again before they are bound


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (``ip_local_port_range``)."""
    try:
        lo, hi = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return _EPHEMERAL_FALLBACK


def free_port(*, tries: int = 200) -> int:
    """A loopback port free now and outside the kernel's ephemeral range.

    A port the kernel hands out for ``bind(0)`` lies in the ephemeral range, so the next outgoing connection (a boto
    client opening one to moto, say) may take it before the process it was chosen for binds it: the CI run of
    2026-12-07 lost the quick demo that way (``[Errno 98] ... address already in use`` for a port chosen a second
    earlier). Ports below the range are never handed to outgoing connections; one is drawn at random, so callers in
    separate processes rarely draw the same one, and tried, bounded by ``tries``. One process never gets the same port
    twice (of its last 4,096), so the ports chosen for a platform's services before any of them binds are distinct.
    """
    lo, _ = ephemeral_range()
    top = lo - 1 if lo - 1 > _LOWEST + 1000 else 32767
    for _ in range(tries):
        port = _PORTS.randint(_LOWEST, top)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.append(port)
            return port
    raise RuntimeError(f"no free loopback port in {_LOWEST}-{top} after {tries} tries")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


@dataclass
class EmbeddedAws:
    """A running moto server; stop it with :meth:`stop` (by PID)."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)

    def __enter__(self) -> EmbeddedAws:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def moto_command(port: int) -> list[str]:
    """moto's server with radloop's DynamoDB fixes (see :mod:`radloop.local.moto_server`)."""
    return [sys.executable, "-m", "radloop.local.moto_server", "-H", "127.0.0.1", "-p", str(port)]


def start_embedded_aws(port: int | None = None, *, log_path: Path | None = None, timeout_s: float = 30.0) -> EmbeddedAws:
    """Start moto server on 127.0.0.1 and wait until it answers (bounded by ``timeout_s``)."""
    port = port or free_port()
    if port_open(port):
        raise RuntimeError(f"port {port} on 127.0.0.1 is already in use; choose another with --port")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    env = dict(os.environ, MOTO_ALLOW_NONEXISTENT_REGION="true")
    proc = subprocess.Popen(moto_command(port), stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with status {proc.returncode} while starting")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1):
                return EmbeddedAws(port, proc, log_path)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on port {port} within {timeout_s:.0f}s")
