"""Test helpers: store instances exactly as ingestion does (per the instance-index schema), and run the gateway.

``store_instance`` writes the original to ``storage.original_key``, each frame as HTJ2K (``shared.htj2k.encode``) to
``storage.frame_key``, the DICOM JSON to ``storage.metadata_key``, and the instance/series/study items of the index
(counts, modalities). It is sequential (tests store one instance at a time), unlike ingestion's transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from radloop.local.embedded_aws import free_port
from shared import htj2k, storage
from shared.aws import AwsClients
from shared.events import pseudonymise
from shared.instance_index import series_index_keys, study_index_keys
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def load_testdata(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))  # type: ignore[arg-type]


def make_dicom(
    base: Dataset,
    *,
    study: str,
    series: str,
    sop: str,
    patient_name: str,
    patient_id: str,
    study_date: str,
    accession: str,
    modality: str,
    instance_number: int,
    series_number: int = 1,
    pixels: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A copy of ``base`` with new identifiers (and optionally new pixels), as Part 10 bytes."""
    ds = copy.deepcopy(base)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.PatientName, ds.PatientID, ds.StudyDate = patient_name, patient_id, study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber, ds.Modality = accession, modality
    ds.InstanceNumber, ds.SeriesNumber = instance_number, series_number
    ds.StudyDescription = f"{modality} test study"
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.ReferringPhysicianName = "REF^DOC"
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    if pixels is not None:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _frames(ds: Dataset) -> list[np.ndarray]:
    arr = ds.pixel_array
    n = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1))
    if n == 1:
        return [arr]
    return [arr[i] for i in range(n)] if (spp == 1 or arr.ndim == 4) else [arr]


def _s(v: Any) -> dict[str, Any]:
    return {"S": str(v)}


def _n(v: Any) -> dict[str, Any]:
    return {"N": str(int(v))}


async def store_instance(clients: AwsClients, data: bytes, source: str = "stow",
                         index_lock: asyncio.Lock | None = None) -> dict[str, Any]:
    """Store one Part 10 instance the way ingestion does; returns a summary with the UIDs and frame offsets.

    The index counters are read-modify-write here: callers storing concurrently pass one shared ``index_lock``.
    """
    settings = clients.settings
    ds = pydicom.dcmread(io.BytesIO(data))
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    s3 = await clients.s3()
    ddb = await clients.dynamodb()
    bucket = settings.topology.bucket("images")
    table = settings.topology.table("instances")
    frames = _frames(ds)
    codestreams = await asyncio.to_thread(lambda: [htj2k.encode(np.ascontiguousarray(f)) for f in frames])
    await s3.put_object(Bucket=bucket, Key=storage.original_key(study, series, sop), Body=data)
    for i, cs in enumerate(codestreams, start=1):
        await s3.put_object(Bucket=bucket, Key=storage.frame_key(study, series, sop, i), Body=cs)
    meta_ds = copy.deepcopy(ds)
    del meta_ds.PixelData
    dicom_json = json.dumps(meta_ds.to_json_dict(), separators=(",", ":"))
    await s3.put_object(Bucket=bucket, Key=storage.metadata_key(study, series, sop), Body=dicom_json.encode())
    now = datetime.now(UTC).isoformat()
    pid = str(ds.get("PatientID", "") or "")
    offsets = [htj2k.resolution_offsets(cs) for cs in codestreams]
    item: dict[str, Any] = {
        "pk": _s(f"STUDY#{study}"), "sk": _s(f"INSTANCE#{series}#{sop}"), "sop_uid": _s(sop), "study_uid": _s(study),
        "series_uid": _s(series), "sop_class_uid": _s(ds.SOPClassUID),
        "number_of_frames": _n(len(codestreams)), "rows": _n(ds.Rows), "columns": _n(ds.Columns),
        "bits_allocated": _n(ds.BitsAllocated), "bits_stored": _n(ds.BitsStored),
        "pixel_representation": _n(ds.PixelRepresentation), "samples_per_pixel": _n(ds.get("SamplesPerPixel", 1)),
        "photometric": _s(ds.PhotometricInterpretation), "transfer_syntax_uid": _s(ds.file_meta.TransferSyntaxUID),
        "content_sha256": _s(hashlib.sha256(data).hexdigest()), "size_bytes": _n(len(data)),
        "htj2k_bytes": _n(sum(len(c) for c in codestreams)), "original_key": _s(storage.original_key(study, series, sop)),
        "metadata_key": _s(storage.metadata_key(study, series, sop)),
        "frames_prefix": _s(storage.frames_prefix(study, series, sop)), "frame_offsets": _s(json.dumps(offsets)),
        "frame_levels": _n(htj2k.number_of_levels(codestreams[0])),
        "patient_pseudo_id": _s(pseudonymise(pid, settings.pseudonym_key) if pid else ""),
        "source": _s(source), "stored_at": _s(now), "dicom_json": _s(dicom_json),
    }
    if "InstanceNumber" in ds and ds.InstanceNumber is not None:
        item["instance_number"] = _n(ds.InstanceNumber)
    async with index_lock or contextlib.nullcontext():
        return await _index(ddb, table, ds, item, offsets, len(codestreams), now, pid)


async def _index(ddb: Any, table: str, ds: Dataset, item: dict[str, Any], offsets: list[list[int]], n_frames: int,
                 now: str, pid: str) -> dict[str, Any]:
    study, series, sop = item["study_uid"]["S"], item["series_uid"]["S"], item["sop_uid"]["S"]
    codestreams = range(n_frames)
    existing = await ddb.get_item(TableName=table, Key={"pk": item["pk"], "sk": item["sk"]})
    is_new = "Item" not in existing
    await ddb.put_item(TableName=table, Item=item)
    if not is_new:
        return {"study": study, "series": series, "sop": sop, "offsets": offsets, "frames": len(codestreams)}
    se_key = {"pk": item["pk"], "sk": _s(f"SERIES#{series}")}
    se_old = (await ddb.get_item(TableName=table, Key=se_key)).get("Item")
    se_item = {
        **se_key, "level": _s("SERIES"), "level_sk": _s(f"{study}#{series}"), "study_uid": _s(study),
        "series_uid": _s(series), "modality": _s(ds.Modality), "series_description": _s(ds.get("SeriesDescription", "")),
        "body_part": _s(ds.get("BodyPartExamined", "")),
        "num_instances": _n(int(se_old["num_instances"]["N"]) + 1 if se_old else 1),
        **{k: _s(v) for k, v in series_index_keys(study, str(ds.Modality)).items() if v},
    }
    if ds.get("SeriesNumber") is not None:
        se_item["series_number"] = _n(ds.SeriesNumber)
    if pid:
        se_item["patient_id"] = _s(pid)
    await ddb.put_item(TableName=table, Item=se_item)
    st_key = {"pk": item["pk"], "sk": _s("STUDY")}
    st_old = (await ddb.get_item(TableName=table, Key=st_key)).get("Item")
    modalities = sorted({*(m["S"] for m in (st_old or {}).get("modalities", {}).get("L", [])), str(ds.Modality)})
    st_item = {
        **st_key, "level": _s("STUDY"), "level_sk": _s(f"{ds.get('StudyDate') or '00000000'}#{study}"),
        "study_uid": _s(study), "study_date": _s(ds.get("StudyDate", "")), "study_time": _s(ds.get("StudyTime", "")),
        "accession_number": _s(ds.get("AccessionNumber", "")), "study_description": _s(ds.get("StudyDescription", "")),
        "study_id": _s(ds.get("StudyID", "")), "patient_name": _s(ds.get("PatientName", "")),
        "patient_birth_date": _s(ds.get("PatientBirthDate", "")), "patient_sex": _s(ds.get("PatientSex", "")),
        "referring_physician": _s(ds.get("ReferringPhysicianName", "")),
        "modalities": {"L": [_s(m) for m in modalities]},
        "num_series": _n(int(st_old["num_series"]["N"]) + (0 if se_old else 1) if st_old else 1),
        "num_instances": _n(int(st_old["num_instances"]["N"]) + 1 if st_old else 1), "updated_at": _s(now),
        **{k: _s(v) for k, v in study_index_keys(study, str(ds.get("AccessionNumber", ""))).items() if v},
    }
    if pid:
        st_item["patient_id"] = _s(pid)
    await ddb.put_item(TableName=table, Item=st_item)
    return {"study": study, "series": series, "sop": sop, "offsets": offsets, "frames": len(codestreams)}


@dataclass
class GatewayProcess:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path


@contextlib.contextmanager
def run_gateway(settings: Settings, var_dir: Path, **env_extra: str) -> Iterator[GatewayProcess]:
    """Start ``python -m services.streaming_gateway`` on a free port and wait (bounded) for /readyz."""
    port = free_port()
    var_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "AWS_ENDPOINT_URL": settings.aws_endpoint_url,
        "RADLOOP_PREFIX": settings.prefix,
        "RADLOOP_PORT": str(port),
        "RADLOOP_VAR_DIR": str(var_dir),
        "RADLOOP_DRAIN_TIMEOUT_S": "5",
        **env_extra,
    }
    log_path = var_dir / f"gateway-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.streaming_gateway"], env=env, cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready in 30 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield GatewayProcess(url, port, proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
