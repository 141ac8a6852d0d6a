"""The jobs of a pipeline run on this machine: Processing and Training steps as subprocesses of this Python in an
``/opt/ml``-like tree (inputs downloaded from S3, outputs uploaded), and RegisterModel as ``CreateModelPackage``."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from training.local_executor_definition import StepFailed, StepRecord, UnsupportedConstruct, render_value

REPO_ROOT = Path(__file__).resolve().parent.parent
LOG_TAIL_LINES = 40


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


class JobRunner:
    """Runs the job of one Processing, Training or RegisterModel step and records its properties and outputs."""

    def __init__(self, work: Path, execution_id: str, *, step_timeout_s: float, training_module: str,
                 resolve: Callable[[Any], Any], s3: Callable[[], Any], sagemaker: Callable[[], Any],
                 outputs: dict[str, Any]) -> None:
        self.work = work
        self.execution_id = execution_id
        self.step_timeout_s = step_timeout_s
        self.training_module = training_module
        self.resolve = resolve
        self._s3, self._sm = s3, sagemaker  # created on first use
        #: the run's outputs (metrics, evaluation, model artifact, model package), shared with the executor
        self.outputs = outputs
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def s3(self) -> Any:
        return self._s3()

    @property
    def sagemaker(self) -> Any:
        return self._sm()

    def kill(self) -> None:
        """Stop the running job, if any, with its whole process group."""
        if self._proc is not None:
            kill_group(self._proc)

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
                kill_group(self._proc)
                rc = -9
                with open(log_path, "ab") as f:
                    f.write(f"\n[local executor] stopped after MaxRuntimeInSeconds={timeout_s:.0f}\n".encode())
            finally:
                self._proc = None
        tail = tail_of(log_path)
        rec.log_tail = tail
        return rc, tail

    def _job_root(self, step: str) -> Path:
        d = self.work / safe_name(step) / "opt_ml"
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

    def processing(self, step: dict[str, Any], rec: StepRecord) -> None:
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
        env = {str(k): render_value(v) for k, v in (args.get("Environment") or {}).items()}
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
        rec.properties = {**args, "ProcessingJobName": f"{safe_name(step['Name'])}-{safe_name(self.execution_id)}"[:63],
                          "ProcessingJobStatus": "Completed", "ExitMessage": ""}

    def _record_evaluation(self, report: dict[str, Any], uri: str) -> None:
        metrics = {}
        for k, v in report.get("binary_classification_metrics", {}).items():
            if isinstance(v, dict) and isinstance(v.get("value"), (int, float)) and not isinstance(v["value"], bool):
                metrics[k] = v["value"]
        self.outputs["metrics"] = metrics
        self.outputs["evaluation_uri"] = uri

    def training(self, step: dict[str, Any], rec: StepRecord) -> None:
        args = self.resolve(step["Arguments"])
        if args.get("AlgorithmSpecification", {}).get("TrainingInputMode", "File") != "File":
            raise UnsupportedConstruct("only TrainingInputMode File is supported")
        root = self._job_root(step["Name"])
        job = f"{safe_name(step['Name'])}-{safe_name(self.execution_id)}"[:63]
        env: dict[str, str] = {str(k): render_value(v) for k, v in (args.get("Environment") or {}).items()}
        for ch in args.get("InputDataConfig", []):
            src = ch.get("DataSource", {}).get("S3DataSource")
            if not src or src.get("S3DataType", "S3Prefix") != "S3Prefix":
                raise UnsupportedConstruct(f"training channel {ch.get('ChannelName')!r} must be an S3Prefix source")
            d = root / "input" / "data" / ch["ChannelName"]
            download_prefix(self.s3, src["S3Uri"], d)
            env[f"SM_CHANNEL_{ch['ChannelName'].upper()}"] = str(d)
        hps = {str(k): render_value(v) for k, v in (args.get("HyperParameters") or {}).items()}
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

    def register(self, step: dict[str, Any], rec: StepRecord) -> None:
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
        req["CustomerMetadataProperties"] = {str(k): render_value(v) for k, v in
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


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def tail_of(path: Path, lines: int = LOG_TAIL_LINES, max_chars: int = 6000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-max_chars:]


def safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", s)[:80] or "x"
