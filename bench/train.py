"""Training benchmark: CPU throughput fp32 vs bf16 (ResNet-18/50, 224² and 512²) and a quality run.

Usage::

    python bench/train.py                        # throughput + a small quality run (a few minutes)
    python bench/train.py --skip-quality         # throughput only
    python bench/train.py --quality-n 2000 --quality-size 224 --render-size 512 --epochs 12 --curve 100,200,400,800

Writes bench/results/train.json. Throughput ratios (bf16/fp32) are measured in the same run, on the same machine
state; on a shared machine the absolute numbers move with the load, the ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from training.model import build_model  # noqa: E402


def throughput(arch: str, size: int, batch: int, precision: str, steps: int, warmup: int = 1) -> dict[str, object]:
    torch.manual_seed(0)
    model = build_model(arch).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch) > 0.7).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        if precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x).reshape(-1)
        else:
            out = model(x).reshape(-1)
        loss_fn(out.float(), y).backward()
        opt.step()

    for _ in range(warmup):
        one()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        one()
        times.append(time.perf_counter() - t)
    med = float(np.median(times))
    return {"arch": arch, "size": size, "batch": batch, "precision": precision, "steps": steps,
            "median_step_s": round(med, 3), "images_per_s": round(batch / med, 2)}


def quality(n: int, size: int, render_size: int, epochs: int, curve: list[int], difficulty: float,
            seed: int, *, workers: int = 1, batch: int = 32, lr: float = 2e-3, arch: str = "resnet18",
            sites: int | None = None, train_seed: int = 0, progress: Path | None = None) -> dict[str, object]:
    from training.evaluate import compute_metrics
    from training.preprocess import load_shards, write_shard
    from training.synthetic import DEFAULT_SITES, cohort_shards
    from training.train import HParams, predict, threshold_for_sensitivity, train

    out: dict[str, object] = {"n": n, "size": size, "render_size": render_size, "epochs": epochs,
                              "difficulty": difficulty, "prevalence": 0.3, "arch": arch, "batch": batch, "lr": lr,
                              "sites": sites or DEFAULT_SITES, "train_seed": train_seed}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        meta = cohort_shards(root / "data", n, seed, image_size=size, render_size=render_size, prevalence=0.3,
                             difficulty=difficulty, sites=sites or DEFAULT_SITES, workers=workers)
        out["render_s"] = round(time.perf_counter() - t0, 1)
        out["splits"] = meta["counts"]
        # After rendering: the render workers are forked, and CUDA must not be initialised before a fork.
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # train() makes the same choice
        out["device"] = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
        tr = load_shards(root / "data" / "train")
        runs = []
        for labels in sorted(set(curve + [len(tr["y"])])):
            if labels > len(tr["y"]):
                continue
            sub = root / f"train_{labels}"
            idx = np.random.default_rng(0).permutation(len(tr["y"]))[:labels]
            write_shard(sub, tr["x"][idx], tr["y"][idx], tr["ids"][idx], tr["patients"][idx])
            hp = HParams(arch=arch, epochs=epochs, batch_size=batch, lr=lr, patience=max(3, epochs // 3), seed=train_seed)
            t1 = time.perf_counter()
            card = train(hp, sub, root / "data" / "val", root / f"model_{labels}", root / f"ckpt_{labels}")
            wall = time.perf_counter() - t1
            from training.model import load_model_dir

            model, cfg = load_model_dir(root / f"model_{labels}")
            va, te = load_shards(root / "data" / "val"), load_shards(root / "data" / "test")
            thr = threshold_for_sensitivity(va["y"], predict(model.to(device), va["x"], device), 0.9)
            pt = predict(model, te["x"], device)
            m = compute_metrics(te["y"], pt, thr)["binary_classification_metrics"]
            # accuracy at the 0.5 probability threshold, as well as at the sensitivity-90 operating point
            acc05 = float(((pt >= 0.5).astype(int) == te["y"]).mean())
            runs.append({"labels": labels, "wall_s": round(wall, 1), "best_val_auc": round(card["metrics"]["best_val_auc"], 4),
                         "test_auc": m["auc"]["value"], "test_accuracy_at_sens90": m["accuracy"]["value"],
                         "test_accuracy_at_0.5": acc05, "epochs_run": card["training"]["epochs_run"]})
            print(json.dumps(runs[-1]), flush=True)
            if progress is not None:  # a partial result survives a run that is stopped part-way
                progress.write_text(json.dumps(dict(out, learning_curve=runs), indent=2))
        out["learning_curve"] = runs
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("RADLOOP_TORCH_THREADS", "0") or 0))
    ap.add_argument("--quality-n", type=int, default=600)
    ap.add_argument("--quality-size", type=int, default=64)
    ap.add_argument("--render-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--sites", type=int, default=0,
                    help="acquiring sites of the synthetic cohort, 1 to 3 (default: the generator's, all of them)")
    ap.add_argument("--curve", default="100,200,400")
    ap.add_argument("--seed", type=int, default=1, help="the synthetic cohort's seed")
    ap.add_argument("--train-seed", type=int, default=0, help="the training runs' seed (initialisation, batches)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes rendering the cohort")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet50"])
    ap.add_argument("--out", default="train.json", help="file name under bench/results/")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    result: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                 "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
    if not a.skip_throughput:
        rows = []
        for arch, size, batch in (("resnet18", 224, 16), ("resnet50", 224, 16), ("resnet18", 512, 8),
                                  ("resnet50", 512, 8)):
            pair = {}
            for prec in ("fp32", "bf16"):
                r = throughput(arch, size, batch, prec, a.steps)
                rows.append(r)
                pair[prec] = r["images_per_s"]
                print(json.dumps(r), flush=True)
            rows.append({"arch": arch, "size": size, "bf16_speedup": round(pair["bf16"] / pair["fp32"], 2)})
        result["throughput_cpu"] = rows
        if torch.cuda.is_available():
            result["note_gpu"] = "run bench/gpu_check.py for the CUDA AMP numbers"
    if not a.skip_quality:
        (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result["quality"] = quality(a.quality_n, a.quality_size, a.render_size, a.epochs,
                                    [int(c) for c in a.curve.split(",") if c], a.difficulty, a.seed, workers=a.workers,
                                    batch=a.batch, lr=a.lr, arch=a.arch, sites=a.sites or None,
                                    train_seed=a.train_seed,
                                    progress=ROOT / "bench" / "results" / f"partial-{a.out}")
        result["quality_wall_s"] = round(time.perf_counter() - t0, 1)
    result["load_avg_end"] = os.getloadavg()
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
