"""Helpers for the MLOps tests: service processes over real HTTP, an event tap on the bus, tiny labelled images.

Everything talks to the session's moto server; each test module uses its own deployment prefix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from radloop.local.embedded_aws import free_port
from shared import htj2k
from shared.aws import boto3_client
from shared.datasets import split_for
from shared.events import Event, ImageVerified
from shared.settings import Settings
from shared.storage import frame_key, metadata_key

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProcess:
    """``python -m services.<name>`` on a free port, with the deployment's environment."""

    name: str
    settings: Settings
    log_path: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AWS_ENDPOINT_URL=self.settings.aws_endpoint_url,
            AWS_DEFAULT_REGION=self.settings.region,
            RADLOOP_PREFIX=self.settings.prefix,
            RADLOOP_VAR_DIR=str(self.settings.var_dir),
            RADLOOP_PORT=str(self.port),
            RADLOOP_CONSUMER_WAIT_TIME_S="1",
            RADLOOP_AWS_MAX_ATTEMPTS="2",
            RADLOOP_DRAIN_TIMEOUT_S="5",
            PYTHONPATH=str(ROOT),
        )
        env.update(self.env_extra)
        return env

    def start(self, timeout_s: float = 60.0) -> ServiceProcess:
        self.port = self.port or free_port()
        out = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"], env=self.env(), cwd=str(ROOT), stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"{self.name} not ready within {timeout_s} s: {self.log_tail()}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        """SIGKILL: no drain, no shutdown hooks (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class EventTap:
    """A queue subscribed to every radloop event on the deployment's bus, to observe what services publish."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sqs = boto3_client(settings, "sqs")
        self.events = boto3_client(settings, "events")
        name = f"{settings.prefix}-tap-{uuid.uuid4().hex[:6]}"
        self.url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        bus = settings.topology.bus_name
        self.events.put_rule(Name=name, EventBusName=bus, EventPattern=json.dumps({"source": [{"prefix": "radloop."}]}))
        self.events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "tap", "Arn": arn}])
        self.seen: list[dict[str, Any]] = []

    def drain(self) -> list[dict[str, Any]]:
        while True:
            resp = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            msgs = resp.get("Messages", [])
            if not msgs:
                return self.seen
            for m in msgs:
                env = json.loads(m["Body"])
                self.seen.append({"type": env["detail-type"], "source": env["source"], **env["detail"]})
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
            self.sqs.delete_message_batch(QueueUrl=self.url, Entries=entries)

    def of(self, kind: str, **match: Any) -> list[dict[str, Any]]:
        self.drain()
        return [e for e in self.seen if e["type"] == kind and all(e.get(k) == v for k, v in match.items())]

    def wait_for(self, kind: str, count: int = 1, timeout_s: float = 60.0, **match: Any) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.of(kind, **match)
            if len(found) >= count:
                return found
            time.sleep(0.3)
        seen = len(self.of(kind, **match))
        raise AssertionError(f"expected {count} {kind} {match or ''} within {timeout_s} s, saw {seen}")


def publish(settings: Settings, events: Iterable[Event], source: str) -> None:
    """Put events on the deployment's bus as ``source`` would (10 per call)."""
    client = boto3_client(settings, "events")
    batch = list(events)
    for i in range(0, len(batch), 10):
        entries = [{"Source": source, "DetailType": e.name, "Detail": e.to_detail(),
                    "EventBusName": settings.topology.bus_name} for e in batch[i : i + 10]]
        resp = client.put_events(Entries=entries)
        assert not resp.get("FailedEntryCount"), resp


def wait_until(fn: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.3) -> Any:
    """Poll ``fn`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last value {last!r}")


# -- tiny labelled images --------------------------------------------------------------------------------------------
ROOT_UID = "1.2.826.0.1.3680043.10.1077"


@dataclass(frozen=True)
class Case:
    study_uid: str
    series_uid: str
    sop_uid: str
    patient: str
    label: str


def _image(label: str, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A tiny 12-bit 'radiograph': noise on a gradient, plus a large bright opacity when ``pneumonia``.

    Deliberately easy (the loop tests exercise the plumbing, not the model): one or two epochs of training learn it.
    """
    yy, xx = np.mgrid[0:size, 0:size]
    img = 800 + 6 * yy + rng.normal(0, 60, (size, size))
    if label == "pneumonia":
        cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
        r = rng.uniform(size / 5, size / 4)
        img += 1800 * (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r)
    return np.clip(img, 0, 4095).astype(np.uint16)


def dicom_json(rows: int, cols: int) -> dict[str, Any]:
    return {
        "00080060": {"vr": "CS", "Value": ["DX"]},
        "00280010": {"vr": "US", "Value": [rows]},
        "00280011": {"vr": "US", "Value": [cols]},
        "00280100": {"vr": "US", "Value": [16]},
        "00280101": {"vr": "US", "Value": [12]},
        "00280103": {"vr": "US", "Value": [0]},
        "00280004": {"vr": "CS", "Value": ["MONOCHROME2"]},
    }


def patients_for(split: str, n: int, stem: str) -> list[str]:
    """``n`` patient pseudo-ids that :func:`shared.datasets.split_for` puts in ``split``."""
    out, i = [], 0
    while len(out) < n:
        pid = f"{stem}-{i:05d}"
        if split_for(pid) == split:
            out.append(pid)
        i += 1
    return out


def store_cases(settings: Settings, per_split: dict[str, int], *, seed: int) -> list[Case]:
    """Store tiny HTJ2K frames + DICOM JSON in the images bucket: ``per_split[s]`` patients per split, one image
    each, half of them pneumonia (so every split has both classes)."""
    s3 = boto3_client(settings, "s3")
    bucket = settings.topology.bucket("images")
    rng = np.random.default_rng(seed)
    cases = []
    i = 0
    for split, n in per_split.items():
        for j, patient in enumerate(patients_for(split, n, f"s{seed}")):
            label = "pneumonia" if j % 2 == 0 else "normal"
            i += 1
            uid = f"{ROOT_UID}.{seed}.{i}"
            c = Case(f"{uid}.1", f"{uid}.1.1", f"{uid}.1.1.1", patient, label)
            img = _image(label, rng)
            s3.put_object(Bucket=bucket, Key=frame_key(c.study_uid, c.series_uid, c.sop_uid, 1),
                          Body=htj2k.encode(img))
            s3.put_object(Bucket=bucket, Key=metadata_key(c.study_uid, c.series_uid, c.sop_uid),
                          Body=json.dumps(dicom_json(*img.shape)).encode())
            cases.append(c)
    return cases


def verified(c: Case, *, label: str | None = None, version: int = 1, resolution: str = "single") -> ImageVerified:
    return ImageVerified(
        study_uid=c.study_uid, series_uid=c.series_uid, sop_uid=c.sop_uid, case_id=f"case-{c.sop_uid}",
        label=label or c.label, label_version=version, resolution=resolution, reader="reader-1",  # type: ignore[arg-type]
        patient_pseudo_id=c.patient, frame_key=frame_key(c.study_uid, c.series_uid, c.sop_uid, 1),
    )


def splits(cases: Iterable[Case]) -> dict[str, list[Case]]:
    out: dict[str, list[Case]] = {"train": [], "val": [], "test": []}
    for c in cases:
        out[split_for(c.patient)].append(c)
    return out
