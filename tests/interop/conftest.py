"""Fixtures of the interop tests: one bootstrapped deployment for the package with the real ingestion and interop service
processes against the session's moto server, and a real DCMTK ``storescp`` as the hospital's PACS.

Processes are started once for all the interop tests and stopped by PID (SIGTERM, then SIGKILL after a bound).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pydicom
import pytest

from radloop.local.embedded_aws import free_port
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.index_writer import decode_item
from shared.settings import Settings
from tests.support.ingestion_service import ROOT, ingestion_service
from training.synthetic import generate_case

#: Calling AE titles the Q/R SCP accepts in the tests.
QR_ALLOWED = ["FINDSCU", "GETSCU", "MOVESCU", "PYNETDICOM"]


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded), else fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@dataclass
class Deployment:
    settings: Settings
    tmp: Path

    def __post_init__(self) -> None:
        kw = {"endpoint_url": self.settings.aws_endpoint_url, "region_name": "us-east-1"}
        self.s3 = boto3.client("s3", **kw)
        self.ddb = boto3.client("dynamodb", **kw)
        self.sqs = boto3.client("sqs", **kw)
        self.events = boto3.client("events", **kw)
        topo = self.settings.topology
        self.images, self.ingest, self.table = topo.bucket("images"), topo.bucket("ingestion"), topo.table("instances")

    def instance(self, study: str, series: str, sop: str) -> dict[str, Any] | None:
        r = self.ddb.get_item(TableName=self.table, Key={"pk": {"S": f"STUDY#{study}"},
                                                          "sk": {"S": f"INSTANCE#{series}#{sop}"}}, ConsistentRead=True)
        return decode_item(r["Item"]) if "Item" in r else None

    def get(self, key: str, bucket: str | None = None) -> bytes:
        return self.s3.get_object(Bucket=bucket or self.images, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def keys(self, bucket: str, prefix: str) -> list[str]:
        resp = self.s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in resp.get("Contents", [])]

    def publish(self, source: str, event: Any) -> None:
        """Put an event on the bus as the named service would."""
        resp = self.events.put_events(Entries=[{
            "Source": f"radloop.{source}", "DetailType": event.name, "Detail": event.to_detail(),
            "EventBusName": self.settings.topology.bus_name}])
        assert resp["FailedEntryCount"] == 0, resp

    def queue_depth(self, name: str) -> int:
        url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        a = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                        "ApproximateNumberOfMessagesNotVisible"])
        return sum(int(v) for v in a["Attributes"].values())

    def store_source(self, index: int, *, size: int = 96) -> pydicom.Dataset:
        """A synthetic chest radiograph, stored through the drop folder like any instance; returns its dataset."""
        ds, _label, _mask = generate_case(index, 11, size=size, prevalence=0.5, difficulty=0.0)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        self.s3.put_object(Bucket=self.ingest, Key=f"imports/src-{uuid.uuid4().hex[:8]}.dcm", Body=buf.getvalue())
        wait_until(lambda: self.instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID),
                                         str(ds.SOPInstanceUID)), 60, "the source image to be indexed")
        return ds


def new_deployment(endpoint: str, tmp: Path) -> Deployment:
    s = Settings(aws_endpoint_url=endpoint, prefix=f"iop-{uuid.uuid4().hex[:10]}", var_dir=tmp / "var",
                 aws_max_attempts=2, environment="local")

    async def boot() -> None:
        async with AwsClients(s) as c:
            await bootstrap_topology(c)

    asyncio.run(boot())
    return Deployment(s, tmp)


@dataclass
class StoreSCP:
    """A real DCMTK storescp writing what it receives to ``directory``."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def files(self) -> dict[str, pydicom.Dataset]:
        """Received objects by SOP Instance UID."""
        out: dict[str, pydicom.Dataset] = {}
        for p in self.directory.iterdir():
            if p.is_file() and not p.name.startswith("."):
                try:
                    ds = pydicom.dcmread(p)
                except Exception:  # a file still being written
                    continue
                out[str(ds.SOPInstanceUID)] = ds
        return out


@pytest.fixture(scope="package")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    d = tmp_path_factory.mktemp("storescp")
    port = free_port()
    log = open(d.parent / f"storescp-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(d), "-uf", "+xa", str(port)],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: proc.poll() is not None or _port_open(port), 15, "storescp to listen")
        assert proc.poll() is None, "storescp exited"
        yield StoreSCP(port, d, proc)
    finally:
        stop(proc)
        log.close()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class InteropService:
    url: str
    qr_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def interop_service(dep: Deployment, env: dict[str, str]) -> InteropService:
    port, qr_port = free_port(), free_port()
    log_path = dep.tmp / f"interop-{port}.log"
    penv = dict(os.environ)
    penv.update({
        "AWS_ENDPOINT_URL": dep.settings.aws_endpoint_url, "RADLOOP_PREFIX": dep.settings.prefix,
        "RADLOOP_PORT": str(port), "RADLOOP_VAR_DIR": str(dep.tmp / "var"), "RADLOOP_CONSUMER_WAIT_TIME_S": "1",
        "RADLOOP_AWS_MAX_ATTEMPTS": "3", "PYTHONPATH": str(ROOT), "RADLOOP_DRAIN_TIMEOUT_S": "5",
        "RADLOOP_QR_PORT": str(qr_port), "RADLOOP_QR_ALLOWED_CALLING_AES": json.dumps(QR_ALLOWED),
        "RADLOOP_ENVIRONMENT": "local",
    })
    penv.update(env)
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "services.interop"], cwd=ROOT, env=penv, stdout=logf,
                                stderr=subprocess.STDOUT)
    svc = InteropService(f"http://127.0.0.1:{port}", qr_port, proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"interop service exited with {proc.returncode}:\n{svc.log()[-3000:]}")
        try:
            return httpx.get(f"{svc.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 60, "the interop service to be ready")
    except BaseException:
        stop(proc)
        raise
    return svc


@dataclass
class Platform:
    dep: Deployment
    interop: InteropService
    pacs: StoreSCP
    #: ingestion's C-STORE SCP (AE title RADLOOP)
    ingestion_dimse_port: int = 0


@pytest.fixture(scope="package")
def platform(aws_endpoint: str, storescp: StoreSCP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """Ingestion and interop running on one deployment; results forwarded (C-STORE) and C-MOVEd to ``storescp``."""
    tmp = tmp_path_factory.mktemp("interop")
    dep = new_deployment(aws_endpoint, tmp)
    env = {
        "RADLOOP_INTEROP_DESTINATIONS": json.dumps([{"name": "pacs", "kind": "dimse", "ae_title": "STORESCP",
                                                     "host": "127.0.0.1", "port": storescp.port,
                                                     "calling_ae_title": "RADLOOP"}]),
        "RADLOOP_QR_MOVE_DESTINATIONS": json.dumps({"STORESCP": {"host": "127.0.0.1", "port": storescp.port}}),
    }
    with ingestion_service(dep.settings, tmp, dimse=True, env={"RADLOOP_ENVIRONMENT": "local"}) as ing:
        svc = interop_service(dep, env)
        try:
            yield Platform(dep, svc, storescp, ing.dimse_port)
        finally:
            stop(svc.process)


@dataclass
class ScoredStudy:
    """One source image with its AI SR and SEG stored (and forwarded): what the flow and Q/R tests look at."""

    source: pydicom.Dataset
    model_version: int
    sr: tuple[str, str]  # (series, sop)
    seg: tuple[str, str]

    @property
    def study(self) -> str:
        return str(self.source.StudyInstanceUID)


@pytest.fixture(scope="package")
def scored(platform: Platform) -> ScoredStudy:
    """Store a source image and its heatmap, announce it scored, wait for the SR and the SEG to be indexed."""
    import numpy as np

    from services.interop.domain import builders as b
    from services.triage.domain.gradcam import overlay_png
    from shared import storage
    from shared.events import InstanceScored

    dep = platform.dep
    src = dep.store_source(1)
    study, series, sop = str(src.StudyInstanceUID), str(src.SeriesInstanceUID), str(src.SOPInstanceUID)
    cam = np.zeros((8, 8), dtype=np.float32)
    cam[2:5, 3:6] = 1.0
    key = storage.heatmap_key(study, series, sop, 3)
    dep.s3.put_object(Bucket=dep.images, Key=key, Body=overlay_png(cam, int(src.Rows), int(src.Columns)))
    dep.publish("triage", InstanceScored(study_uid=study, series_uid=series, sop_uid=sop, status="scored",
                                         probability=0.91, threshold=0.42, priority="urgent", model_version=3,
                                         heatmap_key=key, patient_pseudo_id="p" * 32))
    sr = (b.series_uid(study, "ai-sr", 3), b.sop_uid(sop, "ai-sr", 3))
    seg = (b.series_uid(study, "ai-seg", 3), b.sop_uid(sop, "ai-seg", 3))
    wait_until(lambda: dep.instance(study, *sr) and dep.instance(study, *seg), 90,
               f"the AI SR and SEG to be indexed\n{platform.interop.log()[-3000:]}")
    return ScoredStudy(src, 3, sr, seg)
