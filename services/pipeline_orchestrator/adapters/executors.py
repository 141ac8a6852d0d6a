"""Pipeline execution backends: the docker-free local executor (a subprocess) and SageMaker Pipelines.

Both return the same *status document* the local executor writes (training contract)::

    {"execution_id", "status": "Executing"|"Succeeded"|"Failed"|"Stopped", "started_at", "ended_at", "failure_reason",
     "steps": [{"name", "type", "status", "started_at", "ended_at", "failure_reason", "log_tail"}],
     "outputs": {"metrics": {...}, "evaluation_uri", "model_artifact_uri", "model_package_arn"}}

Local executions run in their own session (``start_new_session``) so that they survive an orchestrator restart: the
next orchestrator re-attaches through the status file and the process id recorded in the run item.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from services.pipeline_orchestrator.settings import OrchestratorSettings
from shared.approval import POLICY_FILE_ENV
from shared.aws import AwsClients, child_env

log = logging.getLogger(__name__)
LOG_TAIL_CHARS = 2000


class Executor(Protocol):
    kind: str

    async def prepare(self) -> None:
        """Make sure an execution can start (definition generated, pipeline upserted)."""

    async def start(self, run_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """Start an execution; returns the handle fields stored on the run item."""

    async def poll(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """The current status document of a run, or None when nothing is known yet."""


class ExecutorError(RuntimeError):
    """The execution could not be started."""


def _child_env(settings: OrchestratorSettings) -> dict[str, str]:
    env = child_env(settings)
    # The definition's gate defaults come from the same policy document as this service's parameters.
    env[POLICY_FILE_ENV] = str(Path(settings.approval_policy_file).resolve())
    return env


def tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    """The last ``chars`` characters of a text file ('' if absent)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


class DefinitionSource:
    """The pipeline definition JSON: the configured file, or generated once with ``training.pipeline``."""

    def __init__(self, settings: OrchestratorSettings) -> None:
        self.settings = settings
        self._lock = asyncio.Lock()

    async def path(self) -> Path:
        if self.settings.pipeline_definition:
            return self.settings.pipeline_definition
        out = self.settings.work_dir / "definition.json"
        async with self._lock:
            if out.exists() and out.stat().st_size > 0:
                return out
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            proc = await asyncio.create_subprocess_exec(
                self.settings.executor_python or sys.executable, "-m", "training.pipeline", "definition",
                "--out", str(tmp),
                env=_child_env(self.settings), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            try:
                stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise ExecutorError("generating the pipeline definition took longer than 300 s") from None
            if proc.returncode != 0 or not tmp.exists():
                raise ExecutorError(
                    f"`python -m training.pipeline definition` exited with status {proc.returncode}: "
                    f"{stdout.decode('utf-8', 'replace')[-LOG_TAIL_CHARS:]}"
                )
            tmp.replace(out)
            return out


def process_alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` is a live (non-zombie) process whose command line contains ``marker`` (guards PID reuse)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return marker in cmdline and state not in ("Z", "X")


class LocalExecutor:
    """Runs ``python -m training.local_executor run ...`` as a detached subprocess, tracked by its status file."""

    kind = "local"

    def __init__(self, settings: OrchestratorSettings, definitions: DefinitionSource) -> None:
        self.settings = settings
        self.definitions = definitions
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    async def prepare(self) -> None:
        await self.definitions.path()

    def run_dir(self, run_id: str) -> Path:
        return (self.settings.work_dir / "runs" / run_id).resolve()

    async def start(self, run_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
        definition = await self.definitions.path()
        return self._spawn(run_id, parameters, definition)

    def _spawn(self, run_id: str, parameters: dict[str, Any], definition: Path) -> dict[str, Any]:
        # Synchronous on purpose: Popen returns once the child exists (milliseconds), and a detached child must not be
        # tied to the event loop's child watcher, since it outlives this process.
        d = self.run_dir(run_id)
        d.mkdir(parents=True, exist_ok=True)
        params_file, status_file, log_file = d / "parameters.json", d / "status.json", d / "executor.log"
        params_file.write_text(json.dumps(parameters, indent=2))
        argv = [
            self.settings.executor_python or sys.executable, "-m", "training.local_executor", "run",
            "--definition", str(Path(definition).resolve()), "--parameters", str(params_file),
            "--execution-id", run_id, "--status-file", str(status_file),
        ]
        with log_file.open("ab") as out:
            # Its own session: a restart (or SIGTERM) of the orchestrator does not take the execution with it.
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=_child_env(self.settings), cwd=str(d),
                start_new_session=True,
            )
        self._children[run_id] = proc
        log.info("local execution started", extra={"run_id": run_id, "pid": proc.pid})
        return {"pid": proc.pid, "status_file": str(status_file), "log_file": str(log_file)}

    async def poll(self, run: dict[str, Any]) -> dict[str, Any] | None:
        run_id = run["run_id"]
        status_file = Path(run.get("status_file") or self.run_dir(run_id) / "status.json")
        log_file = Path(run.get("log_file") or self.run_dir(run_id) / "executor.log")
        doc = _read_json(status_file)
        if doc and doc.get("status") in ("Succeeded", "Failed", "Stopped"):
            self._reap(run_id)
            return doc
        pid = run.get("pid")
        child = self._children.get(run_id)
        if child is not None:
            code = child.poll()
            alive = code is None
        else:
            code = None
            alive = bool(pid) and process_alive(int(pid or 0), run_id)
        if alive:
            return doc
        # The process is gone. Read the file once more: it may have been finalised just before the exit.
        doc = _read_json(status_file) or {}
        if doc.get("status") in ("Succeeded", "Failed", "Stopped"):
            self._reap(run_id)
            return doc
        self._reap(run_id)
        if child is not None:
            why = f"the local executor exited with status {code} without writing a final status"
        elif not pid:
            why = "the orchestrator stopped before the local executor was started"
        else:
            why = f"the local executor (pid {pid}) is no longer running and left no final status"
        doc = dict(doc or {"execution_id": run_id, "steps": [], "outputs": {}})
        doc.update(status="Failed", failure_reason=f"{why}; log tail: {tail(log_file, 500)!r}", ended_at=_iso())
        return doc

    def _reap(self, run_id: str) -> None:
        child = self._children.pop(run_id, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=5)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _iso(ts: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts if ts is not None else time.time()))


class SageMakerExecutor:
    """``StartPipelineExecution`` on the pipeline (created or updated from the definition), tracked by polling
    ``DescribePipelineExecution`` (the EventBridge status-change event, where routed, only shortens the wait)."""

    kind = "sagemaker"

    def __init__(self, settings: OrchestratorSettings, clients: AwsClients, definitions: DefinitionSource) -> None:
        self.settings = settings
        self.clients = clients
        self.definitions = definitions
        self._upserted = False

    async def prepare(self) -> None:
        await self._upsert_pipeline(await self.clients.sagemaker())

    async def _upsert_pipeline(self, sm: Any) -> None:
        if self._upserted:
            return
        path = await self.definitions.path()
        body = await asyncio.to_thread(Path(path).read_text)
        name = self.settings.resolved_pipeline_name
        kw = {"PipelineName": name, "PipelineDefinition": body, "RoleArn": self.settings.pipeline_role_arn}
        try:
            await sm.describe_pipeline(PipelineName=name)
            await sm.update_pipeline(**kw)
        except Exception as exc:
            if not any(m in str(exc) for m in ("ResourceNotFound", "does not exist", "Could not find")):
                raise
            await sm.create_pipeline(**kw, PipelineDisplayName=name)
        self._upserted = True

    async def start(self, run_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
        sm = await self.clients.sagemaker()
        await self._upsert_pipeline(sm)
        resp = await sm.start_pipeline_execution(
            PipelineName=self.settings.resolved_pipeline_name,
            PipelineExecutionDisplayName=run_id,
            PipelineParameters=[{"Name": k, "Value": str(v)} for k, v in parameters.items()],
            # Derived from the run id (32-128 characters), so a retried start is idempotent on SageMaker's side.
            ClientRequestToken=hashlib.sha256(run_id.encode()).hexdigest(),
        )
        return {"pipeline_execution": resp["PipelineExecutionArn"]}

    async def poll(self, run: dict[str, Any]) -> dict[str, Any] | None:
        arn = run.get("pipeline_execution")
        if not arn:
            return {"execution_id": run["run_id"], "status": "Failed", "steps": [], "outputs": {},
                    "failure_reason": "the orchestrator stopped before StartPipelineExecution returned"}
        sm = await self.clients.sagemaker()
        desc = await sm.describe_pipeline_execution(PipelineExecutionArn=arn)
        status = desc.get("PipelineExecutionStatus", "Executing")
        status = "Executing" if status == "Stopping" else status
        doc: dict[str, Any] = {
            "execution_id": run["run_id"], "status": status, "failure_reason": desc.get("FailureReason"),
            "started_at": str(desc.get("CreationTime", "")), "ended_at": str(desc.get("LastModifiedTime", "")),
            "steps": [], "outputs": {},
        }
        if status in ("Succeeded", "Failed", "Stopped"):
            doc["steps"], doc["outputs"] = await self._steps_and_outputs(sm, arn)
        return doc

    async def _steps_and_outputs(self, sm: Any, arn: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        steps: list[dict[str, Any]] = []
        outputs: dict[str, Any] = {}
        try:
            resp = await sm.list_pipeline_execution_steps(PipelineExecutionArn=arn, SortOrder="Ascending")
        except Exception as exc:  # the embedded endpoint does not implement it; the run still completes
            log.warning("list_pipeline_execution_steps failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            return steps, outputs
        for s in resp.get("PipelineExecutionSteps", []):
            steps.append({
                "name": s.get("StepName"), "type": s.get("StepDisplayName") or "", "status": s.get("StepStatus"),
                "started_at": str(s.get("StartTime", "")), "ended_at": str(s.get("EndTime", "")),
                "failure_reason": s.get("FailureReason"), "log_tail": "",
            })
            meta = s.get("Metadata", {})
            if "RegisterModel" in meta:
                outputs["model_package_arn"] = meta["RegisterModel"]["Arn"]
        if outputs.get("model_package_arn"):
            pkg = await sm.describe_model_package(ModelPackageName=outputs["model_package_arn"])
            containers = pkg.get("InferenceSpecification", {}).get("Containers", [])
            if containers:
                outputs["model_artifact_uri"] = containers[0].get("ModelDataUrl")
            stats = pkg.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {})
            outputs["evaluation_uri"] = stats.get("S3Uri")
        return steps, outputs
