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

The status file is rewritten atomically as the run goes. Exit status 0 when the execution succeeded, 1 when it failed
(including a failed condition that ran the Fail step).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("radloop.training.local_executor")
REPO_ROOT = Path(__file__).resolve().parent.parent
SUPPORTED_STEP_TYPES = ("Processing", "Training", "Condition", "RegisterModel", "Fail")
SUPPORTED_CONDITIONS = ("GreaterThanOrEqualTo", "GreaterThan", "LessThanOrEqualTo", "LessThan", "Equals")
IGNORED_TOP_LEVEL = ("Version", "Metadata", "Parameters", "Steps", "PipelineExperimentConfig", "MlflowConfig")
LOG_TAIL_LINES = 40


class UnsupportedConstruct(ValueError):
    """The definition uses something this executor does not implement (named in the message)."""


class StepFailed(RuntimeError):
    def __init__(self, reason: str, log_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------------------------------
# S3 helpers


def split_s3(uri: str) -> tuple[str, str]:
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise StepFailed(f"expected an s3:// URI, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket:
        raise StepFailed(f"S3 URI {uri!r} has no bucket")
    return bucket, key


def download_prefix(s3: Any, uri: str, dest: Path) -> int:
    """SageMaker S3Prefix semantics: every object under the prefix, keyed relative to it (a single object keeps its
    base name). Returns the number of objects; raises when there are none."""
    bucket, prefix = split_s3(uri)
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            if key.endswith("/"):
                continue
            rel = key[len(prefix):].lstrip("/") if key != prefix else Path(key).name
            if not rel:
                rel = Path(key).name
            target = (dest / rel).resolve()
            if not str(target).startswith(str(dest.resolve())):
                raise StepFailed(f"S3 key {key!r} would be written outside {dest}")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, key, str(target))
            n += 1
    if n == 0:
        raise StepFailed(f"no objects found under {uri}")
    return n


def upload_dir(s3: Any, src: Path, uri: str) -> int:
    bucket, prefix = split_s3(uri)
    n = 0
    for f in sorted(src.rglob("*")):
        if f.is_file():
            key = "/".join(p for p in (prefix.rstrip("/"), f.relative_to(src).as_posix()) if p)
            s3.upload_file(str(f), bucket, key)
            n += 1
    return n


# ---------------------------------------------------------------------------------------------------------------------
# expressions


_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[(?:'([^']*)'|\"([^\"]*)\"|(\d+))\]")


def parse_path(path: str) -> list[str | int]:
    """``A.B['x'].C[0]`` -> ['A', 'B', 'x', 'C', 0]."""
    out: list[str | int] = []
    pos = 0
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            raise UnsupportedConstruct(f"property path {path!r} has unsupported syntax at {path[pos:]!r}")
        name, q1, q2, idx = m.groups()
        out.append(name if name is not None else (int(idx) if idx is not None else (q1 if q1 is not None else q2)))
        pos = m.end()
    return out


def walk(obj: Any, tokens: list[str | int], what: str) -> Any:
    """Follow tokens through dicts/lists; a string index into a list selects the item whose *Name field matches."""
    cur = obj
    for t in tokens:
        if isinstance(cur, dict) and t in cur or isinstance(cur, list) and isinstance(t, int) and -len(cur) <= t < len(cur):
            cur = cur[t]
        elif isinstance(cur, list) and isinstance(t, str):
            hits = [x for x in cur if isinstance(x, dict) and t in (x.get("OutputName"), x.get("ChannelName"),
                                                                     x.get("InputName"), x.get("MetricName"))]
            if not hits:
                raise StepFailed(f"{what}: no item named {t!r}")
            cur = hits[0]
        else:
            raise StepFailed(f"{what}: {t!r} not found")
    return cur


def _render(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass
class StepRecord:
    name: str
    type: str
    status: str = "Executing"
    started_at: str = field(default_factory=_now)
    ended_at: str | None = None
    failure_reason: str | None = None
    log_tail: str = ""
    properties: dict[str, Any] = field(default_factory=dict)
    property_files: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, "status": self.status, "started_at": self.started_at,
                "ended_at": self.ended_at, "failure_reason": self.failure_reason, "log_tail": self.log_tail,
                "seconds": self.seconds}


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
        self.step_timeout_s = step_timeout_s
        self.training_module = training_module
        self.on_update = on_update
        self._s3, self._sm = s3, sagemaker
        self.work = work_dir or Path(tempfile.mkdtemp(prefix=f"radloop-pipeline-{_safe(execution_id)}-"))
        self.records: dict[str, StepRecord] = {}
        self.order: list[str] = []
        self.status = "Executing"
        self.started_at = _now()
        self.ended_at: str | None = None
        self.failure_reason: str | None = None
        self.outputs: dict[str, Any] = {"metrics": {}, "evaluation_uri": None, "model_artifact_uri": None,
                                        "model_package_arn": None}
        self._proc: subprocess.Popen[bytes] | None = None
        self._check_top_level()
        self.params = self._bind_parameters(parameters)
        self.steps = {s["Name"]: s for s in self._all_steps(definition.get("Steps", []))}

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

    # -- validation -------------------------------------------------------------------------------------------
    def _check_top_level(self) -> None:
        for k in self.definition:
            if k not in IGNORED_TOP_LEVEL:
                raise UnsupportedConstruct(f"pipeline definition key {k!r} is not supported by the local executor")

    def _all_steps(self, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for s in steps:
            t = s.get("Type")
            if t not in SUPPORTED_STEP_TYPES:
                raise UnsupportedConstruct(f"step {s.get('Name')!r} has type {t!r}, which the local executor does not "
                                           f"support (supported: {', '.join(SUPPORTED_STEP_TYPES)})")
            out.append(s)
            if t == "Condition":
                out += self._all_steps(s["Arguments"].get("IfSteps", []) + s["Arguments"].get("ElseSteps", []))
        names = [s["Name"] for s in out]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UnsupportedConstruct(f"step names must be unique; repeated: {sorted(dup)}")
        return out

    def _bind_parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        decl = {p["Name"]: p for p in self.definition.get("Parameters", [])}
        unknown = set(given) - set(decl)
        if unknown:
            raise ValueError(f"unknown pipeline parameter(s) {sorted(unknown)}; the definition declares {sorted(decl)}")
        out = {}
        for name, p in decl.items():
            v = given.get(name, p.get("DefaultValue"))
            if v is None:
                raise ValueError(f"pipeline parameter {name!r} has no default and no value was given")
            t = p.get("Type", "String")
            try:
                if t == "Integer":
                    if isinstance(v, float) and not v.is_integer():
                        raise ValueError
                    v = int(v)
                elif t == "Float":
                    v = float(v)
                elif t == "Boolean":
                    v = v if isinstance(v, bool) else str(v).lower() == "true"
                elif t == "String":
                    v = str(v)
                else:
                    raise UnsupportedConstruct(f"parameter type {t!r} of {name!r} is not supported")
            except (TypeError, ValueError) as exc:
                if isinstance(exc, UnsupportedConstruct):
                    raise
                raise ValueError(f"pipeline parameter {name!r} must be of type {t}, got {v!r}") from None
            out[name] = v
        return out

    # -- dependency graph ---------------------------------------------------------------------------------------
    def _refs(self, obj: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(obj, dict):
            g = obj.get("Get")
            if isinstance(g, str) and g.startswith("Steps."):
                found.add(str(parse_path(g)[1]))
            for v in obj.values():
                found |= self._refs(v)
        elif isinstance(obj, list):
            for v in obj:
                found |= self._refs(v)
        return found

    def deps(self, step: dict[str, Any]) -> set[str]:
        d = set(step.get("DependsOn") or [])
        if step["Type"] == "Condition":
            d |= self._refs(step["Arguments"].get("Conditions", []))
        else:
            d |= self._refs(step.get("Arguments", {}))
        d.discard(step["Name"])
        for n in d:
            if n not in self.steps:
                raise UnsupportedConstruct(f"step {step['Name']!r} refers to unknown step {n!r}")
        return d

    def topo(self, steps: list[dict[str, Any]], done: set[str]) -> list[dict[str, Any]]:
        """Kahn's algorithm, stable in definition order; dependencies outside ``steps`` must already be done."""
        names = {s["Name"] for s in steps}
        pending = list(steps)
        out: list[dict[str, Any]] = []
        ready_set = set(done)
        while pending:
            for s in pending:
                ds = self.deps(s)
                outside = ds - names - done
                if outside:
                    # a reference to a step in another branch or not run: SageMaker would reject the definition
                    raise UnsupportedConstruct(f"step {s['Name']!r} depends on {sorted(outside)}, which do not run "
                                               "before it")
                if ds <= ready_set:
                    out.append(s)
                    ready_set.add(s["Name"])
                    pending.remove(s)
                    break
            else:
                raise UnsupportedConstruct(f"dependency cycle among steps {[s['Name'] for s in pending]}")
        return out

    # -- expressions ---------------------------------------------------------------------------------------------
    def resolve(self, obj: Any) -> Any:
        if isinstance(obj, list):
            return [self.resolve(v) for v in obj]
        if not isinstance(obj, dict):
            return obj
        if len(obj) == 1:
            (k, v), = obj.items()
            if k == "Get":
                return self._get(v)
            if k == "Std:Join":
                vals = self.resolve(v.get("Values", []))
                return str(v.get("On", "")).join(_render(x) for x in vals)
            if k == "Std:JsonGet":
                return self._json_get(v)
            if k.startswith("Std:"):
                raise UnsupportedConstruct(f"pipeline function {k!r} is not supported by the local executor")
        return {k: self.resolve(v) for k, v in obj.items()}

    def _get(self, ref: str) -> Any:
        if not isinstance(ref, str):
            raise UnsupportedConstruct(f"Get of a non-string reference {ref!r}")
        if ref.startswith("Parameters."):
            name = ref.split(".", 1)[1]
            if name not in self.params:
                raise StepFailed(f"reference to undeclared parameter {name!r}")
            return self.params[name]
        if ref.startswith("Execution."):
            var = ref.split(".", 1)[1]
            values = {"PipelineExecutionId": self.execution_id, "PipelineName": "radloop-local",
                      "PipelineExecutionArn": f"arn:aws:sagemaker:local:000000000000:pipeline/radloop-local/execution/"
                                              f"{self.execution_id}", "StartDateTime": self.started_at,
                      "CurrentDateTime": _now()}
            if var not in values:
                raise UnsupportedConstruct(f"execution variable {var!r} is not supported")
            return values[var]
        if ref.startswith("Steps."):
            toks = parse_path(ref)
            step = str(toks[1])
            rec = self.records.get(step)
            if rec is None or rec.status != "Succeeded":
                raise StepFailed(f"{ref} refers to step {step!r}, which has not succeeded")
            if len(toks) >= 4 and toks[2] == "PropertyFiles":
                return ("property_file", step, str(toks[3]))
            return walk(rec.properties, toks[2:], ref)
        raise UnsupportedConstruct(f"Get reference {ref!r} is not supported (Parameters., Execution., Steps. are)")

    def _json_get(self, spec: dict[str, Any]) -> Any:
        pf = spec.get("PropertyFile")
        if "StepName" in spec and "S3Uri" in spec:
            raise UnsupportedConstruct("Std:JsonGet on an S3 URI is not supported; use a PropertyFile")
        ref = self.resolve(pf)
        if not (isinstance(ref, tuple) and ref[0] == "property_file"):
            raise UnsupportedConstruct(f"Std:JsonGet needs a PropertyFile reference, got {pf!r}")
        _, step, name = ref
        files = self.records[step].property_files
        if name not in files:
            raise StepFailed(f"step {step!r} has no property file {name!r}")
        path = spec.get("Path", "")
        return walk(files[name], parse_path(path), f"JsonGet {name}:{path}")

    def _condition(self, c: dict[str, Any]) -> bool:
        t = c.get("Type")
        if t not in SUPPORTED_CONDITIONS:
            raise UnsupportedConstruct(f"condition type {t!r} is not supported (supported: "
                                       f"{', '.join(SUPPORTED_CONDITIONS)})")
        left, right = self.resolve(c.get("LeftValue")), self.resolve(c.get("RightValue"))
        if t == "Equals":
            return bool(left == right or _render(left) == _render(right))
        try:
            lf, rf = float(left), float(right)
        except (TypeError, ValueError):
            raise StepFailed(f"condition {t} compares non-numbers {left!r} and {right!r}") from None
        return {"GreaterThanOrEqualTo": lf >= rf, "GreaterThan": lf > rf, "LessThanOrEqualTo": lf <= rf,
                "LessThan": lf < rf}[t]

    # -- status ----------------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return {"execution_id": self.execution_id, "status": self.status, "started_at": self.started_at,
                "ended_at": self.ended_at, "failure_reason": self.failure_reason,
                "steps": [self.records[n].public() for n in self.order], "outputs": self.outputs}

    def write_status(self) -> None:
        snap = self.snapshot()
        self.status_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        tmp.write_text(json.dumps(snap, indent=2, default=str))
        os.replace(tmp, self.status_file)
        if self.on_update:
            self.on_update(snap)

    # -- running -----------------------------------------------------------------------------------------------------
    def run(self) -> int:
        self.write_status()
        try:
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
            self.ended_at = _now()
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
                self._processing(step, rec)
            elif typ == "Training":
                self._training(step, rec)
            elif typ == "RegisterModel":
                self._register(step, rec)
            elif typ == "Condition":
                outcome = all(self._condition(c) for c in step["Arguments"].get("Conditions", []))
                rec.properties = {"Outcome": outcome}
                rec.log_tail = f"condition outcome: {outcome}"
                branch = step["Arguments"].get("IfSteps" if outcome else "ElseSteps", [])
            elif typ == "Fail":
                msg = _render(self.resolve(step.get("Arguments", {}).get("ErrorMessage", "")))
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
            rec.ended_at = _now()
            rec.seconds = round(time.monotonic() - t0, 3)
            log.info("step %s %s in %.1fs", name, rec.status, rec.seconds)
            self.write_status()
        if branch:
            self._run_steps(branch, set(self.records))

    # -- subprocess --------------------------------------------------------------------------------------------
    def _python_cmd(self, entry: list[str]) -> list[str]:
        if not entry or Path(entry[0]).name not in ("python", "python3"):
            raise UnsupportedConstruct(f"container entrypoint {entry!r} is not supported: only 'python3 ...' "
                                       "entrypoints run without Docker")
        return [sys.executable, *entry[1:]]

    def _spawn(self, cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float,
               rec: StepRecord) -> tuple[int, str]:
        full_env = dict(os.environ)
        full_env.update(env)
        full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        with open(log_path, "wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=str(REPO_ROOT),
                                          start_new_session=True)
            try:
                rc = self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(self._proc)
                rc = -9
                with open(log_path, "ab") as f:
                    f.write(f"\n[local executor] stopped after MaxRuntimeInSeconds={timeout_s:.0f}\n".encode())
            finally:
                self._proc = None
        tail = _tail(log_path)
        rec.log_tail = tail
        return rc, tail

    def _job_root(self, step: str) -> Path:
        d = self.work / _safe(step) / "opt_ml"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _map_path(self, root: Path, p: str) -> Path:
        if not isinstance(p, str) or not p.startswith("/opt/ml/"):
            raise UnsupportedConstruct(f"local path {p!r} must be under /opt/ml/")
        return root / p[len("/opt/ml/"):]

    def _timeout(self, args: dict[str, Any]) -> float:
        mx = args.get("StoppingCondition", {}).get("MaxRuntimeInSeconds")
        return min(float(mx), self.step_timeout_s) if mx else self.step_timeout_s

    def _failure(self, root: Path, rc: int, tail: str) -> str:
        f = root / "output" / "failure"
        reason = f.read_text().strip() if f.is_file() else ""
        last = next((ln for ln in reversed(tail.splitlines()) if ln.strip()), "")
        return f"exit status {rc}: {reason or last or 'no output'}"

    def _processing(self, step: dict[str, Any], rec: StepRecord) -> None:
        args = self.resolve(step["Arguments"])
        root = self._job_root(step["Name"])
        app = args.get("AppSpecification", {})
        cmd = self._python_cmd(list(app.get("ContainerEntrypoint") or []))
        cmd += [str(self._map_path(root, a)) if isinstance(a, str) and a.startswith("/opt/ml/") else str(a)
                for a in app.get("ContainerArguments") or []]
        for inp in args.get("ProcessingInputs", []):
            s3in = inp.get("S3Input")
            if not s3in:
                raise UnsupportedConstruct(f"processing input {inp.get('InputName')!r} is not an S3Input")
            if s3in.get("S3DataType", "S3Prefix") != "S3Prefix" or s3in.get("S3InputMode", "File") != "File":
                raise UnsupportedConstruct(f"processing input {inp.get('InputName')!r} uses S3DataType "
                                           f"{s3in.get('S3DataType')!r}/S3InputMode {s3in.get('S3InputMode')!r}; "
                                           "only S3Prefix/File is supported")
            download_prefix(self.s3, s3in["S3Uri"], self._map_path(root, s3in["LocalPath"]))
        outputs = args.get("ProcessingOutputConfig", {}).get("Outputs", [])
        for o in outputs:
            if "S3Output" not in o:
                raise UnsupportedConstruct(f"processing output {o.get('OutputName')!r} is not an S3Output")
            self._map_path(root, o["S3Output"]["LocalPath"]).mkdir(parents=True, exist_ok=True)
        env = {str(k): _render(v) for k, v in (args.get("Environment") or {}).items()}
        env["RADLOOP_OPT_ML"] = str(root)
        rc, tail = self._spawn(cmd, env, root.parent / "job.log", self._timeout(args), rec)
        if rc != 0:
            raise StepFailed(self._failure(root, rc, tail), tail)
        for o in outputs:
            upload_dir(self.s3, self._map_path(root, o["S3Output"]["LocalPath"]), o["S3Output"]["S3Uri"])
        # property files are read from the job's local output before it is discarded
        by_name = {o["OutputName"]: o for o in outputs}
        for pf in step.get("PropertyFiles", []):
            out = by_name.get(pf["OutputName"])
            if out is None:
                raise StepFailed(f"property file {pf['PropertyFileName']!r} names unknown output {pf['OutputName']!r}")
            path = self._map_path(root, out["S3Output"]["LocalPath"]) / pf["FilePath"]
            if not path.is_file():
                raise StepFailed(f"property file {pf['PropertyFileName']!r}: {pf['FilePath']} was not written", tail)
            rec.property_files[pf["PropertyFileName"]] = json.loads(path.read_text())
            if "binary_classification_metrics" in rec.property_files[pf["PropertyFileName"]]:
                self._record_evaluation(rec.property_files[pf["PropertyFileName"]],
                                        out["S3Output"]["S3Uri"].rstrip("/") + "/" + pf["FilePath"])
        rec.properties = {**args, "ProcessingJobName": f"{_safe(step['Name'])}-{_safe(self.execution_id)}"[:63],
                          "ProcessingJobStatus": "Completed", "ExitMessage": ""}

    def _record_evaluation(self, report: dict[str, Any], uri: str) -> None:
        metrics = {}
        for k, v in report.get("binary_classification_metrics", {}).items():
            if isinstance(v, dict) and isinstance(v.get("value"), (int, float)) and not isinstance(v["value"], bool):
                metrics[k] = v["value"]
        self.outputs["metrics"] = metrics
        self.outputs["evaluation_uri"] = uri

    def _training(self, step: dict[str, Any], rec: StepRecord) -> None:
        args = self.resolve(step["Arguments"])
        if args.get("AlgorithmSpecification", {}).get("TrainingInputMode", "File") != "File":
            raise UnsupportedConstruct("only TrainingInputMode File is supported")
        root = self._job_root(step["Name"])
        job = f"{_safe(step['Name'])}-{_safe(self.execution_id)}"[:63]
        env: dict[str, str] = {str(k): _render(v) for k, v in (args.get("Environment") or {}).items()}
        for ch in args.get("InputDataConfig", []):
            src = ch.get("DataSource", {}).get("S3DataSource")
            if not src or src.get("S3DataType", "S3Prefix") != "S3Prefix":
                raise UnsupportedConstruct(f"training channel {ch.get('ChannelName')!r} must be an S3Prefix source")
            d = root / "input" / "data" / ch["ChannelName"]
            download_prefix(self.s3, src["S3Uri"], d)
            env[f"SM_CHANNEL_{ch['ChannelName'].upper()}"] = str(d)
        hps = {str(k): _render(v) for k, v in (args.get("HyperParameters") or {}).items()}
        (root / "input" / "config").mkdir(parents=True, exist_ok=True)
        (root / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hps))
        ck = args.get("CheckpointConfig")
        ck_dir = self._map_path(root, ck.get("LocalPath", "/opt/ml/checkpoints")) if ck else root / "checkpoints"
        ck_dir.mkdir(parents=True, exist_ok=True)
        if ck:
            with contextlib.suppress(StepFailed):  # no checkpoint yet: a fresh start
                download_prefix(self.s3, ck["S3Uri"], ck_dir)
        model_d = root / "model"
        model_d.mkdir(parents=True, exist_ok=True)
        env.update({"RADLOOP_OPT_ML": str(root), "SM_MODEL_DIR": str(model_d), "SM_HPS": json.dumps(hps),
                    "SM_CHECKPOINT_DIR": str(ck_dir), "SM_OUTPUT_DIR": str(root / "output"),
                    "SM_CURRENT_HOST": "algo-1", "TRAINING_JOB_NAME": job})
        cmd = [sys.executable, "-m", self.training_module]  # the image's `train` entry point
        rc, tail = self._spawn(cmd, env, root.parent / "job.log", self._timeout(args), rec)
        if ck:  # SageMaker keeps syncing checkpoints to S3, also for a failed or interrupted job
            upload_dir(self.s3, ck_dir, ck["S3Uri"])
        if rc != 0:
            raise StepFailed(self._failure(root, rc, tail), tail)
        out_path = args.get("OutputDataConfig", {}).get("S3OutputPath")
        if not out_path:
            raise StepFailed("training step has no OutputDataConfig.S3OutputPath")
        tar = root.parent / "model.tar.gz"
        with tarfile.open(tar, "w:gz") as tf:
            for f in sorted(model_d.rglob("*")):
                if f.is_file():
                    tf.add(f, arcname=f.relative_to(model_d).as_posix())
        uri = f"{out_path.rstrip('/')}/{job}/output/model.tar.gz"
        bucket, key = split_s3(uri)
        self.s3.upload_file(str(tar), bucket, key)
        metrics = []
        log_text = (root.parent / "job.log").read_text(errors="replace")
        for md in args.get("AlgorithmSpecification", {}).get("MetricDefinitions", []) or []:
            vals = re.findall(md["Regex"], log_text)
            if vals:
                with contextlib.suppress(ValueError):
                    metrics.append({"MetricName": md["Name"], "Value": float(vals[-1])})
        rec.properties = {**args, "TrainingJobName": job, "TrainingJobStatus": "Completed",
                          "ModelArtifacts": {"S3ModelArtifacts": uri}, "FinalMetricDataList": metrics}
        self.outputs["model_artifact_uri"] = uri

    def _register(self, step: dict[str, Any], rec: StepRecord) -> None:
        args = self.resolve(step["Arguments"])
        group = args.get("ModelPackageGroupName")
        if not group:
            raise UnsupportedConstruct("RegisterModel without ModelPackageGroupName (unversioned packages) is not "
                                       "supported")
        sm = self.sagemaker
        try:
            sm.describe_model_package_group(ModelPackageGroupName=group)
        except sm.exceptions.ClientError:
            sm.create_model_package_group(ModelPackageGroupName=group,
                                          ModelPackageGroupDescription="radloop pneumonia models")
        req = {k: v for k, v in args.items() if k not in ("CertifyForMarketplace",)}
        req["CustomerMetadataProperties"] = {str(k): _render(v) for k, v in
                                             (req.get("CustomerMetadataProperties") or {}).items()}
        if req.get("SkipModelValidation") == "None":
            req.pop("SkipModelValidation")
        mm = req.get("ModelMetrics") or {}
        req["ModelMetrics"] = {k: v for k, v in mm.items() if v}  # the SDK emits empty Bias/Explainability blocks
        resp = sm.create_model_package(**req)
        arn = resp["ModelPackageArn"]
        rec.properties = {"ModelPackageArn": arn}
        rec.log_tail = f"registered {arn} in {group} ({req.get('ModelApprovalStatus')})"
        self.outputs["model_package_arn"] = arn

    def stop(self, reason: str) -> None:
        if self._proc is not None:
            _kill_group(self._proc)
        self.status, self.failure_reason, self.ended_at = "Failed", reason, _now()
        for r in self.records.values():
            if r.status == "Executing":
                r.status, r.failure_reason, r.ended_at = "Failed", reason, _now()
        self.write_status()


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _tail(path: Path, lines: int = LOG_TAIL_LINES, max_chars: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-max_chars:]


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", s)[:80] or "x"


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
        snap = {"execution_id": a.execution_id, "status": "Failed", "started_at": _now(), "ended_at": _now(),
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
