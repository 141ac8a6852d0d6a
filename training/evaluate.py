"""Processing step: evaluate a trained model on the held-out test split.

Inputs (``/opt/ml/processing/...``, overridable): ``model/model.tar.gz`` (or an extracted model directory), ``val/``
and ``test/`` shards. The operating threshold is chosen on **validation** for ``--sensitivity-target`` (never on test),
then every metric is computed on test at that threshold.

Output ``evaluation/evaluation.json`` uses the SageMaker ModelMetrics layout
(``{"binary_classification_metrics": {"auc": {"value": ..., "standard_deviation": ...}, ...}}``); the pipeline's
Condition step reads ``binary_classification_metrics.auc.value`` from it through a PropertyFile. ``roc.png`` and
``pr.png`` are written next to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, brier_score_loss, precision_recall_curve, roc_curve

from training.model import extract_model_tar, load_model_dir
from training.preprocess import load_shards
from training.sm import opt_ml, write_failure
from training.train import predict, safe_auc, threshold_for_sensitivity

log = logging.getLogger("radloop.training.evaluate")



def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width bins: sum over bins of |accuracy - confidence| weighted by the bin's share."""
    if len(y) == 0:
        return float("nan")
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def _bootstrap_auc_std(y: np.ndarray, p: np.ndarray, n: int = 200, seed: int = 0) -> float:
    r = np.random.default_rng(seed)
    vals = []
    for _ in range(n):
        i = r.integers(0, len(y), len(y))
        if len(np.unique(y[i])) == 2:
            vals.append(safe_auc(y[i], p[i]))
    return float(np.std(vals)) if vals else float("nan")


def _div(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def _downsample(a: np.ndarray, k: int = 200) -> list[float]:
    if len(a) <= k:
        return [float(v) for v in a]
    return [float(v) for v in a[np.linspace(0, len(a) - 1, k).astype(int)]]


def compute_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """All metrics at ``threshold`` in ModelMetrics layout (without curves' PNGs)."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens = _div(tp, tp + fn)
    spec = _div(tn, tn + fp)
    prec = _div(tp, tp + fp)
    f1 = _div(2 * prec * sens, prec + sens) if not np.isnan(prec) and not np.isnan(sens) else float("nan")
    auc = safe_auc(y, p)
    two = len(np.unique(y)) == 2
    fpr, tpr, _ = roc_curve(y, p) if two else (np.array([]), np.array([]), None)
    pc, rc, _ = precision_recall_curve(y, p) if two else (np.array([]), np.array([]), None)

    def v(x: float, **extra: Any) -> dict[str, Any]:
        return {"value": None if x is None or (isinstance(x, float) and np.isnan(x)) else float(x), **extra}

    return {
        "binary_classification_metrics": {
            "auc": v(auc, standard_deviation=_bootstrap_auc_std(y, p) if two else None),
            "accuracy": v(_div(tp + tn, len(y))),
            "sensitivity": v(sens),
            "recall": v(sens),
            "true_positive_rate": v(sens),
            "specificity": v(spec),
            "true_negative_rate": v(spec),
            "false_positive_rate": v(_div(fp, fp + tn)),
            "false_negative_rate": v(_div(fn, fn + tp)),
            "precision": v(prec),
            "f1": v(f1),
            "pr_auc": v(float(average_precision_score(y, p)) if two else float("nan")),
            "brier": v(float(brier_score_loss(y, p)) if len(y) else float("nan")),
            "ece": v(expected_calibration_error(y, p)),
            "threshold": v(threshold),
            "n": v(len(y)),
            "positives": v(int(y.sum())),
            "confusion_matrix": {"0": {"0": tn, "1": fp}, "1": {"0": fn, "1": tp}},
            "receiver_operating_characteristic_curve": {"false_positive_rates": _downsample(fpr),
                                                        "true_positive_rates": _downsample(tpr)},
            "precision_recall_curve": {"precisions": _downsample(pc), "recalls": _downsample(rc)},
        }
    }


def plot_curves(y: np.ndarray, p: np.ndarray, out: Path, threshold: float) -> list[Path]:
    """ROC and PR curves as PNGs (matplotlib Agg backend, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if len(np.unique(y)) < 2:
        return paths
    fpr, tpr, thr = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(fpr, tpr, label=f"ROC (AUC {safe_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    pred = p >= threshold
    ax.scatter([(pred & (y == 0)).sum() / max((y == 0).sum(), 1)], [(pred & (y == 1)).sum() / max(y.sum(), 1)],
               color="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png")
    plt.close(fig)
    paths.append(out / "roc.png")
    pc, rc, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.plot(rc, pc, label=f"PR (AP {average_precision_score(y, p):.3f})")
    ax.axhline(y.mean(), color="k", ls="--", lw=0.8, label="prevalence")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out / "pr.png")
    plt.close(fig)
    paths.append(out / "pr.png")
    return paths


def _model_source(d: Path) -> Path:
    """The model directory inside the model input: extract model.tar.gz when that is what SageMaker delivered."""
    if (d / "config.json").is_file():
        return d
    tars = sorted(d.rglob("model.tar.gz"))
    if not tars:
        raise FileNotFoundError(f"no model.tar.gz or config.json under {d}")
    return extract_model_tar(tars[0], d / "extracted")


def champion_auc_on(champion_in: Path | None, te: dict[str, Any], device: torch.device) -> tuple[float | None, str]:
    """The current champion's AUC on *this* test split (the same patients as the challenger's), or None with why.

    The champion's own recorded AUC was measured on an older, smaller test split; comparing a challenger with it
    compares two different exams. ``champion_in`` holds the champion's ``model.tar.gz`` (or nothing: no champion)."""
    if champion_in is None or not champion_in.is_dir():
        return None, "no champion model was given"
    try:
        source = _model_source(champion_in)
    except FileNotFoundError:
        return None, "no champion model was given"
    model, cfg = load_model_dir(source)
    if int(cfg["input_size"]) != int(te["x"].shape[-1]):
        return None, (f"the champion takes {cfg['input_size']} px inputs and this test split is {te['x'].shape[-1]} px; "
                      "its recorded AUC is used instead")
    model = model.to(device).to(memory_format=torch.channels_last)
    return safe_auc(te["y"], predict(model, te["x"], device)), "re-scored on this test split"


def evaluate(model_in: Path, val_dir: Path, test_dir: Path, out: Path, sensitivity_target: float,
             champion_auc: float = 0.0, auc_margin: float = 0.0, champion_in: Path | None = None) -> dict[str, Any]:
    model, cfg = load_model_dir(_model_source(model_in))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).to(memory_format=torch.channels_last)
    va, te = load_shards(val_dir), load_shards(test_dir)
    if int(va["x"].shape[-1]) != int(cfg["input_size"]):
        raise ValueError(f"shards are {va['x'].shape[-1]} px but the model expects {cfg['input_size']} px")
    if len(te["y"]) == 0:
        raise ValueError("the test split is empty; evaluation needs held-out patients")
    thr = threshold_for_sensitivity(va["y"], predict(model, va["x"], device), sensitivity_target)
    pt = predict(model, te["x"], device)
    report = compute_metrics(te["y"], pt, thr)
    bcm = report["binary_classification_metrics"]
    bcm["sensitivity_target"] = {"value": sensitivity_target}
    bcm["model_threshold"] = {"value": float(cfg.get("threshold", thr))}
    rescored, how = champion_auc_on(champion_in, te, device)
    if rescored is not None:
        bcm["champion_auc"] = {"value": rescored}  # the registry compares with this, not the recorded AUC
        log.info("champion re-scored on this test split: AUC %.4f (recorded %.4f)", rescored, champion_auc)
    # ChampionAuc = 0 means the pipeline's gate does not compare with the champion (the registry still does)
    gated = float(champion_auc) > 0
    bar_auc = rescored if (gated and rescored is not None) else float(champion_auc)
    # pipeline definitions cannot add, so the bar the condition compares the AUC with is computed here
    report["gate"] = {"champion_auc": bar_auc, "recorded_champion_auc": float(champion_auc), "champion_source": how,
                      "auc_margin": float(auc_margin),
                      "champion_bar": round(bar_auc + float(auc_margin), 6) if gated else 0.0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    plot_curves(te["y"], pt, out, thr)
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.evaluate")
    ap.add_argument("--model-dir", default=str(opt_ml("processing", "model")))
    ap.add_argument("--val-dir", default=str(opt_ml("processing", "val")))
    ap.add_argument("--test-dir", default=str(opt_ml("processing", "test")))
    ap.add_argument("--output-dir", default=str(opt_ml("processing", "evaluation")))
    ap.add_argument("--sensitivity-target", type=float, default=0.9)
    ap.add_argument("--champion-auc", type=float, default=0.0, help="the current champion's test AUC (0: none)")
    ap.add_argument("--auc-margin", type=float, default=0.0, help="how much better than the champion to register")
    ap.add_argument("--champion-dir", default=str(opt_ml("processing", "champion")),
                    help="the current champion's model.tar.gz, re-scored on the same test split (absent: none)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 0 < a.sensitivity_target <= 1:
        ap.error(f"--sensitivity-target must be in (0, 1], got {a.sensitivity_target}")
    try:
        rep = evaluate(Path(a.model_dir), Path(a.val_dir), Path(a.test_dir), Path(a.output_dir), a.sensitivity_target,
                       a.champion_auc, a.auc_margin, Path(a.champion_dir))
    except Exception as exc:
        write_failure(f"evaluation failed: {exc}")
        raise
    b = rep["binary_classification_metrics"]
    sys.stdout.write(json.dumps({k: b[k]["value"] for k in ("auc", "accuracy", "sensitivity", "specificity")}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
