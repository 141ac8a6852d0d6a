"""Test data for the triage and verification tests: synthetic chest radiographs with lesion masks, stored the way
ingestion stores them, and a small ResNet trained on them, packed as a ``model.tar.gz`` per the ML contract.

The images come from the training generator (:func:`training.synthetic.generate_case`) at its easiest difficulty, with
the consolidation made denser (its own lesion mask, blurred, added to the pixels) so that a ResNet-18 learns the task
in about a hundred CPU steps. The lesion mask stays the generator's, so the heat-map test checks against it.

Training is the expensive step, so the artefact is cached under ``var/test-cache`` keyed by the hash of the
parameters, this file, the model code and the preprocessing: a change to any of them trains a new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from shared.model_format import CARD_FILE, CONFIG_FILE
from training.synthetic import generate_case

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "var" / "test-cache"


@dataclass
class Case:
    """One synthetic radiograph: stored pixels, its DICOM JSON, label and lesion mask."""

    pixels: np.ndarray  # uint16 rows×columns
    meta: dict[str, Any]
    label: int
    mask: np.ndarray  # bool rows×columns
    study_uid: str
    series_uid: str
    sop_uid: str


def make_case(index: int, seed: int = 11, *, size: int = 128, positive: bool | None = None,
              uid_salt: str = "") -> Case:
    """Case ``index`` of cohort ``seed`` (prevalence 0.5, or forced to ``positive`` by searching the cohort).

    One site (``sites=1``): the triage tests are about the service, and a small model at 64² inputs learns the
    one-site cohort reliably; the three sites' confounders need larger inputs (docs/demo.md)."""
    i = index
    while True:
        ds, label, mask = generate_case(i, seed, size=size, prevalence=0.5, difficulty=0.0, sites=1)
        if positive is None or bool(label) == positive and (not positive or mask.sum() > 0.01 * mask.size):
            break
        i += 1000
    px = ds.pixel_array.astype(np.float32)
    if label and mask.any():
        lo, hi = np.percentile(px, [1, 99])
        dense = ndimage.gaussian_filter(mask.astype(np.float32), sigma=size / 64)
        px = px + 0.6 * (hi - lo) * dense / max(float(dense.max()), 1e-6)
    maxval = float(2 ** int(ds.BitsStored) - 1)
    pixels = np.clip(np.round(px), 0, maxval).astype(np.uint16)
    meta = ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda el: "")
    meta.pop("7FE00010", None)
    # The generator's window (from the image without the added density) is kept: recomputing it from the denser
    # image would give the model a global cue (overall contrast) and it would not need to look at the lesion.
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    if uid_salt:  # the same picture under fresh UIDs (tests store many instances of few pictures)
        h = int(hashlib.sha256(f"{uid_salt}/{index}".encode()).hexdigest()[:24], 16)
        study, series, sop = f"2.25.{h}1", f"2.25.{h}2", f"2.25.{h}3"
        meta["0020000D"] = {"vr": "UI", "Value": [study]}
        meta["0020000E"] = {"vr": "UI", "Value": [series]}
        meta["00080018"] = {"vr": "UI", "Value": [sop]}
    return Case(pixels, meta, int(label), mask, study, series, sop)


TRAIN_PARAMS = {"n": 320, "size": 128, "input_size": 64, "steps": 180, "batch": 16, "seed": 11, "lr": 2e-3}


def _cache_key(params: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    # The generator is left out on purpose: it is tuned often, and the tests that use the model check it on fresh
    # generator output anyway (a stale model that stopped working fails them loudly).
    for f in ("tests/support/triage_data.py", "training/model.py", "shared/preprocessing.py"):
        h.update((ROOT / f).read_bytes())
    return h.hexdigest()[:16]


def trained_model_tar(threshold: float | None = None, *, seed_offset: int = 0) -> tuple[bytes, dict[str, Any]]:
    """(model.tar.gz bytes, metrics) of a ResNet-18 trained on the synthetic task (cached; see module docstring).

    ``seed_offset`` trains a different model (another version) from a different initialisation.
    """
    import torch

    params = dict(TRAIN_PARAMS, seed_offset=seed_offset)
    CACHE.mkdir(parents=True, exist_ok=True)
    key = _cache_key(params)
    tar_path = CACHE / f"triage-model-{key}.tar.gz"
    metrics_path = CACHE / f"triage-model-{key}.json"
    if not (tar_path.exists() and metrics_path.exists()):
        # Two torch threads, whatever an earlier test set (test_learning sets one): the reduction order, and so the
        # model, depends on the thread count, and a model trained with one thread failed the heat-map test's
        # "peaked on the lesion" check (3 of 8 positives where two threads give at least 4).
        threads = torch.get_num_threads()
        torch.set_num_threads(2)
        try:
            _train_to_cache(params, key, tar_path, metrics_path)
        finally:
            torch.set_num_threads(threads)
    data = tar_path.read_bytes()
    metrics = json.loads(metrics_path.read_text())
    if threshold is not None:
        data = with_config(data, threshold=threshold)
    return data, metrics


def _train_to_cache(params: dict[str, Any], key: str, tar_path: Path, metrics_path: Path) -> None:
    """Train the test model of ``params`` and write it (and its metrics) to the cache."""
    import torch

    from shared.preprocessing import params_from_dicom_json, preprocess
    from training.model import build_model, default_config, save_model_dir, write_model_tar

    torch.manual_seed(1234 + int(params["seed_offset"]))
    cases = [make_case(i, params["seed"], size=params["size"]) for i in range(params["n"])]
    x = torch.from_numpy(np.stack([preprocess(c.pixels, params_from_dicom_json(c.meta), size=params["input_size"])
                                   for c in cases]))[:, None]
    y = torch.tensor([c.label for c in cases], dtype=torch.float32)
    n_train = int(0.8 * len(cases))
    model = build_model("resnet18")
    opt = torch.optim.AdamW(model.parameters(), lr=params["lr"])
    model.train()
    aug = torch.Generator().manual_seed(5)
    for step in range(params["steps"]):
        idx = torch.randint(0, n_train, (params["batch"],))
        xb = x[idx] if step % 2 == 0 else torch.flip(x[idx], dims=[3])
        # Random contrast and brightness: without them the model keys on the cohort's global intensity and
        # calls every image of another cohort positive; with them it has to look at the consolidation.
        gain = 0.7 + 0.6 * torch.rand(len(idx), 1, 1, 1, generator=aug)
        xb = xb * gain + 0.2 * (torch.rand(len(idx), 1, 1, 1, generator=aug) - 0.5)
        # fp32: under bf16 autocast the result depends on the CPU's bf16 kernels (a CPU with native bf16 trained
        # a model that failed the tests from the same seed)
        out = model(xb)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float().reshape(-1), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        p = torch.sigmoid(model(x[n_train:]).reshape(-1)).numpy()
    yt = y[n_train:].numpy()
    from sklearn.metrics import roc_auc_score

    metrics = {"auc": float(roc_auc_score(yt, p)), "n_val": int(len(yt)), "final_loss": float(loss.item())}
    thr = 0.5
    work = CACHE / f"triage-model-{key}"
    save_model_dir(model, default_config("resnet18", params["input_size"], thr), work)
    (work / CARD_FILE).write_text(json.dumps({"metrics": metrics, "params": params}))
    tmp = CACHE / f"triage-model-{key}.{os.getpid()}.tmp"
    write_model_tar(work, tmp)
    os.replace(tmp, tar_path)
    metrics_path.write_text(json.dumps(metrics))


def with_config(data: bytes, **updates: Any) -> bytes:
    """The same artefact with ``updates`` in its config.json (another threshold, a drift reference)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for m in src.getmembers():
            f = src.extractfile(m)
            assert f is not None
            body = f.read()
            if m.name == CONFIG_FILE:
                cfg = json.loads(body)
                cfg.update(updates)
                body = json.dumps(cfg).encode()
            info = tarfile.TarInfo(m.name)
            info.size = len(body)
            dst.addfile(info, io.BytesIO(body))
    return out.getvalue()


if __name__ == "__main__":  # build the cache ahead of a test run: python -m tests.support.triage_data
    import time

    t0 = time.time()
    _, m = trained_model_tar()
    print(json.dumps({"metrics": m, "seconds": round(time.time() - t0, 1)}))  # noqa: T201
