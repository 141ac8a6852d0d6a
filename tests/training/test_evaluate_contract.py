"""evaluate.py's evaluation.json against the metrics contract and the definition's JsonGet paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training import evaluate as E
from training import sm
from training.local_executor import parse_path, walk
from training.model import build_model, default_config, save_model_dir, write_model_tar
from training.preprocess import write_shard
from training.train import threshold_for_sensitivity

REQUIRED = ("auc", "accuracy", "sensitivity", "recall", "specificity", "precision", "f1", "pr_auc", "brier", "ece",
            "threshold", "confusion_matrix")


def _json_gets(obj: Any, out: list[tuple[str, str]]) -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        if "Std:JsonGet" in obj:
            j = obj["Std:JsonGet"]
            out.append((j["PropertyFile"]["Get"], j["Path"]))
        for v in obj.values():
            _json_gets(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _json_gets(v, out)
    return out


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    model = build_model("resnet18")
    save_model_dir(model, default_config("resnet18", 32, 0.5), d / "m")
    (d / "model").mkdir()
    write_model_tar(d / "m", d / "model" / "model.tar.gz")  # what SageMaker delivers to the processing job
    r = np.random.default_rng(0)
    for split, n in (("val", 20), ("test", 24)):
        y = np.array([0, 1] * (n // 2))
        x = r.random((n, 32, 32)).astype(np.float32) * 0.5 + y[:, None, None] * 0.3
        write_shard(d / split, x, y, [f"1.2.{i}" for i in range(n)])
    rc = E.main(["--model-dir", str(d / "model"), "--val-dir", str(d / "val"), "--test-dir", str(d / "test"),
                 "--output-dir", str(d / "evaluation"), "--champion-auc", "0.8", "--auc-margin", "0.02"])
    assert rc == 0
    return d / "evaluation"


def test_evaluation_json_has_the_model_metrics_layout(evaluation: Path) -> None:
    report = json.loads((evaluation / "evaluation.json").read_text())
    bcm = report["binary_classification_metrics"]
    for k in REQUIRED:
        assert k in bcm, k
    for k in REQUIRED[:-1]:
        assert isinstance(bcm[k]["value"], float), k
    cm = bcm["confusion_matrix"]
    assert sum(cm[a][b] for a in "01" for b in "01") == 24
    assert bcm["sensitivity"]["value"] == bcm["recall"]["value"]
    assert report["gate"]["champion_bar"] == pytest.approx(0.82)
    promo = report["promotion"]
    assert promo["locked_set"]["n"] == 24 and promo["champion"] is None and promo["paired"] is None
    lo, hi = promo["challenger"]["low"], promo["challenger"]["high"]
    assert lo <= bcm["auc"]["value"] <= hi
    op = promo["operating_point"]
    assert op["threshold"] == pytest.approx(bcm["threshold"]["value"]) and op["validation_positives"] == 10
    assert op["specificity"] == pytest.approx(bcm["specificity"]["value"]) and len(op["specificity_ci"]) == 2
    assert promo["calibration"]["brier"] == pytest.approx(bcm["brier"]["value"], abs=1e-6)
    lines = (evaluation / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 24 and set(json.loads(lines[0])) == {"target", "probability"}
    assert (evaluation / "roc.png").read_bytes()[:4] == b"\x89PNG" and (evaluation / "pr.png").is_file()


def test_definition_json_get_paths_resolve_against_a_real_evaluation(evaluation: Path,
                                                                     definition: dict[str, Any]) -> None:
    report = json.loads((evaluation / "evaluation.json").read_text())
    gets = [(ref, path) for ref, path in _json_gets(definition, []) if ref.endswith("PropertyFiles.EvaluationReport")]
    assert {p for _, p in gets} >= {sm.AUC_PATH, sm.CHAMPION_BAR_PATH}
    for _, path in gets:
        v = walk(report, parse_path(path), path)
        assert isinstance(v, float), path


def test_the_champion_is_re_scored_on_the_same_test_split(evaluation: Path, tmp_path: Path) -> None:
    """With the champion's model.tar.gz as an input, the gate and the registry compare with the champion's AUC on
    this test split, not with the AUC it was registered with (an older, smaller split)."""
    d = evaluation.parent
    out = tmp_path / "evaluation"
    rc = E.main(["--model-dir", str(d / "model"), "--val-dir", str(d / "val"), "--test-dir", str(d / "test"),
                 "--output-dir", str(out), "--champion-auc", "0.99", "--auc-margin", "0.02",
                 "--champion-dir", str(d / "model")])  # the same model as champion: the same AUC, by construction
    assert rc == 0
    report = json.loads((out / "evaluation.json").read_text())
    auc = report["binary_classification_metrics"]["auc"]["value"]
    assert report["binary_classification_metrics"]["champion_auc"]["value"] == pytest.approx(auc)
    assert report["gate"]["champion_auc"] == pytest.approx(auc) and report["gate"]["recorded_champion_auc"] == 0.99
    assert report["gate"]["champion_bar"] == pytest.approx(auc + 0.02, abs=1e-6)
    assert report["gate"]["champion_source"] == "re-scored on the same locked set"
    # the same model as champion: a paired difference of exactly 0, with an interval around it
    promo = report["promotion"]
    assert promo["paired"]["diff"] == 0.0 and promo["paired"]["low"] <= 0.0 <= promo["paired"]["high"]
    assert promo["champion"]["auc"] == promo["challenger"]["auc"] == pytest.approx(auc, abs=1e-6)
    assert promo["verdict"]["decision"] == "pending"  # 12 + 12 cases and an untrained model: pending, with reasons
    assert any("holds 12 positives and 12 negatives" in r for r in promo["verdict"]["reasons"])


def test_no_champion_model_keeps_the_recorded_auc(evaluation: Path, tmp_path: Path) -> None:
    d = evaluation.parent
    empty = tmp_path / "champion"
    empty.mkdir()
    (empty / "NONE").write_text("no champion")  # what the pipeline's default input holds
    rc = E.main(["--model-dir", str(d / "model"), "--val-dir", str(d / "val"), "--test-dir", str(d / "test"),
                 "--output-dir", str(tmp_path / "ev"), "--champion-auc", "0.8", "--auc-margin", "0.02",
                 "--champion-dir", str(empty)])
    assert rc == 0
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert "champion_auc" not in report["binary_classification_metrics"]
    assert report["gate"]["champion_bar"] == pytest.approx(0.82)


def test_metrics_on_known_predictions() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    m = E.compute_metrics(y, p, 0.5)["binary_classification_metrics"]
    assert m["confusion_matrix"] == {"0": {"0": 3, "1": 1}, "1": {"0": 1, "1": 3}}
    assert m["sensitivity"]["value"] == 0.75 and m["specificity"]["value"] == 0.75
    assert m["auc"]["value"] == pytest.approx(15 / 16)
    assert m["brier"]["value"] == pytest.approx(np.mean((p - y) ** 2))
    assert 0 <= m["ece"]["value"] <= 1
    # the operating threshold keeps at least the target sensitivity on validation, by the split-conformal rule:
    # the k-th lowest positive score, k = floor((n + 1) * (1 - target)), at least 1
    t = threshold_for_sensitivity(y, p, 0.75)
    assert t == pytest.approx(0.4) and ((p >= t) & (y == 1)).sum() / 4 >= 0.75  # k = floor(5 * 0.25) = 1
    assert threshold_for_sensitivity(y, p, 1.0) == pytest.approx(0.4)
    assert threshold_for_sensitivity(y, p, 0.0) == pytest.approx(0.9)  # k capped at n
    assert threshold_for_sensitivity(np.zeros(3), np.ones(3) * 0.2, 0.9) == 0.5  # no positives


def test_the_conformal_threshold_meets_the_target_on_new_positives() -> None:
    """Draw validation and test positives from one distribution: averaged over draws, the test sensitivity at the
    threshold meets the target. The in-sample rule (k-th highest, k = ceil(target * n)) falls short of it."""
    rng = np.random.default_rng(0)
    target, n_val, n_test = 0.9, 14, 2000
    conformal, in_sample = [], []
    for _ in range(400):
        val_pos, test_pos = rng.normal(size=n_val), rng.normal(size=n_test)
        y = np.ones(n_val, dtype=int)
        conformal.append(np.mean(test_pos >= threshold_for_sensitivity(y, val_pos, target)))
        in_sample.append(np.mean(test_pos >= np.sort(val_pos)[::-1][int(np.ceil(target * n_val)) - 1]))
    assert np.mean(conformal) >= target
    assert np.mean(in_sample) < target
