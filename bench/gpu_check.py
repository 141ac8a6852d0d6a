"""GPU check for the training image's code path (run by the lead on a lent GPU; < 3 minutes).

1. ``training.train.train`` end to end (AMP on CUDA, channels_last, augmentation, checkpoints, early stopping code)
   for a few epochs on a synthetic cohort rendered by ``training.synthetic``;
2. a pure step loop (forward, backward, optimiser, AMP) for ResNet-18/50 at 224² and 512², a few hundred steps in all,
   to show the model's throughput without the per-sample CPU augmentation.

Prints one JSON object (images/s, peak GPU memory) and writes bench/results/gpu_check.json.
Usage: ``python bench/gpu_check.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from training.model import build_model  # noqa: E402
from training.train import HParams, autocast_for, train  # noqa: E402


def step_loop(arch: str, size: int, batch: int, steps: int, device: torch.device) -> dict[str, float]:
    model = build_model(arch).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ac, dtype = autocast_for(device, "auto")
    scaler = torch.amp.GradScaler("cuda", enabled=(dtype == torch.float16))
    x = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, device=device) > 0.7).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    torch.cuda.reset_peak_memory_stats(device)

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        with ac():
            out = model(x).reshape(-1)
        loss = loss_fn(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(10):  # warm-up (cuDNN autotuning, allocator)
        one()
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    return {"arch": arch, "size": size, "batch": batch, "steps": steps, "amp_dtype": str(dtype),
            "images_per_s": round(steps * batch / dt, 1),
            "peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}


def main() -> int:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not torch.cuda.is_available():
        # `make bench` runs every bench script: without a GPU this one reports that it was skipped
        print(json.dumps({"skipped": "CUDA is not available; run this on a GPU machine"}))
        return 0
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    result: dict[str, object] = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                                 "cuda": torch.version.cuda}
    t0 = time.perf_counter()
    from training.synthetic import cohort_shards

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        meta = cohort_shards(root / "data", 480, seed=1, image_size=224, render_size=256, prevalence=0.3)
        render_s = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats(device)
        hp = HParams(arch="resnet18", epochs=4, batch_size=64, patience=10, seed=0)
        t1 = time.perf_counter()
        card = train(hp, root / "data" / "train", root / "data" / "val", root / "model", root / "ckpt")
        result["train_code_path"] = {
            "cohort": meta["counts"], "render_s": round(render_s, 1), "wall_s": round(time.perf_counter() - t1, 1),
            "precision": card["training"]["precision"], "epochs": card["training"]["epochs_run"],
            "images_per_s_per_epoch": [round(h["images_per_s"], 1) for h in card["history"]],
            "val_auc_per_epoch": [round(h["val_auc"], 3) for h in card["history"]],
            "peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    loops = []
    for arch, size, batch, steps in (("resnet18", 224, 64, 100), ("resnet50", 224, 64, 100),
                                     ("resnet18", 512, 32, 60), ("resnet50", 512, 32, 60)):
        loops.append(step_loop(arch, size, batch, steps, device))
    result["step_loops"] = loops
    result["total_s"] = round(time.perf_counter() - t0, 1)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
