"""Training job: ResNet (1-channel stem) on the preprocessed shards, SageMaker container contract.

Inputs: channels ``train`` and ``val`` (``SM_CHANNEL_*`` or ``/opt/ml/input/data/<name>``) holding the shards written
by :mod:`training.preprocess`. Hyper-parameters come from the command line, ``SM_HPS`` or
``/opt/ml/input/config/hyperparameters.json`` (in that order of precedence; SageMaker passes strings).

- CPU: bf16 autocast + channels_last (AMX makes this ~4x faster than fp32 here); CUDA: AMP (bf16 where supported,
  else fp16 with a GradScaler).
- Augmentation: torchvision transforms v2 (small affine, brightness/contrast, noise), per sample.
- Class balance: ``pos_weight = negatives / positives`` in the BCE loss.
- Early stopping on validation ROC-AUC (``patience`` epochs, not before ``min_epochs``), keeping the best weights.
- A checkpoint after every epoch in ``/opt/ml/checkpoints`` (SageMaker syncs it to S3 for Spot) and automatic resume:
  an interruption loses at most one epoch. Data order and augmentation are seeded by (seed, epoch), so a resumed run
  reproduces the uninterrupted one.
- Metric lines ``METRIC epoch=3 train_loss=0.41 val_loss=0.38 val_auc=0.91 ...`` for SageMaker metric definitions.
- Output (``/opt/ml/model``, which SageMaker packs into model.tar.gz): ``weights.pt``, ``config.json`` (with the
  operating threshold chosen on validation for ``sensitivity_target``), ``model_card.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torchvision.transforms import v2

from shared import drift
from training import model as M
from training.preprocess import load_shards
from training.sm import channel_dir, checkpoint_dir, code_version, hyperparameters, model_dir, write_failure

log = logging.getLogger("radloop.training.train")
CHECKPOINT = "checkpoint.pt"
#: Training images summarised in the model's drift reference (a seeded sample; enough for stable deciles).
DRIFT_REFERENCE_IMAGES = 2000



@dataclass
class HParams:
    arch: str = "resnet18"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 4
    #: early stopping cannot stop before this epoch (0: half of ``epochs``): the one-cycle warm-up is noisy
    min_epochs: int = 0
    #: early stopping needs a validation split of at least this many images: on a smaller one the AUC moves in large
    #: steps by chance, so stopping on it stops on noise (docs/training.md)
    early_stop_min_val: int = 50
    #: which weights become the model: ``best_val`` (the epoch with the best validation AUC), ``last`` (the final
    #: epoch, where the one-cycle schedule has annealed), or ``auto``: ``best_val`` when the validation split has at
    #: least ``early_stop_min_val`` images, else ``last``. On a 13-image split the best epoch is picked by chance, often
    #: a noisy early one (docs/training.md)
    select: str = "auto"
    seed: int = 0
    sensitivity_target: float = 0.9
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    augment: bool = True
    pretrained: bool = False
    threads: int = 0  # 0: $RADLOOP_TORCH_THREADS, else the torch default (1 is much faster on a busy machine)
    #: stop (as if the instance were reclaimed) right after this epoch's checkpoint; tests use it to prove resume
    interrupt_after_epoch: int = 0

    @classmethod
    def from_mapping(cls, m: dict[str, Any]) -> HParams:
        out: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for k, v in m.items():
            key = k.replace("-", "_")
            if key not in types:
                continue  # SageMaker adds its own keys (sagemaker_*); ignore unknown ones
            t = types[key]
            if t in ("int", int):
                out[key] = int(float(v))
            elif t in ("float", float):
                out[key] = float(v)
            elif t in ("bool", bool):
                out[key] = v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")
            else:
                out[key] = str(v)
        hp = cls(**out)
        if hp.arch not in M.ARCHS:
            raise ValueError(f"arch {hp.arch!r} is not supported; expected one of {', '.join(M.ARCHS)}")
        if hp.epochs < 1 or hp.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {hp.epochs} and {hp.batch_size}")
        if hp.select not in ("auto", "best_val", "last"):
            raise ValueError(f"select {hp.select!r} must be auto, best_val or last")
        if hp.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision {hp.precision!r} must be auto, fp32, bf16 or fp16")
        return hp


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast_for(device: torch.device, precision: str) -> tuple[Any, torch.dtype | None]:
    """The autocast context factory and dtype for a device/precision (None dtype = fp32)."""
    if precision == "fp32":
        return None, None
    if device.type == "cpu":
        if precision in ("auto", "bf16"):
            return (lambda: torch.autocast("cpu", dtype=torch.bfloat16)), torch.bfloat16
        return None, None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), torch.bfloat16
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.float16


def augmenter() -> v2.Compose:
    """Per-sample augmentation: small pose changes and exposure changes; no flips (the heart is on one side)."""
    return v2.Compose([
        v2.RandomAffine(degrees=5, translate=(0.04, 0.04), scale=(0.94, 1.06)),
        v2.RandomApply([v2.ColorJitter(brightness=0.15, contrast=0.15)], p=0.7),
    ])


def make_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled index batches for one epoch, a function of (seed, epoch) only."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [perm[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:  # BatchNorm cannot train on one sample: fold it into the last
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Probabilities for N×S×S float32 inputs, in fp32 (evaluation must not depend on the training precision)."""
    return predict_with_embeddings(model, x, device, batch_size)[0]


def predict_with_embeddings(model: nn.Module, x: np.ndarray, device: torch.device,
                            batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities N, penultimate-layer embeddings N×D) in one fp32 pass (the embeddings feed the drift reference)."""
    model.eval()
    probs, embs = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).unsqueeze(1).to(device)
            xb = xb.contiguous(memory_format=torch.channels_last)
            emb, logits = M.forward_with_embedding(model, xb)
            probs.append(torch.sigmoid(logits.float().reshape(-1)).cpu().numpy())
            embs.append(emb.float().cpu().numpy())
    if not probs:
        return np.zeros(0, np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(probs), np.concatenate(embs)


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, target: float) -> float:
    """The operating threshold for a sensitivity ``target``, chosen on validation scores (y, p) by the split-conformal
    rule: the k-th lowest positive score, k = floor((n + 1) * (1 - target)) and at least 1, for n positives.

    For a new positive exchangeable with the n validation positives, P(its score >= threshold) >= 1 - k / (n + 1) >=
    ``target``: the expected sensitivity on new patients meets the target. The in-sample rule (the highest threshold
    whose validation sensitivity is at least the target) gives no such guarantee: it sits at or above the conformal one and
    falls short of the target on new patients when positives are few (docs/training.md).
    With fewer than 2 / (1 - target) - 1 positives (19 for a 0.9 target), this is the lowest positive score. 0.5 when
    there are none.
    """
    pos = np.sort(p[y == 1])
    if len(pos) == 0:
        return 0.5
    k = int(np.floor((len(pos) + 1) * (1.0 - target) + 1e-9))
    k = min(max(k, 1), len(pos))
    return float(pos[k - 1])


def safe_auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def _state_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train(hp: HParams, train_dir: Path, val_dir: Path, out_dir: Path, ckpt_dir: Path) -> dict[str, Any]:
    """Run training; returns the model card. Resumes from ``ckpt_dir/checkpoint.pt`` when present."""
    t_start = time.monotonic()
    threads = hp.threads or int(os.environ.get("RADLOOP_TORCH_THREADS", "0") or 0)
    if threads:
        torch.set_num_threads(threads)
    seed_everything(hp.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tr, va = load_shards(train_dir), load_shards(val_dir)
    if len(tr["y"]) == 0 or len(va["y"]) == 0:
        raise ValueError(f"training needs non-empty train and val splits, got {len(tr['y'])} and {len(va['y'])}")
    size = int(tr["x"].shape[-1])
    n_pos = int(tr["y"].sum())
    n_neg = len(tr["y"]) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"the training split has {n_pos} positives and {n_neg} negatives; both classes are needed")
    model = M.build_model(hp.arch, 1, pretrained=hp.pretrained).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    steps_per_epoch = (len(tr["y"]) + hp.batch_size - 1) // hp.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.lr, total_steps=hp.epochs * steps_per_epoch,
                                                pct_start=0.2)
    ac, ac_dtype = autocast_for(device, hp.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=(ac_dtype == torch.float16))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([n_neg / n_pos], device=device))
    aug = augmenter() if hp.augment else None
    history: list[dict[str, float]] = []
    start_epoch, best_auc, best_epoch, best_state, stale = 1, -1.0, 0, None, 0
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / CHECKPOINT
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ck.get("hparams", {}).get("arch") != hp.arch:
            raise ValueError(f"checkpoint {ckpt_path} is for arch {ck.get('hparams', {}).get('arch')!r}, not {hp.arch!r}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start_epoch = int(ck["epoch"]) + 1
        best_auc, best_epoch, stale = float(ck["best_auc"]), int(ck["best_epoch"]), int(ck["stale"])
        best_state, history = ck["best_state"], list(ck["history"])
        log.info("resumed from checkpoint after epoch %d (best val AUC %.4f)", start_epoch - 1, best_auc)
        print(f"RESUME epoch={start_epoch - 1}", flush=True)

    x_train = torch.from_numpy(tr["x"]).unsqueeze(1)
    y_train = torch.from_numpy(tr["y"]).float()
    stopped_early = False
    may_stop = len(va["y"]) >= hp.early_stop_min_val
    select = hp.select if hp.select != "auto" else ("best_val" if may_stop else "last")
    if not may_stop:
        log.info("validation split of %d images (< %d): no early stopping, all %d epochs run; the model is the %s "
                 "epoch's", len(va["y"]), hp.early_stop_min_val, hp.epochs, "best" if select == "best_val" else "last")
    for epoch in range(start_epoch, hp.epochs + 1):
        if may_stop and stale >= hp.patience and epoch > (hp.min_epochs or hp.epochs // 2):
            stopped_early = True
            break
        model.train()
        torch.manual_seed(hp.seed * 100003 + epoch)  # augmentation randomness depends on (seed, epoch) only
        t0, total, seen = time.monotonic(), 0.0, 0
        for idx in make_batches(len(y_train), hp.batch_size, hp.seed, epoch):
            xb = x_train[idx]
            if aug is not None:
                xb = torch.stack([aug(img) for img in xb]).clamp_(0, 1)
            xb = xb.to(device).contiguous(memory_format=torch.channels_last)
            yb = y_train[idx].to(device)
            opt.zero_grad(set_to_none=True)
            if ac is not None:
                with ac():
                    logits = model(xb).reshape(-1)
                loss = loss_fn(logits.float(), yb)
            else:
                loss = loss_fn(model(xb).reshape(-1), yb)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        dt = time.monotonic() - t0
        pv = predict(model, va["x"], device)
        val_auc = safe_auc(va["y"], pv)
        eps = 1e-7
        val_loss = float(-np.mean(va["y"] * np.log(pv + eps) + (1 - va["y"]) * np.log(1 - pv + eps)))
        row = {"epoch": epoch, "train_loss": total / max(seen, 1), "val_loss": val_loss, "val_auc": val_auc,
               "images_per_s": seen / max(dt, 1e-9), "seconds": dt}
        history.append(row)
        print("METRIC " + " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)
        if val_auc > best_auc + 1e-6:
            best_auc, best_epoch, best_state, stale = val_auc, epoch, _state_cpu(model), 0
        else:
            stale += 1
        ck = {"epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
              "scaler": scaler.state_dict(), "best_auc": best_auc, "best_epoch": best_epoch, "best_state": best_state,
              "stale": stale, "history": history, "hparams": asdict(hp)}
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save(ck, tmp)
        os.replace(tmp, ckpt_path)  # atomic: an interruption never leaves a torn checkpoint
        if hp.interrupt_after_epoch and epoch == hp.interrupt_after_epoch:
            print(f"INTERRUPT after epoch={epoch}", flush=True)
            sys.stdout.flush()
            os._exit(143)  # like a Spot reclaim: no clean-up, no model output
    if select == "best_val" and best_state is not None:
        model.load_state_dict(best_state)
    selected_epoch = best_epoch if select == "best_val" and best_state is not None else len(history)
    pv, emb_v = predict_with_embeddings(model, va["x"], device)
    threshold = threshold_for_sensitivity(va["y"], pv, hp.sensitivity_target)
    cfg = M.default_config(hp.arch, size, threshold)
    # what triage compares its images, scores and embeddings with (shared.drift): a sample of the training inputs, and
    # the model's scores and penultimate-layer embeddings on the validation split
    sample = np.random.default_rng(hp.seed).permutation(len(tr["y"]))[:DRIFT_REFERENCE_IMAGES]
    cfg["drift_reference"] = drift.build_reference(tr["x"][np.sort(sample)], pv, emb_v)
    M.save_model_dir(model, cfg, out_dir)
    meta_path = Path(train_dir) / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    card = {
        "model": {"arch": hp.arch, "input_size": size, "threshold": threshold, "classes": M.CLASSES,
                  "preprocessing": "shared.preprocessing"},
        "data": {"manifest_sha256": meta.get("manifest_sha256"), "train": {"n": len(tr["y"]), "positives": n_pos},
                 "val": {"n": len(va["y"]), "positives": int(va["y"].sum())}},
        "hyperparameters": asdict(hp),
        "code_version": code_version(),
        "training": {"device": device.type, "precision": str(ac_dtype).replace("torch.", "") if ac_dtype else "fp32",
                     "torch": torch.__version__, "epochs_run": len(history), "stopped_early": stopped_early,
                     "best_epoch": best_epoch, "selected": select, "selected_epoch": selected_epoch,
                     "seconds": round(time.monotonic() - t_start, 2)},
        "metrics": {"val_auc": safe_auc(va["y"], pv), "best_val_auc": best_auc,
                    "sensitivity_target": hp.sensitivity_target},
        "history": history,
    }
    (out_dir / M.CARD_FILE).write_text(json.dumps(card, indent=2, default=float))
    print(f"METRIC final best_val_auc={best_auc:.6g} val_auc={card['metrics']['val_auc']:.6g} "
          f"threshold={threshold:.6g}", flush=True)
    return card


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.train")
    ap.add_argument("--train-dir", default=None)
    ap.add_argument("--val-dir", default=None)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--checkpoint-dir", default=None)
    for f in fields(HParams):
        ap.add_argument(f"--{f.name.replace('_', '-')}", default=None)
    a, _unknown = ap.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    merged = hyperparameters()
    merged.update({f.name: getattr(a, f.name) for f in fields(HParams) if getattr(a, f.name) is not None})
    try:
        hp = HParams.from_mapping(merged)
        out = Path(a.model_dir) if a.model_dir else model_dir()
        card = train(hp, Path(a.train_dir) if a.train_dir else channel_dir("train"),
                     Path(a.val_dir) if a.val_dir else channel_dir("val"), out,
                     Path(a.checkpoint_dir) if a.checkpoint_dir else checkpoint_dir())
    except Exception as exc:
        write_failure(f"training failed: {exc}")
        raise
    m = card["metrics"]
    sys.stdout.write(json.dumps({"best_val_auc": m["best_val_auc"], "val_auc": m["val_auc"],
                                 "threshold": card["model"]["threshold"]}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
