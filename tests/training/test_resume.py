"""Spot interruption: a run killed right after epoch k's checkpoint and resumed ends with exactly the weights of an
uninterrupted run with the same seed (CPU, one thread: the kernels are deterministic, tolerance 0)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from tests.training.conftest import REPO, env_for
from training.preprocess import write_shard


def _data(root: Path) -> None:
    r = np.random.default_rng(1)
    for split, n in (("train", 24), ("val", 12)):
        y = np.array([0, 1] * (n // 2))
        x = r.random((n, 32, 32)).astype(np.float32) * 0.6 + y[:, None, None] * 0.2
        write_shard(root / split, x, y, [f"1.{i}" for i in range(n)])


def _train(root: Path, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "training.train", "--train-dir", str(root / "train"), "--val-dir", str(root / "val"),
           "--model-dir", str(root / tag / "model"), "--checkpoint-dir", str(root / tag / "ckpt"), "--epochs", "3",
           "--batch-size", "8", "--seed", "5", "--patience", "10", "--threads", "1", *extra]
    return subprocess.run(cmd, env=env_for("resume"), cwd=REPO, capture_output=True, text=True, timeout=300)


def test_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    _data(tmp_path)
    full = _train(tmp_path, "full")
    assert full.returncode == 0, full.stderr[-2000:]
    cut = _train(tmp_path, "cut", "--interrupt-after-epoch", "1")
    assert cut.returncode == 143, cut.stdout[-2000:] + cut.stderr[-2000:]
    assert "INTERRUPT after epoch=1" in cut.stdout and not (tmp_path / "cut" / "model" / "weights.pt").exists()
    assert (tmp_path / "cut" / "ckpt" / "checkpoint.pt").is_file()
    resumed = _train(tmp_path, "cut")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "RESUME epoch=1" in resumed.stdout
    assert resumed.stdout.count("METRIC epoch=") == 2  # epochs 2 and 3 only: at most one epoch is lost
    a = torch.load(tmp_path / "full" / "model" / "weights.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "model" / "weights.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ck_full = torch.load(tmp_path / "full" / "ckpt" / "checkpoint.pt", weights_only=False)
    ck_cut = torch.load(tmp_path / "cut" / "ckpt" / "checkpoint.pt", weights_only=False)
    assert [h["val_auc"] for h in ck_full["history"]] == [h["val_auc"] for h in ck_cut["history"]]
