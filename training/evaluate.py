"""Processing step: evaluate a trained model on the locked evaluation set (Preprocess writes it as the test split).

Inputs (``/opt/ml/processing/...``, overridable): ``model/model.tar.gz`` (or an extracted model directory), ``val/``
and ``test/`` shards. The operating threshold is chosen on **validation** for ``--sensitivity-target`` (never on test),
then every metric is computed on test at that threshold.

Output ``evaluation/evaluation.json`` uses the SageMaker ModelMetrics layout
(``{"binary_classification_metrics": {"auc": {"value": ..., "standard_deviation": ...}, ...}}``); the pipeline's
Condition step reads ``binary_classification_metrics.auc.value`` from it through a PropertyFile. ``roc.png`` and
``pr.png`` are written next to it, and ``predictions.jsonl`` (target and probability per case, no identifiers).

The ``promotion`` block is the evidence the approval policy judges (:func:`shared.approval.judge`): the locked set's
version and counts, the challenger's AUC with its DeLong 95% interval, the champion re-scored on the same cases and
the paired difference with its interval, the operating point (threshold chosen on validation, with a bootstrap
interval and the number of validation positives it was chosen from; sensitivity and specificity on the locked set
with Wilson intervals), and calibration (Brier, ECE); then the policy's verdict with its reasons. The registry
applies the same function to the same block.
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

from shared import stats
from shared.approval import COMPARISONS, judge, load_policy
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


def champion_scores_on(champion_in: Path | None, te: dict[str, Any],
                       device: torch.device) -> tuple[np.ndarray | None, str]:
    """The current champion's scores on *this* test split (the locked set: the challenger's cases), or None with why.

    The champion's own recorded AUC was measured on an older evaluation; comparing a challenger with it compares two
    different exams. ``champion_in`` holds the champion's ``model.tar.gz`` (or nothing: no champion)."""
    if champion_in is None or not champion_in.is_dir():
        return None, "no champion model was given"
    try:
        source = _model_source(champion_in)
    except FileNotFoundError:
        return None, "no champion model was given"
    model, cfg = load_model_dir(source)
    if int(cfg["input_size"]) != int(te["x"].shape[-1]):
        return None, (f"the champion takes {cfg['input_size']} px inputs and this test split is {te['x'].shape[-1]} px; "
                      "it cannot be re-scored on the same cases")
    model = model.to(device).to(memory_format=torch.channels_last)
    return predict(model, te["x"], device), "re-scored on the same locked set"


def champion_auc_on(champion_in: Path | None, te: dict[str, Any], device: torch.device) -> tuple[float | None, str]:
    """The champion's AUC on this test split (see :func:`champion_scores_on`), or None with why."""
    scores, how = champion_scores_on(champion_in, te, device)
    return (None, how) if scores is None else (safe_auc(te["y"], scores), how)


def threshold_interval(y: np.ndarray, p: np.ndarray, target: float, resamples: int = 500,
                       seed: int = 0) -> list[float] | None:
    """95% percentile interval of the operating threshold: the validation cases resampled (stratified by class) and
    the threshold chosen again by the same rule."""
    y = np.asarray(y).astype(int)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    if len(pos) == 0:
        return None
    r = np.random.default_rng(seed)
    vals = []
    for _ in range(resamples):
        idx = np.concatenate([r.choice(pos, len(pos)), r.choice(neg, len(neg)) if len(neg) else neg])
        vals.append(threshold_for_sensitivity(y[idx], p[idx], target))
    return [round(float(np.quantile(vals, 0.025)), 6), round(float(np.quantile(vals, 0.975)), 6)]


def promotion_evidence(y_val: np.ndarray, p_val: np.ndarray, threshold: float, y: np.ndarray, p: np.ndarray,
                       champion: np.ndarray | None, *, target: float, locked: dict[str, Any] | None,
                       champion_expected: bool, comparison: str) -> dict[str, Any]:
    """What the approval policy judges (:func:`shared.approval.judge`), all on the locked set but the threshold."""
    y = np.asarray(y).astype(int)
    pred = p >= threshold
    npos, nneg = int((y == 1).sum()), int((y == 0).sum())
    tp, tn = int((pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    two = npos > 0 and nneg > 0
    op = {"threshold": round(float(threshold), 6), "chosen_on": "validation", "sensitivity_target": target,
          "threshold_ci": threshold_interval(y_val, p_val, target),
          "validation_positives": int((np.asarray(y_val) == 1).sum()),
          "validation_negatives": int((np.asarray(y_val) == 0).sum()),
          "sensitivity": _div(tp, npos) if npos else None, "sensitivity_ci": list(stats.wilson(tp, npos)),
          "specificity": _div(tn, nneg) if nneg else None, "specificity_ci": list(stats.wilson(tn, nneg))}
    ev: dict[str, Any] = {
        "locked_set": locked or {"version": None, "sha256": "", "n": int(len(y)), "positives": npos, "negatives": nneg},
        "challenger": stats.auc_ci(y, p).as_dict() if two else None,
        "champion": None, "paired": None, "champion_expected": bool(champion_expected), "comparison": comparison,
        "operating_point": op,
        "calibration": {"brier": round(stats.brier(y, p), 6), "ece": round(stats.expected_calibration_error(y, p), 6)},
    }
    if champion is not None and two:
        ev["champion"] = stats.auc_ci(y, champion).as_dict()
        ev["paired"] = stats.delong_paired(y, p, champion).as_dict()
    return ev


def evaluate(model_in: Path, val_dir: Path, test_dir: Path, out: Path, sensitivity_target: float,
             champion_auc: float = 0.0, auc_margin: float = 0.0, champion_in: Path | None = None,
             comparison: str = "superiority") -> dict[str, Any]:
    model, cfg = load_model_dir(_model_source(model_in))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).to(memory_format=torch.channels_last)
    va, te = load_shards(val_dir), load_shards(test_dir)
    if int(va["x"].shape[-1]) != int(cfg["input_size"]):
        raise ValueError(f"shards are {va['x'].shape[-1]} px but the model expects {cfg['input_size']} px")
    if len(te["y"]) == 0:
        raise ValueError("the test split (the locked evaluation set) is empty; evaluation needs held-out patients")
    pv = predict(model, va["x"], device)
    thr = threshold_for_sensitivity(va["y"], pv, sensitivity_target)
    pt = predict(model, te["x"], device)
    report = compute_metrics(te["y"], pt, thr)
    bcm = report["binary_classification_metrics"]
    bcm["sensitivity_target"] = {"value": sensitivity_target}
    bcm["model_threshold"] = {"value": float(cfg.get("threshold", thr))}
    champ_scores, how = champion_scores_on(champion_in, te, device)
    rescored = None if champ_scores is None else safe_auc(te["y"], champ_scores)
    if rescored is not None:
        bcm["champion_auc"] = {"value": rescored}  # the registry compares with this, not the recorded AUC
        log.info("champion re-scored on the locked set: AUC %.4f (recorded %.4f)", rescored, champion_auc)
    meta_file = Path(test_dir) / "meta.json"
    locked = json.loads(meta_file.read_text()).get("locked_set") if meta_file.is_file() else None
    champion_given = champion_in is not None and how != "no champion model was given"
    evidence = promotion_evidence(va["y"], pv, thr, te["y"], pt, champ_scores, target=sensitivity_target,
                                  locked=locked if locked and locked.get("sha256") else None,
                                  champion_expected=champion_given, comparison=comparison)
    policy = load_policy()
    verdict = judge(policy, evidence)
    report["promotion"] = {**evidence, "policy": policy.name, "verdict": verdict.as_dict()}
    # ChampionAuc = 0 means the pipeline's gate does not compare with the champion (the registry still does)
    gated = float(champion_auc) > 0
    bar_auc = rescored if (gated and rescored is not None) else float(champion_auc)
    signed = float(auc_margin) if comparison == "superiority" else -float(auc_margin)
    # pipeline definitions cannot add, so the bar the condition compares the AUC with is computed here
    report["gate"] = {"champion_auc": bar_auc, "recorded_champion_auc": float(champion_auc), "champion_source": how,
                      "auc_margin": float(auc_margin), "comparison": comparison,
                      "champion_bar": round(bar_auc + signed, 6) if gated else 0.0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2))
    # per-case scores (target and probability only, no identifiers): the model card's per-case intervals
    (out / "predictions.jsonl").write_text("".join(
        json.dumps({"target": int(t), "probability": round(float(q), 6)}) + "\n" for t, q in zip(te["y"], pt, strict=True)))
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
    ap.add_argument("--comparison", default="superiority", choices=COMPARISONS,
                    help="superiority, or non-inferiority for a declared refresh (shared/approval.py)")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if not 0 < a.sensitivity_target <= 1:
        ap.error(f"--sensitivity-target must be in (0, 1], got {a.sensitivity_target}")
    try:
        rep = evaluate(Path(a.model_dir), Path(a.val_dir), Path(a.test_dir), Path(a.output_dir), a.sensitivity_target,
                       a.champion_auc, a.auc_margin, Path(a.champion_dir), a.comparison)
    except Exception as exc:
        write_failure(f"evaluation failed: {exc}")
        raise
    b = rep["binary_classification_metrics"]
    sys.stdout.write(json.dumps({k: b[k]["value"] for k in ("auc", "accuracy", "sensitivity", "specificity")}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
