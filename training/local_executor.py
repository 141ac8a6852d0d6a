"""Run a SageMaker pipeline definition JSON on this machine, without Docker.

SageMaker's own local mode needs Docker Compose and has no RegisterModel, so this executor interprets the definition
that :mod:`training.pipeline` produced with the SDK, and nothing else:

- steps run in dependency order (``DependsOn`` plus every ``Steps.<name>`` reference in their arguments);
- **Processing** and **Training** steps run the same scripts as the container, as subprocesses of this Python, in a
  temporary ``/opt/ml``-like tree (``RADLOOP_OPT_ML``): inputs are downloaded from S3 (the embedded endpoint, through
  ``AWS_ENDPOINT_URL``), outputs uploaded after the job; a training job's ``/opt/ml/model`` becomes
  ``{S3OutputPath}/{job}/output/model.tar.gz`` and its checkpoints are synced with ``CheckpointConfig.S3Uri``;
- ``Get`` (parameters, execution variables, step properties), ``Std:Join``, ``Std:JsonGet`` and PropertyFiles resolve
  as SageMaker resolves them;
- **Condition** steps evaluate their comparisons and run the if- or else-branch;
- **RegisterModel** calls ``CreateModelPackage`` on the SageMaker endpoint, **Fail** fails the execution with its
  message;
- any other step type, expression, condition or input mode is refused with an error naming it.

CLI (contracts_ml.md)::

    python -m training.local_executor run --definition FILE --parameters FILE.json --execution-id ID \
        --status-file FILE

The parts: :mod:`training.local_executor_definition` (validation, the step graph, expressions) and
:mod:`training.local_executor_jobs` (the jobs as subprocesses, S3 transfer, RegisterModel); this module runs the steps
in order and keeps the execution's status.

The status file is rewritten atomically as the run goes. Exit status 0 when the execution succeeded, 1 when it failed
(including a failed condition that ran the Fail step).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.local_executor_definition import (
    Definition,
    Resolver,
    StepFailed,
    StepRecord,
    UnsupportedConstruct,
    now_iso,
    parse_path,
    render_value,
    walk,
)
from training.local_executor_jobs import JobRunner, download_prefix, safe_name, split_s3, upload_dir

#: Names callers import from here, wherever they are defined.
__all__ = ["Executor", "StepFailed", "StepRecord", "UnsupportedConstruct", "download_prefix", "load_parameters",
           "main", "parse_path", "split_s3", "upload_dir", "walk"]

log = logging.getLogger("radloop.training.local_executor")


class Executor:
    """Interprets one pipeline definition for one execution."""

    def __init__(self, definition: dict[str, Any], parameters: dict[str, Any], execution_id: str, status_file: Path,
                 *, work_dir: Path | None = None, keep: bool = False, step_timeout_s: float = 3600.0,
                 training_module: str = "training.train", s3: Any = None, sagemaker: Any = None,
                 on_update: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.definition = definition
        self.execution_id = execution_id
        self.status_file = status_file
        self.keep = keep
        self.on_update = on_update
        self._s3, self._sm = s3, sagemaker
        #: the job trees' directory: ``work_dir``, or a private temporary one that :meth:`run` makes and removes
        unique = f"radloop-pipeline-{safe_name(execution_id)}-{uuid.uuid4().hex[:12]}"
        self.work = work_dir or Path(tempfile.gettempdir()) / unique
        self._own_work = work_dir is None
        self.records: dict[str, StepRecord] = {}
        self.order: list[str] = []
        self.status = "Executing"
        self.started_at = now_iso()
        self.ended_at: str | None = None
        self.failure_reason: str | None = None
        self.outputs: dict[str, Any] = {"metrics": {}, "evaluation_uri": None, "model_artifact_uri": None,
                                        "model_package_arn": None}
        self._definition = Definition(definition, parameters)  # refuses what is unsupported before any step runs
        self.params = self._definition.params
        self.steps = self._definition.steps
        self._expressions = Resolver(self.params, execution_id, self.started_at, self.records)
        self._jobs = JobRunner(self.work, execution_id, step_timeout_s=step_timeout_s, training_module=training_module,
                               resolve=self.resolve, s3=lambda: self.s3, sagemaker=lambda: self.sagemaker,
                               outputs=self.outputs)

    # -- clients -----------------------------------------------------------------------------------------------
    @property
    def s3(self) -> Any:
        if self._s3 is None:
            import boto3

            self._s3 = boto3.client("s3")
        return self._s3

    @property
    def sagemaker(self) -> Any:
        if self._sm is None:
            import boto3
            from botocore.config import Config

            self._sm = boto3.client("sagemaker", config=Config(retries={"max_attempts": 2}))
        return self._sm

    # -- the definition ------------------------------------------------------------------------------------------
    def deps(self, step: dict[str, Any]) -> set[str]:
        """The steps ``step`` depends on (``DependsOn`` and its ``Steps.`` references)."""
        return self._definition.deps(step)

    def topo(self, steps: list[dict[str, Any]], done: set[str]) -> list[dict[str, Any]]:
        """``steps`` in an order that runs every step after its dependencies (see :meth:`Definition.topo`)."""
        return self._definition.topo(steps, done)

    def resolve(self, obj: Any) -> Any:
        """``obj`` with every expression in it resolved against this execution."""
        return self._expressions.resolve(obj)

    def _condition(self, c: dict[str, Any]) -> bool:
        return self._expressions.condition(c)

    # -- status ----------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The execution's status as the status file holds it."""
        return {"execution_id": self.execution_id, "status": self.status, "started_at": self.started_at,
                "ended_at": self.ended_at, "failure_reason": self.failure_reason,
                "steps": [self.records[n].public() for n in self.order], "outputs": self.outputs}

    def write_status(self) -> None:
        """Rewrite the status file atomically (and tell ``on_update``)."""
        snap = self.snapshot()
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        tmp.write_text(json.dumps(snap, indent=2, default=str))
        os.replace(tmp, self.status_file)
        if self.on_update:
            self.on_update(snap)

    # -- running -----------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Run every step in order; 0 when the execution succeeded, 1 when it failed (the reason is in the status)."""
        self.write_status()
        try:
            if self._own_work:
                self.work.mkdir(mode=0o700)  # new and private, as mkdtemp makes it
            self._run_steps([s for s in self.definition.get("Steps", [])], set())
            if self.status == "Executing":
                self.status = "Succeeded"
        except StepFailed as exc:
            self.status, self.failure_reason = "Failed", exc.reason
        except UnsupportedConstruct as exc:
            self.status, self.failure_reason = "Failed", f"unsupported construct: {exc}"
        except Exception as exc:  # an executor bug or an AWS error: still leave a truthful status behind
            log.exception("local executor error")
            self.status, self.failure_reason = "Failed", f"{type(exc).__name__}: {exc}"
        finally:
            self.ended_at = now_iso()
            self.write_status()
            if not self.keep:
                shutil.rmtree(self.work, ignore_errors=True)
        return 0 if self.status == "Succeeded" else 1

    def _run_steps(self, steps: list[dict[str, Any]], done: set[str]) -> None:
        done = set(done) | {n for n, r in self.records.items() if r.status == "Succeeded"}
        for step in self.topo(steps, done):
            self._run_step(step)
            if self.status != "Executing":
                return

    def _run_step(self, step: dict[str, Any]) -> None:
        name, typ = step["Name"], step["Type"]
        rec = StepRecord(name, typ)
        self.records[name] = rec
        self.order.append(name)
        self.write_status()
        t0 = time.monotonic()
        log.info("step %s (%s) started", name, typ)
        branch: list[dict[str, Any]] | None = None
        try:
            if typ == "Processing":
                self._jobs.processing(step, rec)
            elif typ == "Training":
                self._jobs.training(step, rec)
            elif typ == "RegisterModel":
                self._jobs.register(step, rec)
            elif typ == "Condition":
                outcome = all(self._condition(c) for c in step["Arguments"].get("Conditions", []))
                rec.properties = {"Outcome": outcome}
                rec.log_tail = f"condition outcome: {outcome}"
                branch = step["Arguments"].get("IfSteps" if outcome else "ElseSteps", [])
            elif typ == "Fail":
                msg = render_value(self.resolve(step.get("Arguments", {}).get("ErrorMessage", "")))
                rec.status = "Failed"
                rec.failure_reason = msg
                self.status, self.failure_reason = "Failed", msg
            rec.status = "Succeeded" if rec.status == "Executing" else rec.status
        except StepFailed as exc:
            rec.status, rec.failure_reason, rec.log_tail = "Failed", exc.reason, exc.log_tail or rec.log_tail
            raise StepFailed(f"step {name} failed: {exc.reason}", exc.log_tail) from None
        except UnsupportedConstruct as exc:
            rec.status, rec.failure_reason = "Failed", f"unsupported construct: {exc}"
            raise
        except Exception as exc:
            rec.status, rec.failure_reason = "Failed", f"{type(exc).__name__}: {exc}"
            raise StepFailed(f"step {name} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            rec.ended_at = now_iso()
            rec.seconds = round(time.monotonic() - t0, 3)
            log.info("step %s %s in %.1fs", name, rec.status, rec.seconds)
            self.write_status()
        if branch:
            self._run_steps(branch, set(self.records))

    def stop(self, reason: str) -> None:
        """Fail the execution now with ``reason``, stopping the running job (on SIGTERM)."""
        self._jobs.kill()
        self.status, self.failure_reason, self.ended_at = "Failed", reason, now_iso()
        for r in self.records.values():
            if r.status == "Executing":
                r.status, r.failure_reason, r.ended_at = "Failed", reason, now_iso()
        self.write_status()


def load_parameters(path: str | None) -> dict[str, Any]:
    """A parameters file: ``{"Name": value}`` or SageMaker's ``[{"Name": .., "Value": ..}]``."""
    if not path:
        return {}
    data = json.loads(Path(path).read_text())
    if isinstance(data, list):
        return {d["Name"]: d["Value"] for d in data}
    if not isinstance(data, dict):
        raise ValueError(f"parameters file {path} must hold an object or a list of Name/Value pairs")
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.local_executor")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a pipeline definition")
    r.add_argument("--definition", required=True)
    r.add_argument("--parameters", default=None)
    r.add_argument("--execution-id", required=True)
    r.add_argument("--status-file", required=True)
    r.add_argument("--work-dir", default=None, help="keep job trees here (default: a temporary directory)")
    r.add_argument("--keep", action="store_true", help="do not delete the job trees afterwards")
    r.add_argument("--step-timeout", type=float, default=3600.0, help="cap on each job's runtime in seconds")
    r.add_argument("--training-module", default="training.train")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,79}", a.execution_id):
        ap.error(f"--execution-id {a.execution_id!r} must be letters, digits and dashes (at most 80)")
    status_file = Path(a.status_file)
    try:
        definition = json.loads(Path(a.definition).read_text())
        params = load_parameters(a.parameters)
        work = Path(a.work_dir) if a.work_dir else None
        if work:
            work.mkdir(parents=True, exist_ok=True)
        ex = Executor(definition, params, a.execution_id, status_file, work_dir=work, keep=a.keep or bool(work),
                      step_timeout_s=a.step_timeout, training_module=a.training_module)
    except (OSError, ValueError) as exc:  # includes UnsupportedConstruct and bad JSON: fail before any step runs
        snap = {"execution_id": a.execution_id, "status": "Failed", "started_at": now_iso(), "ended_at": now_iso(),
                "failure_reason": str(exc), "steps": [],
                "outputs": {"metrics": {}, "evaluation_uri": None, "model_artifact_uri": None, "model_package_arn": None}}
        status_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = status_file.with_name(status_file.name + ".tmp")
        tmp.write_text(json.dumps(snap, indent=2))
        os.replace(tmp, status_file)
        log.error("cannot run the definition: %s", exc)
        return 1

    def on_term(signum: int, _frame: Any) -> None:
        ex.stop(f"stopped by signal {signal.Signals(signum).name}")
        raise SystemExit(1)

    signal.signal(signal.SIGTERM, on_term)
    return ex.run()


if __name__ == "__main__":
    raise SystemExit(main())
