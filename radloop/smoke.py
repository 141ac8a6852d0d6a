"""`radloop smoke`: validate a deployment, local or AWS, through its public HTTP API only.

Steps, each timed, stopping at the first failure:
1. store a generated image through STOW-RS (``POST {base}/dicomweb/studies``);
2. find it with QIDO-RS;
3. retrieve its first frame (WADO-RS frames);
4. wait for its triage score, or note that no model is approved yet (``GET {base}/registry/models/champion``).

The generated image holds no real patient data: a synthetic 64x64 CR with fresh UIDs and a ``SMOKE^TEST`` name.
"""

from __future__ import annotations

import io
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

SOP_INSTANCE_UID = "00080018"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str


@dataclass
class SmokeResult:
    steps: list[Step] = field(default_factory=list)
    study: str = ""
    series: str = ""
    sop: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "study": self.study, "series": self.series, "sop": self.sop,
                "steps": [s.__dict__ for s in self.steps]}


class SmokeFailure(Exception):
    """A step failed; the message says what was expected and what came back."""


def generate_instance(size: int = 64) -> tuple[bytes, str, str, str]:
    """A small synthetic CR (explicit VR little endian) with new UIDs: (bytes, study, series, sop)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "SMOKE^TEST", f"SMOKE-{uuid.uuid4().hex[:8]}"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = time.strftime("%Y%m%d"), time.strftime("%H%M%S"), "SMOKE"
    ds.SeriesNumber, ds.InstanceNumber = 1, 1
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    yy, xx = np.mgrid[0:size, 0:size]
    pixels = ((np.sin(xx / 5.0) + np.cos(yy / 7.0) + 2) * 1000).astype(np.uint16)
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), study, series, sop


def _multipart(part: bytes, content_type: str = "application/dicom") -> tuple[bytes, str]:
    boundary = f"radloop-smoke-{uuid.uuid4().hex}"
    body = (f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + part
            + f"\r\n--{boundary}--\r\n".encode())
    return body, f'multipart/related; type="{content_type}"; boundary={boundary}'


def smoke(base: str, token: str, *, timeout: float = 60.0, poll_s: float = 1.0,
          client: httpx.Client | None = None, echo: Callable[[str], None] | None = None) -> SmokeResult:
    """Run the four steps against ``base`` (e.g. ``https://radloop.example.org``); never raises on a failed step."""
    base = base.rstrip("/")
    result = SmokeResult()
    own = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0))
    headers = {"Authorization": f"Bearer {token}"}
    say = echo or (lambda _m: None)

    def run(name: str, fn: Callable[[], str]) -> bool:
        t0 = time.perf_counter()
        try:
            detail, ok = fn(), True
        except (SmokeFailure, httpx.HTTPError) as exc:
            detail, ok = f"{type(exc).__name__}: {exc}" if isinstance(exc, httpx.HTTPError) else str(exc), False
        step = Step(name, ok, round(time.perf_counter() - t0, 3), detail)
        result.steps.append(step)
        say(f"[{'ok' if ok else 'FAIL'}] {name} ({step.seconds:.2f} s): {detail}")
        return ok

    def until(what: str, probe: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            got = probe()
            if got is not None:
                return got
            if time.monotonic() >= deadline:
                raise SmokeFailure(f"{what} did not happen within {timeout:.0f} s")
            time.sleep(poll_s)

    def stow() -> str:
        data, result.study, result.series, result.sop = generate_instance()
        body, ctype = _multipart(data)
        r = http.post(f"{base}/dicomweb/studies", content=body,
                      headers={**headers, "Content-Type": ctype, "Accept": "application/dicom+json"})
        if r.status_code != 200:
            raise SmokeFailure(f"STOW-RS answered {r.status_code} (expected 200): {r.text[:300]}")
        refs = r.json().get("00081199", {}).get("Value", [])
        stored = [x.get("00081155", {}).get("Value", [None])[0] for x in refs]
        if result.sop not in stored:
            raise SmokeFailure(f"STOW-RS did not list SOP Instance UID {result.sop} as stored: {r.text[:300]}")
        return f"stored {result.sop} ({len(data)} bytes)"

    def qido() -> str:
        url = f"{base}/dicomweb/studies/{result.study}/series/{result.series}/instances"

        def probe() -> str | None:
            r = http.get(url, headers={**headers, "Accept": "application/dicom+json"})
            if r.status_code == 204 or (r.status_code == 200 and not r.content.strip()):
                return None
            if r.status_code != 200:
                raise SmokeFailure(f"QIDO-RS answered {r.status_code} (expected 200): {r.text[:300]}")
            uids = [m.get(SOP_INSTANCE_UID, {}).get("Value", [None])[0] for m in r.json()]
            return "found" if result.sop in uids else None

        until(f"QIDO-RS finding {result.sop}", probe)
        return f"found {result.sop} in its series"

    def frame() -> str:
        url = f"{base}/dicomweb/studies/{result.study}/series/{result.series}/instances/{result.sop}/frames/1"
        r = http.get(url, headers={**headers, "Accept": 'multipart/related; type="application/octet-stream"; '
                                                         "transfer-syntax=*"})
        if r.status_code != 200 or len(r.content) < 64:
            raise SmokeFailure(f"frame 1 answered {r.status_code} with {len(r.content)} bytes (expected 200 and "
                               f"a frame): {r.text[:200] if r.status_code != 200 else ''}")
        return f"{len(r.content)} bytes ({r.headers.get('content-type', '?').split(';')[0]})"

    def score() -> str:
        r = http.get(f"{base}/registry/models/champion", headers=headers)
        if r.status_code == 404:
            return "no model approved yet: triage scores nothing until one is (not a failure)"
        if r.status_code != 200:
            raise SmokeFailure(f"the registry answered {r.status_code} for the champion (expected 200 or 404)")
        version = r.json().get("version")

        def probe() -> Any:
            # The worklist's page limit is 200; a case carries its AI result under "ai" (probability once scored).
            w = http.get(f"{base}/verification/worklist", headers=headers, params={"limit": 200})
            if w.status_code != 200:
                raise SmokeFailure(f"the worklist answered {w.status_code} (expected 200): {w.text[:200]}")
            for item in _items(w.json()):
                ai = item.get("ai") or {}
                if item.get("sop_uid") == result.sop and ai.get("probability") is not None:
                    return ai["probability"]
            return None

        value = until(f"a triage score for {result.sop}", probe)
        return f"score {value} from model version {version}"

    try:
        for name, fn in (("store (STOW-RS)", stow), ("find (QIDO-RS)", qido), ("retrieve frame (WADO-RS)", frame),
                         ("triage score", score)):
            if not run(name, fn):
                break
    finally:
        if own:
            http.close()
    return result


def _items(doc: Any) -> list[dict[str, Any]]:
    if isinstance(doc, list):
        return [x for x in doc if isinstance(x, dict)]
    if isinstance(doc, dict):
        for key in ("items", "cases", "worklist"):
            if isinstance(doc.get(key), list):
                return [x for x in doc[key] if isinstance(x, dict)]
    return []


def main(base: str, token: str, timeout: float = 60.0) -> int:
    """CLI entry (``radloop smoke``): print each step with its timing; 0 when every step passed, else 1."""
    res = smoke(base, token, timeout=timeout, echo=lambda m: sys.stdout.write(m + "\n"))
    total = sum(s.seconds for s in res.steps)
    sys.stdout.write(f"smoke {'passed' if res.ok else 'FAILED'} in {total:.2f} s\n")
    return 0 if res.ok else 1
