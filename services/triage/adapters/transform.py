"""Batch transform jobs for large re-scoring passes: one job over the unread images' original DICOM objects, run by
SageMaker Batch Transform (AWS) or by ``python -m training.serve transform`` as a subprocess (the embedded endpoint).
Both read the same SageMaker manifest and write one JSON result per object (``training/serve.py``), which the triage
task applies as it applies its own scores.

**One job per champion at a time, across tasks.** The driver of a champion's job holds a lease on a record in the
state table (key ``triage-transform#v<version>``) and renews it while the job runs. Other tasks wait for the record
to say ``done``; a driver that died leaves its lease to pass, and the next task takes the job over: the same
SageMaker job is polled again (its name is on the record), a local one is run again unless its ``_SUCCESS`` marker
says it finished. A ``done`` record keeps the next passes of that champion image by image (leftovers) until it is
older than the job timeout; a later approval of the same version (a rollback) may then run a new job.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import ClientError

from services.triage.settings import TriageSettings
from shared.aws import AwsClients, child_env
from shared.ddb import from_item, to_value, write_if
from shared.exceptions import ConditionFailedError
from shared.storage import parse_s3_uri
from shared.topology import Topology

log = logging.getLogger(__name__)
#: The checkout the local transform runs from (``training`` is importable there).
_ROOT = str(Path(__file__).resolve().parents[3])

#: State-table key of a champion's transform record.
RECORD_PREFIX = "triage-transform#v"
#: SageMaker's pattern for job and model names: at most 63 characters of letters, digits and hyphens.
NAME_MAX = 63
#: The terminal states of a job (SageMaker's words; the local runner uses the same).
TERMINAL = ("Completed", "Failed", "Stopped")
#: The content types of the job's input and output (the model package's declared types, training/serve.py).
CONTENT_TYPE, ACCEPT = "application/dicom", "application/json"


@dataclass(frozen=True)
class TransformJob:
    """One batch transform: the champion, its inputs (a manifest) and where its results go."""

    name: str
    version: int
    model_uri: str
    manifest_uri: str
    output_uri: str


@dataclass(frozen=True)
class JobOutcome:
    status: str  # Completed | Failed | Stopped | TimedOut
    reason: str = ""


def job_name(topology: Topology, version: int) -> str:
    """A new, unique job name for champion ``version`` (SageMaker never reuses a name)."""
    return f"{topology.rescore_job_prefix}{version}-{uuid.uuid4().hex[:12]}"[:NAME_MAX]


def model_name(topology: Topology, version: int, model_uri: str) -> str:
    """The SageMaker model of a champion: one per artefact (a re-approved version reuses it)."""
    return f"{topology.rescore_model_prefix}{version}-{hashlib.sha256(model_uri.encode()).hexdigest()[:10]}"[:NAME_MAX]


class TransformRunner(Protocol):
    kind: str

    async def start(self, job: TransformJob) -> None:
        """Start the job (a job of that name already started is taken over, not started twice)."""

    async def wait(self, job: TransformJob, timeout_s: float, renew: Any) -> JobOutcome:
        """Until the job ends or ``timeout_s`` passes (then it is stopped); ``renew()`` is awaited every poll."""


class LocalTransform:
    """``python -m training.serve transform`` as a child of this task (a kill takes it along; the lease passes)."""

    kind = "local"

    def __init__(self, clients: AwsClients, settings: TriageSettings) -> None:
        self.clients = clients
        self.settings = settings
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self.log_dir = Path(settings.work_dir) / "transforms"

    async def finished(self, job: TransformJob) -> bool:
        """Whether an earlier run of this job wrote its ``_SUCCESS`` marker (a take-over need not run it again)."""
        from training.serve import marker_key

        bucket, prefix = parse_s3_uri(job.output_uri, what="output URI", key_required=False)
        s3 = await self.clients.s3()
        try:
            await s3.head_object(Bucket=bucket, Key=marker_key(prefix))
        except ClientError:
            return False
        return True

    async def start(self, job: TransformJob) -> None:
        if await self.finished(job):
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / f"{job.name}.log"
        with log_file.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                self.settings.triage_transform_python or sys.executable, "-m", "training.serve", "transform",
                "--manifest", job.manifest_uri, "--model", job.model_uri, "--output", job.output_uri,
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=child_env(self.settings),
                cwd=_ROOT)
        self._procs[job.name] = proc
        log.info("local transform started", extra={"job": job.name, "pid": proc.pid})

    async def wait(self, job: TransformJob, timeout_s: float, renew: Any) -> JobOutcome:
        proc = self._procs.get(job.name)
        if proc is None:  # finished before (its marker), so start() did not run it
            return JobOutcome("Completed")
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    code = await asyncio.wait_for(proc.wait(), timeout=self.settings.triage_transform_poll_s)
                    break
                except TimeoutError:
                    if time.monotonic() > deadline:
                        await self._kill(proc)
                        return JobOutcome("TimedOut", f"the local transform ran longer than {timeout_s:.0f} s")
                    await renew()
        except asyncio.CancelledError:  # shutdown: the job goes with this task; the lease passes to the next one
            await self._kill(proc)
            raise
        finally:
            self._procs.pop(job.name, None)
        if code == 0:
            return JobOutcome("Completed")
        tail = (self.log_dir / f"{job.name}.log").read_bytes()[-500:].decode("utf-8", "replace")
        return JobOutcome("Failed", f"the local transform exited with status {code}: {tail}")

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class SageMakerTransform:
    """``CreateModel`` (once per artefact) and ``CreateTransformJob``, tracked with ``DescribeTransformJob``."""

    kind = "sagemaker"

    def __init__(self, clients: AwsClients, settings: TriageSettings) -> None:
        self.clients = clients
        self.settings = settings

    async def start(self, job: TransformJob) -> None:
        s = self.settings
        sm = await self.clients.sagemaker()
        model = model_name(s.topology, job.version, job.model_uri)
        try:
            await sm.create_model(
                ModelName=model, ExecutionRoleArn=s.triage_transform_role_arn,
                PrimaryContainer={"Image": s.triage_transform_image_uri, "ModelDataUrl": job.model_uri,
                                  "Environment": {"RADLOOP_MODEL_VERSION": str(job.version)}},
                # the container needs no network: SageMaker itself reads the originals and writes the results
                EnableNetworkIsolation=True)
        except ClientError as exc:
            if "already exist" not in str(exc).lower():
                raise
        try:
            await sm.create_transform_job(
                TransformJobName=job.name, ModelName=model, BatchStrategy="SingleRecord",
                MaxConcurrentTransforms=s.triage_transform_concurrency, MaxPayloadInMB=100,
                ModelClientConfig={"InvocationsTimeoutInSeconds": 600, "InvocationsMaxRetries": 2},
                TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "ManifestFile",
                                                                "S3Uri": job.manifest_uri}},
                                "ContentType": CONTENT_TYPE, "SplitType": "None"},
                TransformOutput={"S3OutputPath": job.output_uri, "Accept": ACCEPT, "AssembleWith": "None"},
                TransformResources={"InstanceType": s.triage_transform_instance_type, "InstanceCount": 1},
                Tags=[{"Key": "radloop:purpose", "Value": "rescore"},
                      {"Key": "radloop:model-version", "Value": str(job.version)}])
        except ClientError as exc:
            if "already exist" not in str(exc).lower() and "already in use" not in str(exc).lower():
                raise
            log.info("transform job taken over", extra={"job": job.name})

    async def wait(self, job: TransformJob, timeout_s: float, renew: Any) -> JobOutcome:
        sm = await self.clients.sagemaker()
        deadline = time.monotonic() + timeout_s
        while True:
            desc = await sm.describe_transform_job(TransformJobName=job.name)
            status = str(desc.get("TransformJobStatus", "InProgress"))
            if status in TERMINAL:
                return JobOutcome(status, str(desc.get("FailureReason") or ""))
            if time.monotonic() > deadline:
                with contextlib.suppress(ClientError):
                    await sm.stop_transform_job(TransformJobName=job.name)
                return JobOutcome("TimedOut", f"the transform job ran longer than {timeout_s:.0f} s; stopped")
            await renew()
            await asyncio.sleep(self.settings.triage_transform_poll_s)


def open_runner(clients: AwsClients, settings: TriageSettings) -> TransformRunner:
    if settings.triage_transform_executor == "sagemaker":
        return SageMakerTransform(clients, settings)
    return LocalTransform(clients, settings)


class TransformRecords:
    """The state-table record that makes one task the driver of a champion's transform job."""

    def __init__(self, clients: AwsClients, owner: str, lease_s: float, done_ttl_s: float) -> None:
        self.clients = clients
        self.table = clients.settings.topology.table("state")
        self.owner = owner
        self.lease_s = lease_s
        self.done_ttl_s = done_ttl_s

    @staticmethod
    def key(version: int) -> dict[str, Any]:
        return {"key": to_value(f"{RECORD_PREFIX}{version}")}

    async def read(self, version: int) -> dict[str, Any] | None:
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.table, Key=self.key(version), ConsistentRead=True)
        return from_item(resp["Item"]) if "Item" in resp else None

    async def claim(self, version: int, new_name: str) -> dict[str, Any] | None:
        """Become the driver: no record, a running one whose lease passed (its job is taken over), or a ``done`` one
        older than ``done_ttl_s``. Returns the record (its ``job_name`` is the job to run or take over), else None."""
        ddb = await self.clients.dynamodb()
        now = time.time()
        try:
            resp = await write_if(
                ddb.update_item, TableName=self.table, Key=self.key(version),
                UpdateExpression="SET #o = :o, lease_until = :l, job_name = if_not_exists(job_name, :n), "
                                 "#s = :running, started = if_not_exists(started, :now)",
                ConditionExpression="attribute_not_exists(#k) OR (#s = :running AND lease_until < :now) "
                                    "OR (#s = :done AND finished < :stale)",
                ExpressionAttributeNames={"#o": "owner", "#s": "status", "#k": "key"},
                ExpressionAttributeValues={":o": to_value(self.owner), ":l": to_value(now + self.lease_s),
                                           ":n": to_value(new_name), ":running": to_value("running"),
                                           ":done": to_value("done"), ":now": to_value(now),
                                           ":stale": to_value(now - self.done_ttl_s)},
                ReturnValues="ALL_NEW")
        except ConditionFailedError:
            return None
        record = from_item(resp["Attributes"]) or {}
        if record.get("finished") is not None:  # a stale done record: a new job, under a new name
            await self.restart(version, new_name)
            for stale in ("finished", "outcome", "manifest_uri", "output_uri"):
                record.pop(stale, None)
            record["job_name"] = new_name
        return record

    async def restart(self, version: int, new_name: str) -> None:
        ddb = await self.clients.dynamodb()
        await write_if(ddb.update_item, TableName=self.table, Key=self.key(version),
                       UpdateExpression="SET job_name = :n, started = :now "
                                        "REMOVE finished, outcome, manifest_uri, output_uri",
                       ConditionExpression="#o = :o", ExpressionAttributeNames={"#o": "owner"},
                       ExpressionAttributeValues={":n": to_value(new_name), ":now": to_value(time.time()),
                                                  ":o": to_value(self.owner)})

    async def set_job(self, version: int, manifest_uri: str, output_uri: str) -> None:
        """Record the job's inputs and outputs, so that a task taking the job over reads the same ones."""
        ddb = await self.clients.dynamodb()
        await write_if(ddb.update_item, TableName=self.table, Key=self.key(version),
                       UpdateExpression="SET manifest_uri = :m, output_uri = :out", ConditionExpression="#o = :o",
                       ExpressionAttributeNames={"#o": "owner"},
                       ExpressionAttributeValues={":m": to_value(manifest_uri), ":out": to_value(output_uri),
                                                  ":o": to_value(self.owner)})

    async def renew(self, version: int) -> None:
        """Extend the lease (ConditionFailedError: another task took the job over; this one stops driving)."""
        ddb = await self.clients.dynamodb()
        await write_if(ddb.update_item, TableName=self.table, Key=self.key(version),
                       UpdateExpression="SET lease_until = :l", ConditionExpression="#o = :o",
                       ExpressionAttributeNames={"#o": "owner"},
                       ExpressionAttributeValues={":l": to_value(time.time() + self.lease_s),
                                                  ":o": to_value(self.owner)})

    async def finish(self, version: int, outcome: str, detail: dict[str, Any]) -> None:
        ddb = await self.clients.dynamodb()
        with contextlib.suppress(ConditionFailedError):  # taken over meanwhile: the new driver finishes it
            await write_if(ddb.update_item, TableName=self.table, Key=self.key(version),
                           UpdateExpression="SET #s = :done, finished = :now, outcome = :out, detail = :d "
                                            "REMOVE lease_until",
                           ConditionExpression="#o = :o", ExpressionAttributeNames={"#o": "owner", "#s": "status"},
                           ExpressionAttributeValues={":done": to_value("done"), ":now": to_value(time.time()),
                                                      ":out": to_value(outcome), ":o": to_value(self.owner),
                                                      ":d": to_value(json.dumps(detail)[:2000])})


async def write_manifest(clients: AwsClients, objects: list[tuple[str, str]], manifest_bucket: str,
                         job: str) -> tuple[str, str]:
    """A SageMaker manifest of ``objects`` ((bucket, key), all in one bucket) at ``transforms/<job>/manifest.json`` of
    ``manifest_bucket``; returns (manifest URI, output URI ``.../output``)."""
    buckets = {b for b, _ in objects}
    if len(buckets) != 1:
        raise ValueError(f"a manifest reads one bucket; the originals are in {len(buckets)}")
    (bucket,) = buckets
    doc = [{"prefix": f"s3://{bucket}/"}, *(k for _, k in objects)]
    key = f"transforms/{job}/manifest.json"
    s3 = await clients.s3()
    await s3.put_object(Bucket=manifest_bucket, Key=key, Body=json.dumps(doc).encode(),
                        ContentType="application/json")
    return f"s3://{manifest_bucket}/{key}", f"s3://{manifest_bucket}/transforms/{job}/output"


async def read_results(clients: AwsClients, output_uri: str, limit: int) -> tuple[dict[str, float], list[str]]:
    """The job's results: {SOP Instance UID: probability} and the problems met (unreadable results), reading at most
    ``limit`` result objects (the manifest's size: a pass is bounded by ``triage_rescore_max``)."""
    from training.serve import RESULT_SUFFIX

    bucket, prefix = parse_s3_uri(output_uri, what="output URI", key_required=False)
    s3 = await clients.s3()
    keys: list[str] = []
    token: str | None = None
    while len(keys) < limit:
        kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix.rstrip("/") + "/", "MaxKeys": 1000}
        if token:
            kw["ContinuationToken"] = token
        resp = await s3.list_objects_v2(**kw)
        keys += [o["Key"] for o in resp.get("Contents", []) if o["Key"].endswith(RESULT_SUFFIX)]
        token = resp.get("NextContinuationToken")
        if not token:
            break
    results: dict[str, float] = {}
    problems: list[str] = []
    sem = asyncio.Semaphore(16)

    async def one(key: str) -> None:
        async with sem:
            try:
                obj = await s3.get_object(Bucket=bucket, Key=key)
                async with obj["Body"] as body:
                    doc = json.loads(await body.read())
                results[str(doc["sop_instance_uid"])] = float(doc["probability"])
            except (ClientError, ValueError, KeyError, TypeError) as exc:
                problems.append(f"{os.path.basename(key)}: {type(exc).__name__}")

    await asyncio.gather(*(one(k) for k in keys[:limit]))
    return results, problems
