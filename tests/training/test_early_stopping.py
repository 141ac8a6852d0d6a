"""Early stopping only trusts a validation split large enough to judge by (HParams.early_stop_min_val)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.preprocess import write_shard
from training.train import HParams, train


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "train", rng.random((16, 32, 32), dtype=np.float32), [0, 1] * 8,
                [f"t{i}" for i in range(16)])
    # one class only: the validation AUC is undefined, so no epoch ever improves on the best and patience runs out
    write_shard(tmp_path / "val", rng.random((6, 32, 32), dtype=np.float32), [1] * 6, [f"v{i}" for i in range(6)])
    return tmp_path / "train", tmp_path / "val"


@pytest.mark.parametrize(("min_val", "epochs_run", "stopped"), [(50, 5, False), (0, 1, True)])
def test_early_stopping_waits_for_a_large_enough_validation_split(shards, tmp_path: Path, min_val: int,
                                                                  epochs_run: int, stopped: bool) -> None:
    hp = HParams(arch="resnet10", epochs=5, batch_size=8, patience=1, min_epochs=1, threads=1, augment=False,
                 early_stop_min_val=min_val)
    card = train(hp, *shards, tmp_path / f"out{min_val}", tmp_path / f"ck{min_val}")
    assert card["training"]["epochs_run"] == epochs_run
    assert card["training"]["stopped_early"] is stopped
