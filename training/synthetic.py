"""Synthetic chest radiographs (and a chest CT series) written as real DICOM.

No labelled pneumonia data can be downloaded here, so the model is trained and tested on images rendered from a
simple physical picture of a PA chest radiograph:

- a thorax of soft tissue whose width, height and position vary per patient, with breast/shoulder soft tissue;
- two lung fields (the left one narrowed by the heart), domed diaphragms and a mediastinum with a spine, a heart shadow
  and hila;
- lung markings (vessels thinning towards the periphery), posterior and anterior ribs and both clavicles;
- exposure (mAs / kVp) variation, a heel-effect gradient, detector gain, quantum noise and 12/14/16 bit storage.

Positives (pneumonia) add one to three consolidations: patchy, textured opacities of random size, contrast and position
inside the lung fields, sometimes bilateral and sometimes subtle (air bronchograms are the darker branches left in a
patch). ``difficulty`` in [0, 1] scales lesion size and contrast down; ``prevalence`` and ``label_noise`` (a fraction of
observed labels flipped, as a real reader would) are controls too. Every image is a function of ``(seed, index)``
only, so any case can be regenerated on its own, and its lesion mask with it (:func:`generate_case`), which the triage
heat-map test uses as ground truth.

Every patient is imaged at one of three sites (:data:`training.synthetic_cases.SITES`): a DR room, a CR room and an
emergency department's portable unit, each with its own intensity profile, noise, collimation, positioning, lead side
marker and burned-in text, and with the same prevalence, so the site is a confounder, not a signal. ``sites=1`` renders
the original one-site cohort.

Patients have one to four studies (``patient_of``), each at a different date with a fresh exposure and positioning,
which is why training uses patient-level splits.

The calibration test (tests/training/test_synthetic.py) checks that the task is not trivial: logistic regressions on
global intensity statistics and on a 16x16 thumbnail reach at most 0.65 ROC AUC on a balanced cohort at the default
difficulty.

This module is the generator's public face: cohorts written as files (:func:`write_cohort`), stored as the platform
stores them (:func:`publish_cohort`), or rendered straight into training shards (:func:`cohort_shards`), and the CLI.
The parts: :mod:`training.synthetic_cases` (the plan: patients, studies, labels), :mod:`training.synthetic_render`
(the pixels), :mod:`training.synthetic_dicom` (the DICOM header), :mod:`training.synthetic_ct` (the CT series).

CLI: ``python -m training.synthetic --out DIR --n N --seed S`` (``--ct`` writes a CT series instead).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from training.synthetic_cases import (
    CT_SOP_CLASS,
    DEFAULT_DIFFICULTY,
    DEFAULT_PREVALENCE,
    DEFAULT_SITES,
    DEFAULT_SIZE,
    DX_SOP_CLASS,
    MAX_STUDIES_PER_PATIENT,
    SITES,
    CaseSpec,
    SiteProfile,
    case_spec,
    patient_of,
    synthetic_uid,
)
from training.synthetic_ct import iter_ct_series, write_ct_series
from training.synthetic_dicom import to_dataset
from training.synthetic_render import Rendered, render

#: The generator's public names, wherever they are defined: callers import them from this module.
__all__ = [
    "CT_SOP_CLASS", "DEFAULT_DIFFICULTY", "DEFAULT_PREVALENCE", "DEFAULT_SITES", "DEFAULT_SIZE", "DX_SOP_CLASS",
    "MAX_STUDIES_PER_PATIENT", "SITES", "CaseSpec", "Rendered", "SiteProfile", "case_spec", "cohort_shards",
    "generate_case", "iter_cohort", "iter_ct_series", "main", "patient_of", "publish_cohort", "render",
    "synthetic_uid", "to_dataset", "write_cohort", "write_ct_series",
]


def generate_case(
    index: int,
    seed: int = 0,
    *,
    size: int = DEFAULT_SIZE,
    prevalence: float = DEFAULT_PREVALENCE,
    difficulty: float = DEFAULT_DIFFICULTY,
    label_noise: float = 0.0,
    sites: int = DEFAULT_SITES,
) -> tuple[Dataset, int, np.ndarray]:
    """Case ``index`` of cohort ``seed`` -> (DICOM dataset, observed label 0/1, lesion mask bool[size, size]).

    The lesion mask marks the pixels of the consolidations (empty for true negatives); with label noise the observed
    label may disagree with it.
    """
    rd = render(case_spec(index, seed, size=size, prevalence=prevalence, difficulty=difficulty, label_noise=label_noise,
                          sites=sites))
    return to_dataset(rd), rd.spec.label, rd.lesion_mask


def iter_cohort(
    n: int,
    seed: int = 0,
    *,
    size: int = DEFAULT_SIZE,
    prevalence: float = DEFAULT_PREVALENCE,
    difficulty: float = DEFAULT_DIFFICULTY,
    label_noise: float = 0.0,
    sites: int = DEFAULT_SITES,
    start: int = 0,
) -> Iterator[Rendered]:
    """Render cases ``start .. start+n-1`` of cohort ``seed``."""
    for i in range(start, start + n):
        yield render(case_spec(i, seed, size=size, prevalence=prevalence, difficulty=difficulty,
                               label_noise=label_noise, sites=sites))


def write_cohort(out: str | Path, n: int, seed: int = 0, *, masks: bool = False, **kw: Any) -> list[dict[str, Any]]:
    """Write ``n`` DICOM files and ``labels.csv`` (+ ``labels.jsonl``) into ``out``; returns the label rows."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    rows = []
    for rd in iter_cohort(n, seed, **kw):
        s = rd.spec
        name = f"{s.index:06d}.dcm"
        to_dataset(rd).save_as(d / name, enforce_file_format=True)
        if masks:
            np.save(d / f"{s.index:06d}_mask.npy", rd.lesion_mask)
        rows.append({"file": name, "index": s.index, "label": s.label, "true_label": s.true_label,
                     "site": s.site_profile.station, "patient_id": s.patient_id, "study": s.study, "study_uid": s.study_uid,
                     "series_uid": s.series_uid, "sop_uid": s.sop_uid, "lesion_pixels": int(rd.lesion_mask.sum())})
    if rows:
        with open(d / "labels.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (d / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# publishing a cohort as the platform stores it (HTJ2K frames + DICOM JSON + a dataset manifest)


def publish_cohort(
    s3: Any,
    *,
    images_bucket: str,
    ml_bucket: str,
    n: int,
    seed: int = 0,
    pseudonym_key: str = "synthetic",
    label_version: int = 1,
    reader: str = "synthetic",
    **kw: Any,
) -> tuple[str, str]:
    """Store ``n`` cases like ingestion does and write their manifest; returns (manifest s3 uri, sha256).

    ``s3`` is a boto3 S3 client. Frames go to ``frame_key(...,1)`` as HTJ2K, DICOM JSON to ``metadata_key``, and the
    manifest (shared.datasets) to ``dataset_manifest_key(sha)`` in ``ml_bucket``. For tests and demos.
    """
    from shared import datasets, htj2k, storage
    from shared.events import pseudonymise

    records = []
    for rd in iter_cohort(n, seed, **kw):
        s = rd.spec
        ds = to_dataset(rd)
        fk = storage.frame_key(s.study_uid, s.series_uid, s.sop_uid, 1)
        mk = storage.metadata_key(s.study_uid, s.series_uid, s.sop_uid)
        s3.put_object(Bucket=images_bucket, Key=fk, Body=htj2k.encode(rd.pixels))
        meta = ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda _el: "")
        meta.pop("7FE00010", None)
        s3.put_object(Bucket=images_bucket, Key=mk, Body=json.dumps(meta).encode())
        pseudo = pseudonymise(s.patient_id, pseudonym_key)
        records.append(datasets.ManifestRecord(
            sop_uid=s.sop_uid, study_uid=s.study_uid, series_uid=s.series_uid, bucket=images_bucket, frame_key=fk,
            metadata_key=mk, label="pneumonia" if s.label else "normal", target=s.label, label_version=label_version,
            reader=reader, patient_pseudo_id=pseudo, split=datasets.split_for(pseudo)))
    body = datasets.serialize(records)
    sha = datasets.sha256(body)
    key = storage.dataset_manifest_key(sha)
    s3.put_object(Bucket=ml_bucket, Key=key, Body=body)
    return f"s3://{ml_bucket}/{key}", sha


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n", type=int, default=100, help="number of radiographs (or CT slices with --ct)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE)
    ap.add_argument("--prevalence", type=float, default=DEFAULT_PREVALENCE)
    ap.add_argument("--difficulty", type=float, default=DEFAULT_DIFFICULTY)
    ap.add_argument("--label-noise", type=float, default=0.0, help="share of observed labels flipped (0 to 0.5)")
    ap.add_argument("--sites", type=int, default=DEFAULT_SITES,
                    help=f"acquiring sites, 1 to {len(SITES)} (1: one DR room, no collimation, markers or burned-in text)")
    ap.add_argument("--masks", action="store_true", help="also write lesion masks as .npy")
    ap.add_argument("--ct", action="store_true", help="write a chest CT series of --n slices instead")
    ap.add_argument("--opacities", action="store_true", help="CT: add lung opacities")
    a = ap.parse_args(argv)
    if a.n < 1:
        ap.error(f"--n must be at least 1, got {a.n}")
    if not 1 <= a.sites <= len(SITES):
        ap.error(f"--sites must be between 1 and {len(SITES)}, got {a.sites}")
    if a.ct:
        paths = write_ct_series(a.out, a.seed, slices=a.n, size=a.size, opacities=a.opacities)
        sys.stdout.write(json.dumps({"out": a.out, "ct_slices": len(paths)}) + "\n")
        return 0
    rows = write_cohort(a.out, a.n, a.seed, masks=a.masks, size=a.size, prevalence=a.prevalence,
                        difficulty=a.difficulty, label_noise=a.label_noise, sites=a.sites)
    pos = sum(r["label"] for r in rows)
    patients = len({r["patient_id"] for r in rows})
    sys.stdout.write(json.dumps({"out": a.out, "images": len(rows), "positives": pos, "patients": patients}) + "\n")
    return 0


def _shard_cases(args: tuple[int, int, int, int, int | None, str, dict[str, Any]]
                 ) -> list[tuple[str, np.ndarray, int, str, str]]:
    """Render and preprocess cases ``start .. start+n-1`` (one worker's chunk of :func:`cohort_shards`)."""
    from shared.datasets import split_for
    from shared.events import pseudonymise
    from shared.preprocessing import params_from_dataset, preprocess

    start, n, seed, image_size, render_size, pseudonym_key, kw = args
    out = []
    for rd in iter_cohort(n, seed, size=render_size or image_size, start=start, **kw):
        pseudo = pseudonymise(rd.spec.patient_id, pseudonym_key)
        x = preprocess(rd.pixels, params_from_dataset(to_dataset(rd)), size=image_size)
        out.append((split_for(pseudo), x, rd.spec.label, rd.spec.sop_uid, pseudo))
    return out


def cohort_shards(out_root: str | Path, n: int, seed: int = 0, *, image_size: int = 128, render_size: int | None = None,
                  pseudonym_key: str = "synthetic", workers: int = 1, **kw: Any) -> dict[str, Any]:
    """Render ``n`` cases straight into preprocessed train/val/test shards (no S3), split by patient like the manifest.

    For tests and benchmarks: the same :func:`shared.preprocessing.preprocess` and :func:`shared.datasets.split_for`
    as the pipeline, without the HTJ2K round trip (which is lossless, so the arrays are the same). ``workers`` > 1
    renders chunks in worker processes; the shards are identical for any number of workers (cases keep their order).
    """
    from training.preprocess import write_shard

    root = Path(out_root)
    buckets: dict[str, tuple[list[np.ndarray], list[int], list[str], list[str]]] = {
        s: ([], [], [], []) for s in ("train", "val", "test")}
    chunk = max(1, min(64, -(-n // max(1, workers * 4))))
    jobs = [(a, min(chunk, n - a), seed, image_size, render_size, pseudonym_key, kw) for a in range(0, n, chunk)]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_shard_cases, jobs))
    else:
        results = [_shard_cases(j) for j in jobs]
    for part in results:
        for split, x, label, sop, pseudo in part:
            b = buckets[split]
            b[0].append(x)
            b[1].append(label)
            b[2].append(sop)
            b[3].append(pseudo)
    counts = {}
    for split, (xs, ys, ids, pats) in buckets.items():
        x = np.stack(xs) if xs else np.zeros((0, image_size, image_size), np.float32)
        write_shard(root / split, x, ys, ids, pats)
        counts[split] = {"n": len(ys), "positives": int(sum(ys))}
    meta = {"manifest_sha256": None, "image_size": image_size, "counts": counts, "synthetic_seed": seed}
    for split in buckets:
        (root / split / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


if __name__ == "__main__":
    raise SystemExit(main())
