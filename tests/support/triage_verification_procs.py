"""Run the triage and verification services as real processes over HTTP for tests and benchmarks.

Each process gets a free port, the deployment's prefix and the session's moto endpoint, and is stopped by PID.
Also: a capture queue that receives copies of chosen events from the bus (to count ImageVerified, InstanceScored...),
and helpers to store a frame the way ingestion does and to publish InstanceStored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from radloop.local.embedded_aws import free_port
from shared import htj2k, storage
from shared.aws import AwsClients
from shared.champion import ChampionPointer
from shared.ddb import to_item
from shared.events import InstanceStored, pseudonymise
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One service process; ``url`` is its base URL."""

    def __init__(self, service: str, settings: Settings, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.service = service
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        e = dict(os.environ)
        e.update({
            "AWS_ENDPOINT_URL": settings.aws_endpoint_url, "RADLOOP_PREFIX": settings.prefix,
            "RADLOOP_PORT": str(self.port), "RADLOOP_VAR_DIR": str(settings.var_dir),
            "RADLOOP_CONSUMER_WAIT_TIME_S": "1", "RADLOOP_DRAIN_TIMEOUT_S": "5",
            "PYTHONPATH": str(ROOT), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": settings.region,
        })
        e.update(env or {})
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", f"services.{service}"], env=e, cwd=ROOT,
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.service} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                r = httpx.get(f"{self.url}/readyz", timeout=2)
                if r.status_code == 200:
                    return
                last = r.text
            except httpx.HTTPError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise TimeoutError(f"{self.service} not ready after {timeout_s}s ({last}):\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextlib.contextmanager
def running(service: str, settings: Settings, log_dir: Path, **env: str) -> Iterator[ServiceProcess]:
    """Start a service, wait for readiness, stop it by PID afterwards."""
    p = ServiceProcess(service, settings, log_dir / f"{service}-{time.time_ns()}.log", env)
    try:
        p.wait_ready()
        yield p
    finally:
        p.stop()


async def capture_queue(clients: AwsClients, detail_types: list[str], name: str = "capture") -> str:
    """A queue that receives a copy of every event of ``detail_types`` on the deployment's bus; returns its name."""
    s = clients.settings
    qname = f"{s.prefix}-{name}"
    sqs, events = await clients.sqs(), await clients.events()
    url = (await sqs.create_queue(QueueName=qname))["QueueUrl"]
    arn = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
    rule = f"{s.prefix}-{name}-rule"
    await events.put_rule(Name=rule, EventBusName=s.topology.bus_name,
                          EventPattern=json.dumps({"detail-type": detail_types}))
    await events.put_targets(Rule=rule, EventBusName=s.topology.bus_name, Targets=[{"Id": "capture", "Arn": arn}])
    return qname


async def captured(clients: AwsClients, qname: str, *, wait_s: float = 1.0) -> list[dict[str, Any]]:
    """The envelopes the capture queue holds now (drained)."""
    from tests.support.aws import drain_queue

    return [json.loads(m["Body"]) for m in await drain_queue(clients, qname, wait_s=wait_s, max_messages=1000)]


async def store_instance(clients: AwsClients, pixels: Any, meta: dict[str, Any], study: str, series: str, sop: str,
                         *, modality: str = "DX", body_part: str | None = "CHEST") -> InstanceStored:
    """Put frame 1 (HTJ2K) and the DICOM JSON where ingestion puts them, and return the matching InstanceStored."""
    s = clients.settings
    s3 = await clients.s3()
    bucket = s.topology.bucket("images")
    cs = htj2k.encode(pixels)
    await s3.put_object(Bucket=bucket, Key=storage.frame_key(study, series, sop, 1), Body=cs)
    await s3.put_object(Bucket=bucket, Key=storage.metadata_key(study, series, sop), Body=json.dumps(meta).encode())
    return InstanceStored(
        study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        modality=modality, body_part=body_part, view_position="PA", number_of_frames=1,
        rows=int(pixels.shape[0]), columns=int(pixels.shape[1]),
        original_key=storage.original_key(study, series, sop), frames_prefix=storage.frames_prefix(study, series, sop),
        metadata_key=storage.metadata_key(study, series, sop), content_sha256=hashlib.sha256(cs).hexdigest(),
        size_bytes=int(pixels.nbytes), htj2k_bytes=len(cs), patient_pseudo_id=pseudonymise(sop, s.pseudonym_key),
        source="stow",
    )


async def install_champion(clients: AwsClients, data: bytes, version: int, threshold: float) -> str:
    """Upload a model.tar.gz to the ml bucket and point the registry's champion item at it; returns its URI."""
    s = clients.settings
    s3, ddb = await clients.s3(), await clients.dynamodb()
    key = f"models/test-v{version}/output/model.tar.gz"
    await s3.put_object(Bucket=s.topology.bucket("ml"), Key=key, Body=data)
    uri = f"s3://{s.topology.bucket('ml')}/{key}"
    pointer = ChampionPointer(
        version=version, model_artifact_uri=uri, threshold=threshold, updated_at="2026-01-01T00:00:00Z",
        model_package_arn=f"arn:aws:sagemaker:us-east-1:000000000000:model-package/{s.prefix}/{version}")
    # written unconditionally (tests replace the champion at will); the registry uses replace_champion
    await ddb.put_item(TableName=s.topology.table("state"), Item=to_item(pointer.to_record()))
    return uri
