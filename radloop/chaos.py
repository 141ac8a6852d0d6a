"""The chaos run (issue 16, item 6): the whole platform as real processes, mixed traffic, faults, and a count of
every effect at the end.

``python -m radloop.chaos [--images N] [--kills K] ...`` (``make chaos`` runs the full size; ``--help`` lists the
knobs). What it does:

1. **Platform.** The embedded endpoint (moto), the fault-injecting hop in front of it (:mod:`radloop.chaos_hop`),
   and every service plus the entry proxy as real processes (:class:`radloop.local.platform.LocalPlatform`, as
   ``radloop up`` starts them), on free loopback ports, pointed at the hop. An untrained ResNet-18 is installed as
   the champion so triage scores every image (scores do not depend on the weights).
2. **Traffic.** ``--images`` synthetic chest CRs, a third each through STOW-RS (batches of up to 4, through the
   entry proxy), DIMSE C-STORE (pynetdicom, up to 4 per association) and the S3 drop folder (``imports/``). A sender
   retries what was not acknowledged, as a PACS does. Meanwhile readers run QIDO-RS and WADO-RS (frames) on stored
   images, and radiologists read every ``1/--verify-every``-th image through the verification API (with an
   ``Idempotency-Key``, retried until answered).
3. **Faults**, spread over the traffic at random points (``--seed``):
   - ``--kills`` SIGKILLs, every service in turn, then at random; each killed process is started again after
     0.5-2 s and the next fault waits until it is ready;
   - one window of ``--fault-seconds`` during which the hop answers ``--fault-rate`` of the DynamoDB, EventBridge
     and S3 calls with throttling or 5xx errors;
   - a SIGTERM to ingestion while a STOW of ``--large-mb`` MB (several 8 MB instances in one request) is being
     uploaded; the client sends again whatever was not acknowledged.
4. **Checks**, once every queue is empty (bounded by ``--converge-timeout-s``): exactly one index row, one score
   (``scored``) and one worklist case per acknowledged image; no image with two ``InstanceStored`` or two
   ``InstanceScored`` effects (distinct event ids, counted on a capture queue subscribed to the bus; a redelivered
   copy of one event is counted apart, it is not a second effect); one ``ImageVerified`` per verified image; empty
   DLQs, empty ingestion outbox, no case with a pending outbox, no file left in ``imports/`` or moved to
   ``imports-rejected/``; every process exits within its stop timeout (``drain_timeout_s`` + 5 s, the ECS
   ``stopTimeout`` of ``infra/radloop_infra/compute.py``) on the final SIGTERM and on the one during the large STOW.

``--time-scale S`` divides the queues' visibility timeouts and the in-progress expiry by S (the ratios stay the
production ones, as in ``tests/shared/test_kill_ratios.py``), so a short run recovers from a kill mid-handler in
seconds instead of the production 1-2 minutes. Writes ``--out`` (``bench/results/chaos.json``), prints the figures,
and exits 1 when a check fails. Every process it starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from radloop.local.embedded_aws import free_port, start_embedded_aws
from radloop.local.platform import LocalPlatform
from shared.settings import DEFAULT_PORTS, Settings

ROOT = Path(__file__).resolve().parents[1]
STOP_MARGIN_S = 5  # as infra/radloop_infra/compute.py: ECS waits this much longer than the drain
CAPTURED = ["InstanceStored", "InstanceScored", "ImageVerified"]
CHANNELS = ("stow", "dimse", "s3")
#: The services every image passes through (killed first, so that a short run with a few kills hits them).
IMAGE_FLOW = ("ingestion", "triage", "verification", "interop")
#: How often a long run says how far it has got (images acknowledged; then what is still outstanding).
PROGRESS_EVERY_S = 30.0


@dataclass
class Config:
    images: int = 2000
    kills: int = 20
    fault_seconds: float = 30.0
    fault_rate: float = 0.3
    large_mb: int = 1024
    verify_every: int = 10
    time_scale: int = 1
    concurrency: int = 6
    size: int = 128
    converge_timeout_s: float = 1200.0
    seed: int = 16
    out: Path = ROOT / "bench" / "results" / "chaos.json"
    var_dir: Path | None = None
    drain_timeout_s: float = 30.0


@dataclass
class Image:
    index: int
    channel: str
    data: bytes
    study: str
    series: str
    sop: str
    acked_at: float | None = None
    attempts: int = 0
    large: bool = False


@dataclass
class Figures:
    sent: Counter[str] = field(default_factory=Counter)
    send_errors: Counter[str] = field(default_factory=Counter)
    reads: Counter[str] = field(default_factory=Counter)
    verifications: int = 0
    verification_errors: int = 0
    kills: list[dict[str, Any]] = field(default_factory=list)
    sigterm: dict[str, Any] = field(default_factory=dict)
    fault_window: dict[str, Any] = field(default_factory=dict)
    events: dict[str, dict[str, list[str]]] = field(default_factory=lambda: {n: defaultdict(list) for n in CAPTURED})
    faults_end: float = 0.0


def _say(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def generate_instance(size: int) -> tuple[bytes, str, str, str]:
    """A synthetic chest CR (no real patient), with the Patient and Study modules' type 2 attributes present (empty):
    (bytes, study, series, sop)."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    cr = "1.2.840.10008.5.1.4.1.1.1"
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = cr, sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = cr, sop, study, series
    ds.PatientName, ds.PatientID = "CHAOS^TEST", f"CHAOS-{uuid.uuid4().hex[:8]}"
    ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.StudyID = ""
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = time.strftime("%Y%m%d"), time.strftime("%H%M%S"), "CHAOS"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    yy, xx = np.mgrid[0:size, 0:size]
    phase = random.random() * 6
    ds.PixelData = ((np.sin(xx / 5.0 + phase) + np.cos(yy / 7.0) + 2) * 1000).astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), study, series, sop


def model_tar(input_size: int = 64) -> bytes:
    """An untrained ResNet-18 as a ``model.tar.gz`` (the scoring path does not depend on the weights)."""
    import torch

    from training.model import build_model, default_config, save_model_dir, write_model_tar

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        save_model_dir(build_model("resnet18"), default_config("resnet18", input_size, 0.5), Path(tmp) / "m")
        write_model_tar(Path(tmp) / "m", Path(tmp) / "model.tar.gz")
        return (Path(tmp) / "model.tar.gz").read_bytes()


class Chaos:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.fig = Figures()
        self.images: list[Image] = []
        self.acked: list[Image] = []
        self.verify: dict[str, Image] = {}
        self.verified: set[str] = set()
        self.failures: list[str] = []
        self.fault_lock = asyncio.Lock()
        self.sending_done = asyncio.Event()
        self.started = time.monotonic()

    # -- set up ------------------------------------------------------------------------------------------------------
    def setup(self, var: Path) -> None:
        cfg = self.cfg
        self.var = var
        self.moto = start_embedded_aws(free_port(), log_path=var / "aws.log")
        self.hop_port = free_port()
        with open(var / "hop.log", "ab") as out:
            self.hop = subprocess.Popen([sys.executable, "-m", "radloop.chaos_hop", "--port", str(self.hop_port),
                                         "--upstream", self.moto.endpoint, "--seed", str(cfg.seed)],
                                        stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                        env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.hop_url = f"http://127.0.0.1:{self.hop_port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.hop_url}/__chaos/stats", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.hop.poll() is not None:
                    raise RuntimeError("the fault hop did not start (see hop.log)") from None
                time.sleep(0.2)
        prefix = f"chaos-{uuid.uuid4().hex[:8]}"
        self.settings = Settings(environment="local", aws_endpoint_url=self.hop_url, prefix=prefix, var_dir=var / "var")
        self.direct = self.settings.model_copy(update={"aws_endpoint_url": self.moto.endpoint})
        ports = {name: free_port() for name in DEFAULT_PORTS}
        scale = max(1, cfg.time_scale)
        env = {
            "RADLOOP_IDEMPOTENCY_INPROGRESS_EXPIRY_S": str(max(2, 120 // scale)),
            "RADLOOP_DRAIN_TIMEOUT_S": str(cfg.drain_timeout_s),
            # no retraining during the run: the orchestrator only records the verified labels
            "RADLOOP_TRIGGER_MIN_NEW_LABELS": "1000000", "RADLOOP_TRIGGER_ON_DEGRADED": "false",
            # Grad-CAM for every image of an untrained model is CPU the 2-core machine does not have
            "RADLOOP_TRIAGE_HEATMAPS": "none",
            "RADLOOP_DIMSE_ALLOWED_CALLING_AES": '["*"]',
        }
        self.platform = LocalPlatform(settings=self.settings, ports=ports, extra_env=env)
        _say(f"starting the platform (prefix {prefix}, endpoint {self.moto.endpoint} behind the hop {self.hop_url})")
        self.platform.start()
        self.platform.wait_healthy(180)
        self.entry = self.platform.entry_url
        self.dimse_port = ports["dimse"]
        from shared.auth import mint_token

        self.token = mint_token(self.settings, ["pacs", "viewer"], subject="chaos-pacs")
        self.readers = [mint_token(self.settings, "radiologist", subject=f"chaos-reader-{i}") for i in (1, 2, 3)]

    async def prepare_aws(self) -> None:
        """Champion model, capture queue, scaled visibility timeouts (direct to moto, not through the hop)."""
        from shared.aws import AwsClients
        from shared.champion import ChampionPointer
        from shared.ddb import to_item

        s = self.direct
        async with AwsClients(s) as c:
            s3, ddb, sqs, events = await c.s3(), await c.dynamodb(), await c.sqs(), await c.events()
            key = "models/chaos-v1/output/model.tar.gz"
            await s3.put_object(Bucket=s.topology.bucket("ml"), Key=key, Body=await asyncio.to_thread(model_tar))
            pointer = ChampionPointer(version=1, model_artifact_uri=f"s3://{s.topology.bucket('ml')}/{key}",
                                      threshold=0.5, updated_at="2026-01-01T00:00:00Z",
                                      model_package_arn=f"arn:aws:sagemaker:us-east-1:000000000000:model-package/"
                                                        f"{s.prefix}/1")
            await ddb.put_item(TableName=s.topology.table("state"), Item=to_item(pointer.to_record()))
            qname = f"{s.prefix}-chaos-capture"
            self.capture_url = (await sqs.create_queue(QueueName=qname))["QueueUrl"]
            arn = (await sqs.get_queue_attributes(QueueUrl=self.capture_url, AttributeNames=["QueueArn"]))[
                "Attributes"]["QueueArn"]
            rule = f"{s.prefix}-chaos-capture"
            await events.put_rule(Name=rule, EventBusName=s.topology.bus_name,
                                  EventPattern=json.dumps({"detail-type": CAPTURED}))
            await events.put_targets(Rule=rule, EventBusName=s.topology.bus_name,
                                     Targets=[{"Id": "capture", "Arn": arn}])
            if self.cfg.time_scale > 1:
                for q in s.topology.queues.values():
                    url = (await sqs.get_queue_url(QueueName=q.name))["QueueUrl"]
                    vis = max(2, q.visibility_timeout_s // self.cfg.time_scale)
                    await sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": str(vis)})

    def make_images(self) -> None:
        cfg = self.cfg
        for i in range(cfg.images):
            data, study, series, sop = generate_instance(cfg.size)
            img = Image(i, CHANNELS[i % 3], data, study, series, sop)
            self.images.append(img)
            if i % cfg.verify_every == 0:
                self.verify[sop] = img
        self.rng.shuffle(self.images)

    # -- traffic -----------------------------------------------------------------------------------------------------
    async def send_stow(self, http: httpx.AsyncClient, batch: list[Image], url: str | None = None) -> list[Image]:
        """One STOW-RS request; returns the images acknowledged."""
        boundary = f"chaos-{uuid.uuid4().hex}"
        parts = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + im.data + b"\r\n"
                         for im in batch) + f"--{boundary}--\r\n".encode()
        r = await http.post(url or f"{self.entry}/dicomweb/studies", content=parts, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/dicom+json",
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        return self._stow_acked(r, batch)

    @staticmethod
    def _stow_acked(r: httpx.Response, batch: list[Image]) -> list[Image]:
        if r.status_code not in (200, 202):
            return []
        refs = r.json().get("00081199", {}).get("Value", [])
        stored = {x.get("00081155", {}).get("Value", [None])[0] for x in refs}
        return [im for im in batch if im.sop in stored]

    def send_dimse(self, batch: list[Image]) -> list[Image]:
        import pydicom
        from pynetdicom import AE
        from pynetdicom.sop_class import ComputedRadiographyImageStorage  # type: ignore[attr-defined]

        ae = AE(ae_title="CHAOS")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.add_requested_context(ComputedRadiographyImageStorage, "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", self.dimse_port, ae_title="RADLOOP")
        done: list[Image] = []
        if not assoc.is_established:
            return done
        try:
            for im in batch:
                status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(im.data)))
                if status and getattr(status, "Status", None) == 0x0000:
                    done.append(im)
                elif not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()
        return done

    async def send_s3(self, s3: Any, im: Image) -> list[Image]:
        await s3.put_object(Bucket=self.direct.topology.bucket("ingestion"), Key=f"imports/chaos/{im.sop}.dcm",
                            Body=im.data)
        return [im]

    async def sender(self, queue: asyncio.Queue[list[Image]], http: httpx.AsyncClient, s3: Any) -> None:
        while True:
            try:
                batch = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            pending = list(batch)
            backoff = 0.5
            while pending:
                channel = pending[0].channel
                for im in pending:
                    im.attempts += 1
                try:
                    if channel == "stow":
                        ok = await self.send_stow(http, pending)
                    elif channel == "dimse":
                        ok = await asyncio.to_thread(self.send_dimse, pending)
                    else:
                        ok = await self.send_s3(s3, pending[0])
                except Exception as exc:  # a killed or draining service: the sender tries again, as a PACS does
                    self.fig.send_errors[f"{channel}:{type(exc).__name__}"] += 1
                    ok = []
                now = time.monotonic()
                for im in ok:
                    im.acked_at = now
                    self.acked.append(im)
                    self.fig.sent[channel] += 1
                pending = [im for im in pending if im.acked_at is None]
                if pending:
                    if not ok:
                        self.fig.send_errors[f"{channel}:not acknowledged"] += 1
                    await asyncio.sleep(backoff + self.rng.random() * backoff)
                    backoff = min(8.0, backoff * 2)
                    if time.monotonic() - self.started > self.cfg.converge_timeout_s:
                        self.failures.append(f"{len(pending)} image(s) never acknowledged by {channel}")
                        return

    async def traffic(self) -> None:
        from shared.aws import AwsClients

        queue: asyncio.Queue[list[Image]] = asyncio.Queue()
        by_channel: dict[str, list[Image]] = defaultdict(list)
        for im in self.images:
            by_channel[im.channel].append(im)
            group = by_channel[im.channel]
            if len(group) >= (1 if im.channel == "s3" else 1 + self.rng.randrange(4)):
                queue.put_nowait(list(group))
                group.clear()
        for group in by_channel.values():
            if group:
                queue.put_nowait(list(group))
        async with AwsClients(self.direct) as c, httpx.AsyncClient(timeout=httpx.Timeout(120, connect=5)) as http:
            s3 = await c.s3()
            await asyncio.gather(*(self.sender(queue, http, s3) for _ in range(self.cfg.concurrency)))
        self.sending_done.set()

    async def reader(self) -> None:
        """QIDO-RS and WADO-RS frames on stored images (errors during kills are counted, not fatal)."""
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(timeout=30) as http:
            while not self.sending_done.is_set():
                await asyncio.sleep(0.5)
                if not self.acked:
                    continue
                im = self.rng.choice(self.acked)
                try:
                    r = await http.get(f"{self.entry}/dicomweb/studies", params={"StudyInstanceUID": im.study},
                                       headers={**headers, "Accept": "application/dicom+json"})
                    self.fig.reads[f"qido:{r.status_code}"] += 1
                    r = await http.get(f"{self.entry}/dicomweb/studies/{im.study}/series/{im.series}/instances/"
                                       f"{im.sop}/frames/1", headers={**headers, "Accept": 'multipart/related; '
                                                                      'type="application/octet-stream"; transfer-syntax=*'})
                    # an S3-drop image is acknowledged before it is ingested: a 404 for it is no error
                    self.fig.reads[f"wado:{im.channel}:{r.status_code}"] += 1
                except httpx.HTTPError as exc:
                    self.fig.reads[f"error:{type(exc).__name__}"] += 1

    async def verifier(self) -> None:
        """Radiologists read the chosen images once each has its case and score; retried until answered."""
        async with httpx.AsyncClient(timeout=30) as http:
            deadline = self.started + self.cfg.converge_timeout_s
            while time.monotonic() < deadline:
                todo = [im for im in self.acked if im.sop in self.verify and im.sop not in self.verified]
                if not todo and self.sending_done.is_set() and len(self.verified) >= len(self.verify):
                    return
                for im in todo[:8]:
                    await self._read_case(http, im)
                await asyncio.sleep(1.0)

    async def _read_case(self, http: httpx.AsyncClient, im: Image) -> None:
        try:
            r = await http.get(f"{self.entry}/verification/cases/{im.sop}",
                               headers={"Authorization": f"Bearer {self.readers[0]}"})
            if r.status_code != 200 or (r.json().get("ai") or {}).get("status") != "scored":
                return
            label = "pneumonia" if im.index % 20 == 0 else "normal"
            for i, token in enumerate(self.readers):
                r = await http.post(f"{self.entry}/verification/cases/{im.sop}/reads",
                                    json={"label": label, "confidence": 0.9},
                                    headers={"Authorization": f"Bearer {token}",
                                             "Idempotency-Key": f"chaos-{im.sop}-{i}"})
                if r.status_code != 200:
                    self.fig.verification_errors += 1
                    return
                body = r.json()
                if body.get("label_version") is not None or body.get("status") in ("final", "verified"):
                    self.verified.add(im.sop)
                    self.fig.verifications += 1
                    return
        except (httpx.HTTPError, ValueError):
            self.fig.verification_errors += 1

    async def capture(self, stop: asyncio.Event) -> None:
        """Drain the capture queue (copies of InstanceStored/InstanceScored/ImageVerified) into the counts."""
        from shared.aws import AwsClients

        async with AwsClients(self.direct) as c:
            sqs = await c.sqs()
            while True:
                resp = await sqs.receive_message(QueueUrl=self.capture_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
                msgs = resp.get("Messages", [])
                for m in msgs:
                    env = json.loads(m["Body"])
                    detail = env.get("detail") or {}
                    key = detail.get("sop_uid") or detail.get("case_id") or "?"
                    self.fig.events[env.get("detail-type", "?")][key].append(detail.get("event_id", "?"))
                if msgs:
                    await sqs.delete_message_batch(QueueUrl=self.capture_url, Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)])
                elif stop.is_set():
                    return

    # -- faults ------------------------------------------------------------------------------------------------------
    async def wait_progress(self, fraction: float) -> None:
        target = int(fraction * len(self.images))
        while len(self.acked) < target and not self.sending_done.is_set():
            await asyncio.sleep(0.2)

    async def wait_ready(self, name: str, timeout_s: float = 180.0) -> float:
        from radloop.local.platform import check_http

        t0 = time.monotonic()
        path = "/healthz" if name == "entry" else "/readyz"
        while time.monotonic() - t0 < timeout_s:
            if await asyncio.to_thread(check_http, self.platform.url(name) + path, 2.0):
                return time.monotonic() - t0
            await asyncio.sleep(0.25)
        self.failures.append(f"{name} not ready {timeout_s:.0f} s after its restart")
        return float("nan")

    async def kill(self, name: str) -> None:
        async with self.fault_lock:
            p = self.platform.processes[name]
            assert p.process is not None
            t = time.monotonic()
            await asyncio.to_thread(p.kill)  # the service and its worker processes, as ECS stops a task
            await asyncio.sleep(0.5 + 1.5 * self.rng.random())
            p.restarts += 1
            p.start()
            ready = await self.wait_ready(name)
            self.fig.kills.append({"service": name, "at_s": round(t - self.started, 1),
                                   "acked_before": len(self.acked), "ready_after_restart_s": round(ready, 2)})
            self.fig.faults_end = max(self.fig.faults_end, time.monotonic())
            _say(f"SIGKILL {name} ({len(self.fig.kills)}/{self.cfg.kills}); ready again {ready:.1f} s after restart")

    async def fault_window(self) -> None:
        cfg = self.cfg
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{self.hop_url}/__chaos/faults", json={
                "seconds": cfg.fault_seconds, "rate": cfg.fault_rate, "services": ["dynamodb", "events", "s3"]})
            r.raise_for_status()
        self.fig.fault_window = {"at_s": round(time.monotonic() - self.started, 1), "seconds": cfg.fault_seconds,
                                 "rate": cfg.fault_rate}
        _say(f"fault window: {cfg.fault_rate:.0%} of DynamoDB/EventBridge/S3 calls fail for {cfg.fault_seconds:.0f} s")
        await asyncio.sleep(cfg.fault_seconds)
        self.fig.faults_end = max(self.fig.faults_end, time.monotonic())

    async def sigterm_large_stow(self) -> None:
        """SIGTERM to ingestion halfway through a large STOW; the client then sends what was not acknowledged."""
        cfg = self.cfg
        per = 2048
        n = max(1, math.ceil(cfg.large_mb * (1 << 20) / (per * per * 2)))

        def build() -> list[Image]:
            return [Image(-1 - i, "stow", *generate_instance(per), large=True) for i in range(n)]

        large = await asyncio.to_thread(build)  # seconds of numpy for 1 GB: not on the traffic's event loop
        boundary = f"chaos-large-{uuid.uuid4().hex}"
        total = sum(len(im.data) for im in large)
        half = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            sent = 0
            for im in large:
                chunk = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + im.data + b"\r\n"
                for k in range(0, len(chunk), 1 << 20):
                    yield chunk[k:k + (1 << 20)]
                    sent += len(chunk[k:k + (1 << 20)])
                    if sent >= total // 2:
                        half.set()
                    await asyncio.sleep(0)
            yield f"--{boundary}--\r\n".encode()

        async with self.fault_lock:
            p = self.platform.processes["ingestion"]
            assert p.process is not None
            url = self.platform.url("ingestion") + "/dicomweb/studies"
            headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/dicom+json",
                       "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
            async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5)) as http:
                upload = asyncio.create_task(http.post(url, content=body(), headers=headers))
                await asyncio.wait({upload, asyncio.create_task(half.wait())}, return_when=asyncio.FIRST_COMPLETED)
                t = time.monotonic()
                p.process.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(_wait, p.process, cfg.drain_timeout_s + STOP_MARGIN_S + 30)
                exit_s = time.monotonic() - t
                try:
                    r = await upload
                    acked = self._stow_acked(r, large)
                    outcome = f"HTTP {r.status_code}"
                except httpx.HTTPError as exc:
                    acked, outcome = [], type(exc).__name__
            stop_timeout = cfg.drain_timeout_s + STOP_MARGIN_S
            self.fig.sigterm = {"size_mb": round(total / (1 << 20), 1), "instances": n, "exit_s": round(exit_s, 2),
                                "exit_code": code, "stop_timeout_s": stop_timeout, "stow_outcome": outcome,
                                "acknowledged_before_exit": len(acked)}
            if code is None or exit_s > stop_timeout:
                self.failures.append(f"ingestion took {exit_s:.1f} s to exit on SIGTERM during a large STOW "
                                     f"(stop timeout {stop_timeout:.0f} s)")
            if code not in (0, None):
                self.failures.append(f"ingestion exited with status {code} on SIGTERM during a large STOW")
            if code is None:
                p.process.kill()
                p.process.wait(10)
            _say(f"SIGTERM ingestion during a {total / (1 << 20):.0f} MB STOW: exited {code} after {exit_s:.1f} s; "
                 f"STOW {outcome}, {len(acked)}/{n} acknowledged")
            now = time.monotonic()
            for im in acked:
                im.acked_at = now
                self.acked.append(im)
                self.fig.sent["stow"] += 1
            p.start()
            await self.wait_ready("ingestion")
        rest = [im for im in large if im.acked_at is None]
        async with httpx.AsyncClient(timeout=httpx.Timeout(600, connect=5)) as http:
            for attempt in range(30):
                if not rest:
                    break
                try:
                    ok = await self.send_stow(http, rest, url)
                except httpx.HTTPError:
                    ok = []
                now = time.monotonic()
                for im in ok:
                    im.acked_at = now
                    self.acked.append(im)
                    self.fig.sent["stow"] += 1
                rest = [im for im in rest if im.acked_at is None]
                if rest:
                    await asyncio.sleep(min(10, 1 + attempt))
        if rest:
            self.failures.append(f"{len(rest)} instance(s) of the large STOW never acknowledged")
        self.images.extend(large)
        self.fig.faults_end = max(self.fig.faults_end, time.monotonic())

    async def faults(self) -> None:
        cfg = self.cfg
        names = list(self.platform.services)
        # every service in turn, the consumers of each image's events first, then at random
        first = [n for n in names if n in IMAGE_FLOW]
        rest = [n for n in names if n not in IMAGE_FLOW]
        self.rng.shuffle(first)
        self.rng.shuffle(rest)
        order = first + rest
        while len(order) < cfg.kills:
            order.append(self.rng.choice(names))
        order = order[:cfg.kills]
        plan: list[tuple[float, str, str]] = [(self.rng.uniform(0.05, 0.9), "kill", n) for n in order]
        plan.append((0.3, "window", ""))
        plan.append((0.6, "sigterm", ""))
        plan.sort()
        window: asyncio.Task[None] | None = None
        for at, what, name in plan:
            await self.wait_progress(at)
            if what == "kill":
                await self.kill(name)
            elif what == "window":
                window = asyncio.create_task(self.fault_window())
            else:
                await self.sigterm_large_stow()
        if window is not None:
            await window

    # -- checks ------------------------------------------------------------------------------------------------------
    async def state(self) -> dict[str, Any]:
        """Queues, DLQs, outboxes and the effects stored for every acknowledged image (read directly from moto)."""
        from shared.aws import AwsClients
        from shared.ddb import scan_all

        s = self.direct
        out: dict[str, Any] = {"queues": {}, "dlqs": {}}
        async with AwsClients(s) as c:
            sqs, ddb, s3 = await c.sqs(), await c.dynamodb(), await c.s3()
            for q in s.topology.queues.values():
                for name, where in ((q.name, "queues"), (q.dlq_name, "dlqs")):
                    url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
                    a = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"]))["Attributes"]
                    out[where][name] = sum(int(v) for v in a.values())
            bucket = s.topology.bucket("ingestion")
            out["imports_left"] = (await s3.list_objects_v2(Bucket=bucket, Prefix="imports/")).get("KeyCount", 0)
            out["imports_rejected"] = (await s3.list_objects_v2(Bucket=bucket, Prefix="imports-rejected/")).get(
                "KeyCount", 0)
            if sum(out["queues"].values()):
                return out
            out["outbox"] = len(await scan_all(ddb, s.topology.table("outbox")))
            index = await scan_all(ddb, s.topology.table("instances"))
            rows = Counter(str(i["sk"]).rsplit("#", 1)[-1] for i in index if str(i["sk"]).startswith("INSTANCE#"))
            scores = {str(i["sop_uid"]): i for i in await scan_all(ddb, s.topology.table("scores"))}
            cases = {str(i["case_id"]): i for i in await scan_all(ddb, s.topology.table("cases"))}
        out["pending_case_outboxes"] = sum(1 for c in cases.values() if c.get("outbox"))
        sops = [im.sop for im in self.acked]
        out["missing_index"] = [x for x in sops if rows[x] == 0]
        out["duplicate_index"] = [x for x in sops if rows[x] > 1]
        out["missing_score"] = [x for x in sops if (scores.get(x) or {}).get("status") != "scored"]
        out["missing_case"] = [x for x in sops if x not in cases]
        out["case_unscored"] = [x for x in sops if x in cases and ((cases[x].get("score") or {}).get("status")
                                                                    != "scored")]
        # rows for instances nobody sent: derived objects (the interop service's AI SRs, dropped into imports/interop/)
        out["derived_index"] = sorted(set(rows) - set(sops))
        return out

    async def progress(self, stop: asyncio.Event, every_s: float = PROGRESS_EVERY_S) -> None:
        """While images are sent: a line every ``every_s`` saying how many are acknowledged, and at what rate."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set():
                return
            n, elapsed = len(self.acked), max(1e-3, time.monotonic() - self.started)
            _say(f"{n}/{len(self.images)} images acknowledged ({n / elapsed:.2f}/s), "
                 f"{len(self.fig.kills)}/{self.cfg.kills} kills")

    async def converge(self) -> tuple[dict[str, Any], float]:
        """Poll until every effect is there and every queue is empty, bounded by ``converge_timeout_s``; a line of
        what is still outstanding every :data:`PROGRESS_EVERY_S`."""
        deadline = self.started + self.cfg.converge_timeout_s
        st: dict[str, Any] = {}
        next_line = time.monotonic() + PROGRESS_EVERY_S
        while True:
            st = await self.state()
            done = (not sum(st["queues"].values()) and not st["imports_left"] and "outbox" in st
                    and not st["outbox"] and not st["pending_case_outboxes"]
                    and not any(st[k] for k in ("missing_index", "missing_score", "missing_case", "case_unscored"))
                    and len(self.verified) >= len(self.verify.keys() & {im.sop for im in self.acked}))
            if done or time.monotonic() > deadline:
                return st, time.monotonic()
            if time.monotonic() >= next_line:
                next_line = time.monotonic() + PROGRESS_EVERY_S
                _say(f"waiting: {progress_line(st)} ({deadline - time.monotonic():.0f} s left of "
                     "--converge-timeout-s)")
            await asyncio.sleep(3)

    def stop_all(self) -> dict[str, dict[str, Any]]:
        """SIGTERM every process at once; how long each took to exit, against its stop timeout."""
        procs = self.platform.processes
        t = time.monotonic()
        for p in procs.values():
            p.terminate()
        exits: dict[str, dict[str, Any]] = {}
        limit = self.cfg.drain_timeout_s + STOP_MARGIN_S
        for name, p in procs.items():
            assert p.process is not None
            code = _wait(p.process, max(0.1, limit - (time.monotonic() - t)))
            exit_s = time.monotonic() - t
            if code is None:
                p.process.kill()
                p.process.wait(10)
                self.failures.append(f"{name} did not exit within its stop timeout ({limit:.0f} s) of SIGTERM")
            elif code != 0 and name != "entry":  # the entry proxy is a bare uvicorn.run (the ALB in AWS): it
                # dies of the signal it caught; only its time counts
                self.failures.append(f"{name} exited with status {code} on SIGTERM")
            exits[name] = {"exit_code": code, "exit_s": round(exit_s, 2), "stop_timeout_s": limit}
        return exits

    # -- the run -----------------------------------------------------------------------------------------------------
    async def run_async(self) -> dict[str, Any]:
        await self.prepare_aws()
        stop_capture = asyncio.Event()
        capture = asyncio.create_task(self.capture(stop_capture))
        self.started = time.monotonic()
        _say(f"traffic: {len(self.images)} images (STOW-RS, C-STORE, S3 drop), {self.cfg.kills} kills")
        tasks = [asyncio.create_task(x) for x in (self.traffic(), self.faults(), self.reader(), self.verifier())]
        sending = asyncio.Event()
        progress = asyncio.create_task(self.progress(sending))
        try:
            await asyncio.gather(*tasks[:2])
        finally:
            sending.set()
            await progress
        sent_s = time.monotonic() - self.started
        _say(f"all {len(self.acked)} images acknowledged after {sent_s:.0f} s; waiting for every effect")
        st, converged = await self.converge()
        await asyncio.gather(*tasks[2:])
        await asyncio.sleep(2)  # the last copies reach the capture queue
        stop_capture.set()
        await capture
        st = await self.state()
        recover_s = converged - max(self.fig.faults_end, self.started)
        async with httpx.AsyncClient(timeout=5) as http:
            hop = (await http.get(f"{self.hop_url}/__chaos/stats")).json()
        return self.result(st, sent_s, recover_s, hop)

    def result(self, st: dict[str, Any], sent_s: float, recover_s: float, hop: dict[str, Any]) -> dict[str, Any]:
        """The figures and the checks (each failed check is added to :attr:`failures`)."""
        ev = self.fig.events
        acked = {im.sop for im in self.acked}

        def dup_effects(name: str) -> list[str]:
            return sorted(k for k, ids in ev[name].items() if k in acked and len(set(ids)) > 1)

        def copies(name: str) -> int:
            return sum(len(ids) - len(set(ids)) for ids in ev[name].values())

        stored_missing = sorted(acked - set(ev["InstanceStored"]))
        scored_missing = sorted(acked - set(ev["InstanceScored"]))
        verified_dup = dup_effects("ImageVerified")
        lost = sorted(set(st.get("missing_index", [])) | set(st.get("missing_score", []))
                      | set(st.get("missing_case", [])) | set(st.get("case_unscored", [])))
        duplicated = sorted(set(st.get("duplicate_index", [])) | set(dup_effects("InstanceStored"))
                            | set(dup_effects("InstanceScored")) | set(verified_dup))
        checks = {
            "lost": len(lost), "duplicated": len(duplicated),
            "dlq_messages": sum(st["dlqs"].values()), "queue_messages_left": sum(st["queues"].values()),
            "outbox_items": st.get("outbox", -1), "pending_case_outboxes": st.get("pending_case_outboxes", -1),
            "imports_left": st["imports_left"], "imports_rejected": st["imports_rejected"],
            "derived_index_rows": len(st.get("derived_index", [])),
            "instance_stored_missing": len(stored_missing), "instance_scored_missing": len(scored_missing),
            "verified": len(self.verified), "verify_planned": len(self.verify),
        }
        for k in ("lost", "duplicated", "dlq_messages", "queue_messages_left", "outbox_items",
                  "pending_case_outboxes", "imports_left", "imports_rejected",
                  "instance_stored_missing", "instance_scored_missing"):
            if checks[k]:
                self.failures.append(f"{k}: {checks[k]}")
        if checks["verified"] < checks["verify_planned"]:
            self.failures.append(f"only {checks['verified']} of {checks['verify_planned']} planned reads answered")
        ready = [k["ready_after_restart_s"] for k in self.fig.kills if not math.isnan(k["ready_after_restart_s"])]
        return {
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.cfg).items()},
            "images_sent": len(self.acked), "by_channel": dict(self.fig.sent),
            "kills": len(self.fig.kills), "kills_by_service": dict(Counter(k["service"] for k in self.fig.kills)),
            "faults_injected": hop.get("faulted", {}), "calls_forwarded": hop.get("forwarded", {}),
            "fault_window": self.fig.fault_window, "sigterm_large_stow": self.fig.sigterm,
            "lost": len(lost), "duplicated": len(duplicated), "lost_sops": lost[:20],
            # which effect was doubled: distinct event ids per event type (and index rows) of each duplicated image
            "duplicated_detail": {x: {**{n: len(set(ev[n].get(x, []))) for n in CAPTURED},
                                      "index_rows": 2 if x in st.get("duplicate_index", []) else 1}
                                  for x in duplicated[:20]},
            "redelivered_event_copies": {n: copies(n) for n in CAPTURED},
            "checks": checks, "dlqs": st["dlqs"], "queues_left": st["queues"],
            "send_errors": dict(self.fig.send_errors), "reads": dict(self.fig.reads),
            "verifications": self.fig.verifications, "verification_errors": self.fig.verification_errors,
            "traffic_s": round(sent_s, 1), "time_to_recover_s": round(recover_s, 1),
            "restart_to_ready_s": {"median": round(statistics.median(ready), 2) if ready else None,
                                   "max": round(max(ready), 2) if ready else None},
            "kill_log": self.fig.kills,
            "load_average": list(os.getloadavg()),
        }

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            for p in self.platform.processes.values():
                if p.alive():
                    p.terminate()
            for p in self.platform.processes.values():
                p.wait_or_kill(10)
        if getattr(self, "hop", None) is not None and self.hop.poll() is None:
            self.hop.terminate()
            if _wait(self.hop, 10) is None:
                self.hop.kill()
                self.hop.wait(5)
        if getattr(self, "moto", None) is not None:
            self.moto.stop()


def _wait(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        return None


def run(cfg: Config) -> dict[str, Any]:
    """Run the chaos run; returns the result (also written to ``cfg.out``) with ``ok`` and ``failures``."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    chaos = Chaos(cfg)
    own_tmp = None
    if cfg.var_dir is None:
        own_tmp = tempfile.TemporaryDirectory(prefix="radloop-chaos-")
        var = Path(own_tmp.name)
    else:
        var = cfg.var_dir
        var.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    def stop_on_sigterm(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # so that ``finally`` stops every process this run started

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        chaos.make_images()
        chaos.setup(var)
        result = asyncio.run(chaos.run_async())
        result["process_exits"] = chaos.stop_all()
    except BaseException:
        _say(f"logs in {var}")
        own_tmp = None  # keep them
        raise
    finally:
        chaos.teardown()
        if own_tmp is not None and not chaos.failures:
            own_tmp.cleanup()
        elif own_tmp is not None:
            _say(f"logs kept in {var}")
    result["total_s"] = round(time.monotonic() - t0, 1)
    result["failures"] = chaos.failures
    result["ok"] = not chaos.failures
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(json.dumps(result, indent=2, default=str))
    return result


def progress_line(st: dict[str, Any]) -> str:
    """What :meth:`Chaos.state` says is still outstanding. While any queue holds messages it reads the queues only
    (the effects are not counted then), so the line says what it knows."""
    queued = {q.rsplit("-", 1)[-1] if "-" in q else q: n for q, n in st["queues"].items() if n}
    line = f"{sum(queued.values())} messages queued" + (
        f" ({', '.join(f'{q} {n}' for q, n in sorted(queued.items()))})" if queued else "")
    if "missing_index" in st:
        line += (f", {len(st['missing_index'])} index rows, {len(st['missing_score'])} scores and "
                 f"{len(st['missing_case'])} cases missing")
    return line


def print_figures(r: dict[str, Any]) -> None:
    c = r["checks"]
    print(f"""
chaos run: {'PASSED' if r['ok'] else 'FAILED'} in {r['total_s']:.0f} s
  images sent          {r['images_sent']} ({', '.join(f'{k} {v}' for k, v in sorted(r['by_channel'].items()))})
  kills (SIGKILL)      {r['kills']} ({', '.join(f'{k} {v}' for k, v in sorted(r['kills_by_service'].items()))})
  faults injected      {sum(r['faults_injected'].values())} ({', '.join(f'{k} {v}' for k, v in
                                                             sorted(r['faults_injected'].items()))}) in \
{r['fault_window'].get('seconds', 0):.0f} s
  SIGTERM, large STOW  {r['sigterm_large_stow'].get('size_mb')} MB, exit {r['sigterm_large_stow'].get('exit_code')} \
after {r['sigterm_large_stow'].get('exit_s')} s (stop timeout {r['sigterm_large_stow'].get('stop_timeout_s')} s)
  lost                 {r['lost']}
  duplicated           {r['duplicated']} (redelivered copies of one event, not effects: {r['redelivered_event_copies']})
  DLQ messages         {c['dlq_messages']}; outbox items {c['outbox_items']}; pending case outboxes \
{c['pending_case_outboxes']}
  verified             {c['verified']}/{c['verify_planned']}
  time to recover      {r['time_to_recover_s']} s after the last fault (restart to ready: median \
{r['restart_to_ready_s']['median']} s, max {r['restart_to_ready_s']['max']} s)
  slowest stop         {max((e['exit_s'] for e in r['process_exits'].values()), default=0)} s of \
{next(iter(r['process_exits'].values()), {}).get('stop_timeout_s')} s""")
    for f in r["failures"]:
        print(f"  FAILED: {f}")


def main(argv: list[str] | None = None) -> int:
    d = Config()
    p = argparse.ArgumentParser(prog="python -m radloop.chaos", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=d.images, help="images sent (STOW-RS, C-STORE, S3 drop in thirds)")
    p.add_argument("--kills", type=int, default=d.kills, help="SIGKILLs, every service in turn, then at random")
    p.add_argument("--fault-seconds", type=float, default=d.fault_seconds,
                   help="length of the DynamoDB/EventBridge/S3 fault window")
    p.add_argument("--fault-rate", type=float, default=d.fault_rate, help="share of those calls failed in the window")
    p.add_argument("--large-mb", type=int, default=d.large_mb, help="size of the STOW during which ingestion gets "
                   "SIGTERM (8 MB instances)")
    p.add_argument("--verify-every", type=int, default=d.verify_every, help="every N-th image is read by radiologists")
    p.add_argument("--time-scale", type=int, default=d.time_scale,
                   help="divide the visibility timeouts and in-progress expiry by this (1 = production)")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="concurrent senders")
    p.add_argument("--size", type=int, default=d.size, help="image side in pixels")
    p.add_argument("--converge-timeout-s", type=float, default=d.converge_timeout_s,
                   help="bound on the whole run from the first image to every effect")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", type=Path, default=d.out, help="the JSON result")
    p.add_argument("--var-dir", type=Path, default=None, help="keep logs here (default: a temporary directory)")
    a = p.parse_args(argv)
    cfg = Config(**{k: getattr(a, k) for k in asdict(d) if hasattr(a, k)})
    r = run(cfg)
    print_figures(r)
    print(f"  result: {cfg.out}")
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
