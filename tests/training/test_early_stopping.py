"""Early stopping, and the choice of the best epoch, only trust a validation split large enough to judge by
(HParams.early_stop_min_val)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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


@pytest.fixture
def two_class_shards(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    write_shard(tmp_path / "train2", rng.random((16, 32, 32), dtype=np.float32), [0, 1] * 8,
                [f"t{i}" for i in range(16)])
    write_shard(tmp_path / "val2", rng.random((8, 32, 32), dtype=np.float32), [0, 1] * 4, [f"v{i}" for i in range(8)])
    return tmp_path / "train2", tmp_path / "val2"


@pytest.mark.parametrize(("min_val", "select", "expect"), [
    (50, "auto", "last"),       # an 8-image split cannot pick an epoch: the annealed last one is kept
    (0, "auto", "best_val"),    # a split large enough: the best epoch's weights
    (50, "best_val", "best_val"),
    (0, "last", "last"),
])
def test_the_model_is_the_last_epoch_unless_the_validation_split_can_choose(two_class_shards, tmp_path: Path,
                                                                              min_val: int, select: str,
                                                                              expect: str) -> None:
    from training.model import load_model_dir
    from training.train import CHECKPOINT

    hp = HParams(arch="resnet10", epochs=4, batch_size=8, patience=10, threads=1, augment=False,
                 early_stop_min_val=min_val, select=select)
    card = train(hp, *two_class_shards, tmp_path / "out", tmp_path / "ck")
    ck = torch.load(tmp_path / "ck" / CHECKPOINT, map_location="cpu", weights_only=False)
    assert card["training"]["selected"] == expect
    want = ck["model"] if expect == "last" else ck["best_state"]
    assert card["training"]["selected_epoch"] == (4 if expect == "last" else ck["best_epoch"])
    model, _ = load_model_dir(tmp_path / "out")
    got = model.state_dict()
    assert all(torch.equal(got[k].cpu(), want[k].cpu()) for k in want)
    # the card's val AUC is the shipped model's, next to the best epoch's
    assert card["metrics"]["best_val_auc"] == max(h["val_auc"] for h in card["history"])


def test_an_unknown_selection_is_refused() -> None:
    with pytest.raises(ValueError, match="select"):
        HParams.from_mapping({"select": "median"})
