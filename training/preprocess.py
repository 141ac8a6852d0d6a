"""Processing step: dataset manifest -> preprocessed train/val/test shards.

Reads the manifest (JSON lines, :mod:`shared.datasets`) from ``/opt/ml/processing/input/manifest``, fetches each
record's HTJ2K frame and DICOM JSON (from the images bucket, or from AWS HealthImaging for a record that names an
image set and frame: ``image_store=healthimaging``, GetImageFrame and GetImageSetMetadata), runs
:func:`shared.preprocessing.preprocess` (the same function triage serves with), and writes
``/opt/ml/processing/output/{train,val,test}/shard-00000.npz`` plus ``meta.json`` (manifest sha256, counts). The
**test** split is the locked evaluation set (``--locked-dir``: the version's ``manifest.jsonl`` and ``version.json``,
written by the orchestrator, latest label of each case), never the training manifest's: a training manifest that
names a locked patient is refused, and its own ``test`` records (there are none in the orchestrator's snapshots) are
left out. Pixels are stored as uint16 (``round(v * 65535)``), an error of at most
7.6e-6 against the float32 input, at half the size.

AWS access uses boto3 with the standard environment (``AWS_ENDPOINT_URL`` for the embedded endpoint); this is the only
script that talks to AWS, because the manifest names objects rather than carrying pixels.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shared import datasets
from shared.preprocessing import params_from_dicom_json, preprocess
from training.sm import opt_ml, write_failure

log = logging.getLogger("radloop.training.preprocess")
SPLITS = ("train", "val", "test")
SCALE = 65535.0


def write_shard(out_dir: str | Path, x: np.ndarray, y: Sequence[int], ids: Sequence[str],
                patients: Sequence[str] | None = None, *, shard: int = 0) -> Path:
    """Write one shard: ``x`` float32 N×S×S in [0,1] (stored as uint16), targets, sop uids, patient pseudo-ids."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"shard-{shard:05d}.npz"
    q = np.round(np.clip(np.asarray(x, dtype=np.float32), 0, 1) * SCALE).astype(np.uint16)
    np.savez(p, x=q, y=np.asarray(y, dtype=np.int64), ids=np.asarray(ids, dtype=str),
             patients=np.asarray(patients if patients is not None else [""] * len(ids), dtype=str))
    return p


def load_shards(d: str | Path) -> dict[str, np.ndarray]:
    """All shards of a split directory concatenated: x float32 N×S×S, y int64, ids, patients."""
    files = sorted(Path(d).glob("shard-*.npz"))
    if not files:
        raise FileNotFoundError(f"no shard-*.npz files in {d}; expected the output of training.preprocess")
    parts = [np.load(f) for f in files]
    out = {k: np.concatenate([p[k] for p in parts]) for k in ("x", "y", "ids", "patients")}
    out["x"] = out["x"].astype(np.float32) / SCALE
    return out


def _client(service: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(service, config=Config(retries={"max_attempts": 3, "mode": "standard"},
                                               max_pool_connections=16))


class FrameReader:
    """Reads a record's frame 1 and DICOM JSON from wherever the manifest says it is, with boto3 clients made on first
    use: S3 (the default store) or HealthImaging (a record with ``image_set_id``). Thread-safe; HealthImaging's
    metadata documents are cached per image set (``doc_cache`` of them), so a multi-instance image set is read once.
    """

    def __init__(self, *, s3: Any = None, medical_imaging: Any = None, doc_cache: int = 256) -> None:
        self._clients = {"s3": s3, "medical-imaging": medical_imaging}
        self._lock = threading.Lock()
        self._docs: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._doc_cache = doc_cache

    def client(self, service: str) -> Any:
        with self._lock:
            if self._clients[service] is None:
                self._clients[service] = _client(service)
            return self._clients[service]

    def _image_set(self, datastore_id: str, image_set_id: str) -> dict[str, Any]:
        from shared.image_store import ahi_metadata

        key = (datastore_id, image_set_id)
        with self._lock:
            if key in self._docs:
                self._docs.move_to_end(key)
                return self._docs[key]
        resp = self.client("medical-imaging").get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
        doc = ahi_metadata.load(resp["imageSetMetadataBlob"].read(), resp.get("contentEncoding"))
        with self._lock:
            self._docs[key] = doc
            while len(self._docs) > self._doc_cache:
                self._docs.popitem(last=False)
        return doc

    def read(self, rec: datasets.ManifestRecord) -> tuple[bytes, dict[str, Any]]:
        """``(HTJ2K codestream of frame 1, DICOM JSON)`` of one record."""
        if rec.image_set_id and rec.frame_id and rec.datastore_id:
            from shared.image_store import ahi_metadata

            doc = self._image_set(rec.datastore_id, rec.image_set_id)
            found = ahi_metadata.find_instance(doc, rec.sop_uid)
            if found is None:
                raise ValueError(f"image set {rec.image_set_id} has no instance {rec.sop_uid}")
            meta = ahi_metadata.instance_dicom_json(doc, found[0], rec.sop_uid)
            resp = self.client("medical-imaging").get_image_frame(
                datastoreId=rec.datastore_id, imageSetId=rec.image_set_id,
                imageFrameInformation={"imageFrameId": rec.frame_id})
            return resp["imageFrameBlob"].read(), meta
        s3 = self.client("s3")
        frame = s3.get_object(Bucket=rec.bucket, Key=rec.frame_key)["Body"].read()
        return frame, json.loads(s3.get_object(Bucket=rec.bucket, Key=rec.metadata_key)["Body"].read())


def frame_to_input(frame: bytes, meta: dict[str, Any], size: int) -> np.ndarray:
    """A stored frame (HTJ2K codestream + the instance's DICOM JSON) -> the model input, as triage computes it."""
    from shared import htj2k

    return preprocess(htj2k.decode(frame), params_from_dicom_json(meta), size=size)


def _fetch(reader: FrameReader, rec: datasets.ManifestRecord, size: int) -> np.ndarray:
    frame, meta = reader.read(rec)
    return frame_to_input(frame, meta, size)


def read_manifest(d: str | Path) -> tuple[list[datasets.ManifestRecord], str]:
    p = Path(d)
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    if not files:
        raise FileNotFoundError(f"no manifest file under {d}")
    data = files[0].read_bytes()
    return datasets.parse(data), datasets.sha256(data)


def read_locked(d: str | Path) -> tuple[list[datasets.ManifestRecord], dict[str, Any]]:
    """The locked set's current records (the latest label version of each case; later lines are corrections) and
    its summary (version, sha256 of the manifest bytes, counts)."""
    p = Path(d)
    man = p / "manifest.jsonl"
    if not man.is_file():
        raise FileNotFoundError(f"no locked evaluation set (manifest.jsonl) under {d}; the orchestrator draws it "
                                "before the first run")
    data = man.read_bytes()
    latest: dict[str, datasets.ManifestRecord] = {}
    for r in datasets.parse(data):
        if r.sop_uid not in latest or r.label_version >= latest[r.sop_uid].label_version:
            latest[r.sop_uid] = r
    records = [latest[k].model_copy(update={"split": "test"}) for k in sorted(latest)]
    version = json.loads((p / "version.json").read_text()) if (p / "version.json").is_file() else {}
    pos = sum(r.target for r in records)
    summary = {"version": version.get("version"), "sha256": datasets.sha256(data), "n": len(records),
               "positives": pos, "negatives": len(records) - pos}
    if version.get("sha256") not in (None, summary["sha256"]):
        raise ValueError(f"the locked set's manifest does not match its version.json sha256 {version['sha256']}")
    return records, summary


def run(manifest_dir: Path, out_root: Path, size: int, workers: int = 8,
        locked_dir: Path | None = None, reader: FrameReader | None = None) -> dict[str, Any]:
    """Write the shards. With ``locked_dir`` (the pipeline always gives one) the test split is the locked set;
    without it, the manifest's own test split (a stand-alone run on a manifest that still has one)."""
    t0 = time.monotonic()
    records, sha = read_manifest(manifest_dir)
    if not records:
        raise ValueError("the manifest has no records; at least one labelled image per split is needed")
    locked_summary: dict[str, Any] | None = None
    if locked_dir is not None:
        locked, locked_summary = read_locked(locked_dir)
        locked_patients = {r.patient_pseudo_id for r in locked}
        leaked = sorted({r.sop_uid for r in records if r.patient_pseudo_id in locked_patients})
        if leaked:
            raise ValueError(f"the training manifest holds {len(leaked)} images of patients in the locked evaluation "
                             "set; refusing to train on them")
        records = [r for r in records if r.split != "test"] + locked
    frames = reader or FrameReader()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(pool.map(lambda r: _fetch(frames, r, size), records))
    counts: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        idx = [i for i, r in enumerate(records) if r.split == split]
        x = np.stack([arrays[i] for i in idx]) if idx else np.zeros((0, size, size), np.float32)
        write_shard(out_root / split, x, [records[i].target for i in idx], [records[i].sop_uid for i in idx],
                    [records[i].patient_pseudo_id for i in idx])
        counts[split] = {"n": len(idx), "positives": int(sum(records[i].target for i in idx))}
    meta = {"manifest_sha256": sha, "image_size": size, "counts": counts, "seconds": round(time.monotonic() - t0, 2),
            "locked_set": locked_summary or {"version": None, "sha256": "", "n": 0, "positives": 0, "negatives": 0}}
    for split in SPLITS:
        (out_root / split / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.preprocess")
    ap.add_argument("--manifest-dir", default=str(opt_ml("processing", "input", "manifest")))
    ap.add_argument("--output-dir", default=str(opt_ml("processing", "output")))
    ap.add_argument("--locked-dir", default=str(opt_ml("processing", "input", "locked")),
                    help="the locked evaluation set's version (manifest.jsonl, version.json): the test split")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=8)
    a = ap.parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        meta = run(Path(a.manifest_dir), Path(a.output_dir), a.image_size, a.workers, locked_dir=Path(a.locked_dir))
    except Exception as exc:
        write_failure(f"preprocess failed: {exc}")
        raise
    sys.stdout.write(json.dumps(meta) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
