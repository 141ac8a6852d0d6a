"""The local platform: embedded AWS, every service as its own process, the entry proxy, and a supervisor.

:class:`LocalPlatform` is used by ``radloop up``, ``radloop demo`` and the end-to-end tests. It records what it
started in ``{var_dir}/run/state.json`` (PIDs, ports, endpoint, the boot id of the topology it bootstrapped) so
``radloop status`` can find it, and it stops every process it started by PID.

The embedded endpoint keeps its state in memory. The supervisor restarts it if its process dies (same port) and
re-creates the topology; and if the endpoint answers but its boot marker is gone (restarted by something else), it
re-creates the topology too. Either way the data stored before is gone: ``state.json`` records the loss
(``aws_data_lost``) and ``radloop status`` says so (:func:`shared.bootstrap.endpoint_state`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from radloop.local.embedded_aws import EmbeddedAws, free_port, port_open, start_embedded_aws
from shared.settings import DEFAULT_PORTS, Settings
from shared.topology import SERVICES

log = logging.getLogger(__name__)

HTTP_SERVICES = SERVICES  # every service process serves /healthz and /readyz


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    last_start: float = 0.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        out.close()
        self.last_start = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL the service and everything it started, as stopping an ECS task does: its process group (it leads
        one, ``start_new_session``). Killing only the service left its codec worker pool (a forkserver and its
        workers) running, orphaned, for as long as the machine was up."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def wait_or_kill(self, timeout_s: float) -> None:
        if self.process is None:
            return
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        # whatever the service started and did not stop (its group outlives it): gone with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


@dataclass
class LocalPlatform:
    settings: Settings = field(default_factory=Settings)
    ports: dict[str, int] = field(default_factory=dict)
    aws_port: int | None = None
    services: tuple[str, ...] = SERVICES
    extra_env: dict[str, str] = field(default_factory=dict)
    embedded: EmbeddedAws | None = None
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    endpoint: str = ""
    #: The boot id of the topology bootstrapped at start (see :mod:`shared.bootstrap`).
    boot_id: str | None = None
    #: Each time the endpoint was found to have lost its state: ``{"at": epoch s, "how": ...}``.
    aws_losses: list[dict[str, Any]] = field(default_factory=list)
    #: How often the endpoint's boot marker is checked by :meth:`supervise_once` (seconds).
    endpoint_check_interval_s: float = 2.0
    _last_endpoint_check: float = 0.0
    _ddb: Any = None

    def __post_init__(self) -> None:
        self.ports = {**DEFAULT_PORTS, **env_ports(), **self.ports}

    @property
    def run_dir(self) -> Path:
        return self.settings.var_dir / "run"

    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.json"

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def entry_url(self) -> str:
        return self.url("entry")

    # -- start -------------------------------------------------------------------------------------------------------
    def start(self, *, progress: Any = None) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        busy = [f"{s}:{self.ports[s]}" for s in (*self.services, "entry") if port_open(self.ports[s])]
        if busy:
            raise RuntimeError(
                f"ports already in use ({', '.join(busy)}): is another radloop running? Stop it, or set other ports"
            )
        self.endpoint = self.settings.aws_endpoint_url
        if not self.endpoint:
            self._say(progress, "starting the embedded AWS endpoint (moto server)")
            self.embedded = start_embedded_aws(self.aws_port or self.ports["aws"], log_path=self.run_dir / "aws.log")
            self.endpoint = self.embedded.endpoint
        self._say(progress, "creating the topology (bus, rules, queues, buckets, tables)")
        self.boot_id = asyncio.run(_bootstrap(self._aws_settings()))
        for extra in self.replicas().values():
            for pname in extra:  # each replica its own port, so each keeps its own /metrics and /readyz
                self.ports.setdefault(pname, free_port())
        env = self.child_env()
        for name in self.services:
            argv = [sys.executable, "-m", f"services.{name}"]
            for pname in (name, *self.replicas().get(name, ())):
                penv = dict(env, RADLOOP_PORT=str(self.ports[pname]), RADLOOP_SERVICE_NAME=name)
                self.processes[pname] = ManagedProcess(pname, argv, penv, self.run_dir / f"{pname}.log",
                                                       self.ports[pname])
        self.processes["entry"] = ManagedProcess(
            # nginx from shared/topology.py ROUTES (it execs, so this PID is nginx's master), or the Python fallback
            "entry", [sys.executable, "-m", "radloop.local.entry"], dict(env, RADLOOP_PORT=str(self.ports["entry"])),
            self.run_dir / "entry.log", self.ports["entry"],
        )
        for p in self.processes.values():
            self._say(progress, f"starting {p.name} on port {p.port}")
            p.start()
        self.write_state()

    def replicas(self) -> dict[str, list[str]]:
        """The process names of each service's extra replicas (``streaming_gateway-2``, ...), by service."""
        n = self.settings.local_gateway_replicas if "streaming_gateway" in self.services else 1
        return {"streaming_gateway": [f"streaming_gateway-{k}" for k in range(2, n + 1)]} if n > 1 else {}

    def _aws_settings(self) -> Settings:
        return self.settings.model_copy(update={"aws_endpoint_url": self.endpoint})

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.extra_env)
        env["AWS_ENDPOINT_URL"] = self.endpoint
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        env["AWS_DEFAULT_REGION"] = self.settings.region
        env["RADLOOP_PREFIX"] = self.settings.prefix
        env["RADLOOP_ENVIRONMENT"] = self.settings.environment
        env["RADLOOP_VAR_DIR"] = str(self.settings.var_dir.resolve())
        env["RADLOOP_DIMSE_PORT"] = str(self.ports["dimse"])
        env["RADLOOP_QR_PORT"] = str(self.ports["qr"])  # the interop service's Query/Retrieve SCP (docs/interop.md)
        for s in (*SERVICES, "entry"):
            env[f"RADLOOP_PORT_{s.upper()}"] = str(self.ports[s])
        for s, names in self.replicas().items():  # the entry's upstream lists them after the first
            env[f"RADLOOP_REPLICA_PORTS_{s.upper()}"] = ",".join(str(self.ports[n]) for n in names if n in self.ports)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        return env

    def write_state(self) -> None:
        state = {
            "endpoint": self.endpoint,
            "embedded_aws_pid": self.embedded.process.pid if self.embedded else None,
            "prefix": self.settings.prefix,
            "ports": self.ports,
            "pids": {n: p.pid for n, p in self.processes.items()},
            "boot_id": self.boot_id,
            "aws_data_lost": self.aws_losses,
            "started_at": time.time(),
            "supervisor_pid": os.getpid(),
        }
        self.state_path.write_text(json.dumps(state, indent=2))

    def wait_healthy(self, timeout_s: float = 90.0, *, ready: bool = True) -> dict[str, bool]:
        """Poll every service until healthy (``/readyz`` when ``ready``), bounded by ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        status: dict[str, bool] = {}
        while time.monotonic() < deadline:
            status = {n: check_http(self.url(n) + ("/readyz" if ready and n != "entry" else "/healthz"))
                      for n in self.processes}
            if all(status.values()):
                return status
            dead = [n for n, p in self.processes.items() if not p.alive()]
            if dead:
                logs = {n: tail(self.processes[n].log_path, 15) for n in dead}
                raise RuntimeError(f"service(s) exited while starting: {', '.join(dead)}\n" +
                                   "\n".join(f"--- {n}.log ---\n{t}" for n, t in logs.items()))
            time.sleep(0.25)
        bad = [n for n, ok in status.items() if not ok]
        raise RuntimeError(f"not healthy after {timeout_s:.0f}s: {', '.join(bad)} (logs in {self.run_dir})")

    # -- supervise ---------------------------------------------------------------------------------------------------
    def supervise_once(self) -> list[str]:
        """Restart crashed processes (with backoff); return the names restarted.

        Also restarts a dead embedded endpoint, or re-creates the topology of one that lost it (:meth:`check_endpoint`,
        logged as a warning and recorded in :attr:`aws_losses` and ``state.json``, not in the returned names).
        """
        self.check_endpoint()
        restarted = []
        for p in self.processes.values():
            if p.process is not None and p.process.poll() is not None:
                backoff = min(30.0, 2.0 ** min(p.restarts, 5))
                if time.monotonic() - p.last_start >= backoff:
                    p.restarts += 1
                    p.start()
                    restarted.append(p.name)
        if restarted:
            self.write_state()
        return restarted

    def check_endpoint(self, *, force: bool = False) -> bool:
        """Restart a dead embedded endpoint, or re-create the topology of one that lost it; True if either happened.

        Checked at most every :attr:`endpoint_check_interval_s` unless ``force``.
        """
        from shared.bootstrap import read_boot_id_sync

        if not self.endpoint or (not force and time.monotonic() - self._last_endpoint_check < self.endpoint_check_interval_s):
            return False
        self._last_endpoint_check = time.monotonic()
        how = ""
        if self.embedded is not None and self.embedded.process.poll() is not None:
            how = f"embedded endpoint exited with status {self.embedded.process.returncode}; restarted on the same port"
            try:
                self.embedded = start_embedded_aws(self.embedded.port, log_path=self.embedded.log_path)
            except RuntimeError:  # port not free yet, or moto failed to start: the next check tries again
                return False
        else:
            try:
                if self._ddb is None:
                    from shared.aws import boto3_client

                    self._ddb = boto3_client(self._aws_settings().model_copy(update={"aws_max_attempts": 1}), "dynamodb")
                if read_boot_id_sync(self._aws_settings(), self._ddb) is not None:
                    return False
            except Exception:  # not answering: nothing to re-create yet (services report it as unreachable)
                return False
            how = "endpoint answers without its topology (it restarted)"
        # self.boot_id stays the start-up one: status compares the endpoint's marker against it
        try:
            asyncio.run(_bootstrap(self._aws_settings()))
        except Exception as exc:  # the marker is still missing, so the next check tries again
            log.warning("re-creating the topology failed (%s: %s); retrying", type(exc).__name__, exc)
            return False
        self.aws_losses.append({"at": time.time(), "how": how})
        log.warning("the embedded AWS endpoint lost its state (%s): the data stored before is gone; the topology was "
                    "re-created. `radloop status` shows it.", how)
        self.write_state()
        return True

    # -- stop --------------------------------------------------------------------------------------------------------
    def stop(self, timeout_s: float = 30.0) -> None:
        for p in self.processes.values():
            p.terminate()
        deadline = time.monotonic() + timeout_s
        for p in self.processes.values():
            p.wait_or_kill(max(0.1, deadline - time.monotonic()))
        if self.embedded:
            self.embedded.stop()
        if self.state_path.exists():
            self.state_path.unlink()

    def __enter__(self) -> LocalPlatform:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _say(progress: Any, msg: str) -> None:
        if progress is not None:
            progress(msg)


def env_ports() -> dict[str, int]:
    """Port overrides from ``RADLOOP_PORT_<NAME>`` (e.g. RADLOOP_PORT_ENTRY=9080, RADLOOP_PORT_AWS=4567)."""
    out = {}
    for name in DEFAULT_PORTS:
        raw = os.environ.get(f"RADLOOP_PORT_{name.upper()}")
        if raw:
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise ValueError(f"RADLOOP_PORT_{name.upper()}={raw!r} is not a port number (1-65535)")
            out[name] = int(raw)
    return out


async def _bootstrap(settings: Settings) -> str:
    """Create the topology; returns the boot id in effect."""
    from shared.aws import AwsClients
    from shared.bootstrap import bootstrap_topology

    async with AwsClients(settings) as clients:
        return str((await bootstrap_topology(clients))["boot_id"])


def check_http(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return bool(200 <= r.status < 300)
    except OSError:
        return False


def fetch_json(url: str, timeout_s: float = 3.0) -> tuple[int, Any]:
    import urllib.error

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except OSError as e:
        return 0, {"error": f"{type(e).__name__}: {e}"}


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def read_state(var_dir: Path) -> dict[str, Any] | None:
    p = var_dir / "run" / "state.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())  # type: ignore[no-any-return]
    except ValueError:
        return None
