"""Metrics from ``evaluation.json``, confidence intervals, and the model card (JSON + Markdown).

Intervals are bootstrap percentiles (95 %):
- **per-case bootstrap** when the evaluation left per-case predictions next to ``evaluation.json`` (resampling
  cases with replacement, stratified by class, and recomputing AUC, sensitivity and specificity);
- otherwise a **parametric bootstrap from the evaluation counts**: sensitivity and specificity are resampled as
  binomial proportions of the confusion-matrix counts, and AUC from the normal approximation with the Hanley-McNeil
  (1982) standard error for the observed positives and negatives.
The card says which one was used.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import numpy as np

CI_LEVEL = 0.95


def metric_value(block: Any) -> float | None:
    if isinstance(block, dict):
        block = block.get("value")
    try:
        v = float(block)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def confusion_counts(cm: Any) -> dict[str, int] | None:
    """tp/fn/tn/fp from the layouts an evaluation may use: flat keys or SageMaker's actual -> predicted nesting."""
    if not isinstance(cm, dict):
        return None
    flat = {str(k).lower(): v for k, v in cm.items()}
    aliases = {"tp": ("tp", "true_positive", "true_positives"), "fn": ("fn", "false_negative", "false_negatives"),
               "tn": ("tn", "true_negative", "true_negatives"), "fp": ("fp", "false_positive", "false_positives")}
    out: dict[str, int] = {}
    for k, names in aliases.items():
        for n in names:
            if n in flat:
                out[k] = int(metric_value(flat[n]) or 0)
                break
    if len(out) == 4:
        return out
    if {"0", "1"} <= set(flat) and isinstance(flat["0"], dict) and isinstance(flat["1"], dict):
        def g(a: str, p: str) -> int:
            return int(metric_value(flat[a].get(p, flat[a].get(int(p), 0))) or 0)
        return {"tn": g("0", "0"), "fp": g("0", "1"), "fn": g("1", "0"), "tp": g("1", "1")}
    return None


def metrics_from_evaluation(doc: dict[str, Any]) -> dict[str, Any]:
    """Flatten ``binary_classification_metrics`` into ``{"auc": .., "sensitivity": .., ..., "confusion": {...}}``."""
    m = doc.get("binary_classification_metrics") or {}
    out: dict[str, Any] = {}
    for key in ("auc", "accuracy", "specificity", "precision", "f1", "pr_auc", "brier", "ece", "threshold"):
        v = metric_value(m.get(key))
        if v is not None:
            out[key] = v
    sens = metric_value(m.get("sensitivity")) if "sensitivity" in m else metric_value(m.get("recall"))
    if sens is not None:
        out["sensitivity"] = sens
    cm = confusion_counts(m.get("confusion_matrix"))
    if cm:
        out["confusion"] = cm
    for key in ("n_test", "test_cases", "n"):
        v = metric_value(m.get(key)) if key in m else metric_value(doc.get(key))
        if v is not None:
            out["n_test"] = int(v)
            break
    return out


def metric_or_none(evaluation: dict[str, Any], key: str) -> float | None:
    """One metric of ``binary_classification_metrics`` (a ``{"value": ..}`` block or a number), or None."""
    block = (evaluation.get("binary_classification_metrics") or {}).get(key)
    return metric_value(block) if block is not None else None


def numeric_metrics(metrics: dict[str, Any] | None) -> dict[str, float]:
    """The numeric entries of a metrics dict (what ``ModelRegistered`` carries)."""
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}


def parse_predictions(name: str, text: str) -> tuple[list[int], list[float]] | None:
    """Per-case test predictions from ``predictions.jsonl`` or ``predictions.csv`` (target, probability); None
    unless both classes are present (an interval needs positives and negatives)."""
    if name.endswith("jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    y, p = [], []
    for r in rows:
        t = r.get("target", r.get("y_true", r.get("label")))
        s = r.get("probability", r.get("y_score", r.get("score")))
        if t is None or s is None:
            continue
        y.append(int(float(t)))
        p.append(float(s))
    return (y, p) if y and 0 < sum(y) < len(y) else None


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """Mann-Whitney AUC with average ranks for ties."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sp = p[order]
    i = 0
    while i < len(sp):
        j = i
        while j + 1 < len(sp) and sp[j + 1] == sp[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _interval(samples: list[float]) -> list[float] | None:
    arr = np.array([s for s in samples if math.isfinite(s)])
    if len(arr) == 0:
        return None
    a = (1 - CI_LEVEL) / 2
    return [round(float(np.quantile(arr, a)), 4), round(float(np.quantile(arr, 1 - a)), 4)]


def ci_from_predictions(
    y: list[int], p: list[float], threshold: float, resamples: int, seed: int = 0
) -> dict[str, Any]:
    """Stratified per-case bootstrap of AUC, sensitivity and specificity."""
    ya, pa = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(ya == 1), np.flatnonzero(ya == 0)
    aucs, sens, spec = [], [], []
    for _ in range(resamples):
        idx = np.concatenate([rng.choice(pos_idx, len(pos_idx)), rng.choice(neg_idx, len(neg_idx))])
        yy, pp = ya[idx], pa[idx]
        aucs.append(_auc(yy, pp))
        pred = pp >= threshold
        sens.append(float(pred[yy == 1].mean()) if len(pos_idx) else float("nan"))
        spec.append(float((~pred[yy == 0]).mean()) if len(neg_idx) else float("nan"))
    return {"method": "bootstrap over per-case predictions (stratified, percentile)", "resamples": resamples,
            "level": CI_LEVEL, "cases": len(ya),
            "auc": _interval(aucs), "sensitivity": _interval(sens), "specificity": _interval(spec)}


def ci_from_counts(metrics: dict[str, Any], resamples: int, seed: int = 0) -> dict[str, Any]:
    """Parametric bootstrap from the evaluation's confusion counts and AUC (no per-case predictions available)."""
    cm = metrics.get("confusion")
    out: dict[str, Any] = {
        "method": "parametric bootstrap from evaluation counts (binomial for sensitivity/specificity; normal with "
                  "Hanley-McNeil SE for AUC)",
        "resamples": resamples, "level": CI_LEVEL,
    }
    if not cm:
        out.update(auc=None, sensitivity=None, specificity=None, note="the evaluation has no confusion matrix")
        return out
    rng = np.random.default_rng(seed)
    npos, nneg = cm["tp"] + cm["fn"], cm["tn"] + cm["fp"]
    out["cases"] = npos + nneg
    if npos:
        out["sensitivity"] = _interval(list(rng.binomial(npos, cm["tp"] / npos, resamples) / npos))
    if nneg:
        out["specificity"] = _interval(list(rng.binomial(nneg, cm["tn"] / nneg, resamples) / nneg))
    auc = metrics.get("auc")
    if auc is not None and npos and nneg:
        q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
        var = (auc * (1 - auc) + (npos - 1) * (q1 - auc * auc) + (nneg - 1) * (q2 - auc * auc)) / (npos * nneg)
        se = math.sqrt(max(var, 0.0))
        out["auc"] = _interval(list(np.clip(rng.normal(auc, se, resamples), 0, 1)))
    return out


def build_card(model: dict[str, Any], ci: dict[str, Any], policy: dict[str, Any]) -> dict[str, Any]:
    """The model card as JSON."""
    lineage = model.get("lineage", {})
    return {
        "model": {"name": "radloop pneumonia triage", "version": model["version"],
                  "model_package_arn": model.get("model_package_arn"), "status": model.get("status"),
                  "artifact": model.get("model_artifact_uri"), "threshold": model.get("threshold")},
        "intended_use": (
            "Prioritising chest radiographs (CR/DX, PA/AP) on a reading worklist: images scored above the operating "
            "threshold are read first. It is a triage aid, not a diagnosis: every image is still read by a "
            "radiologist, whose label is the ground truth."
        ),
        "data": {"manifest_sha256": lineage.get("manifest_sha256"), "manifest_uri": lineage.get("manifest_uri"),
                 "label_counts": lineage.get("label_counts"), "split_counts": lineage.get("split_counts"),
                 "splits": "by a stable hash of the patient pseudo-id (70/15/15 train/val/held out); a patient is in "
                           "the same split in every dataset version. The held-out patients form the locked evaluation "
                           "set (append-only, versioned by its sha256), which no training run sees; every candidate "
                           "and the champion are scored on it."},
        "metrics": {k: v for k, v in (model.get("metrics") or {}).items()},
        "confidence_intervals": ci,
        # the locked evaluation set's version, and the evidence the approval decision was made on (DeLong intervals)
        "locked_set": lineage.get("locked_set"),
        "evidence": model.get("evidence"),
        "approval": {"policy": policy, "decision_reason": model.get("decision_reason"),
                     "history": model.get("history", [])},
        "limitations": [
            "Trained on the labels verified on this platform so far; performance on other sites, devices or "
            "populations is unknown until measured there.",
            "Small test sets give wide confidence intervals; read the intervals, not only the point estimates.",
            "One binary finding (pneumonia-like opacity vs normal); other findings are out of scope.",
            "Scores of images outside the intended use (other modalities, body parts, paediatric images) are "
            "not meaningful.",
        ],
        "lineage": lineage,
    }


def _ci_text(block: Any) -> str:
    if not isinstance(block, dict) or block.get("low") is None:
        return "n/a"
    return f"{block.get('auc', block.get('diff')):.4f} (95% CI {block['low']:.4f} to {block['high']:.4f})"


def _evidence_lines(locked: Any, ev: Any) -> list[str]:
    """The card's "Locked evaluation set" section: version, counts, each AUC and the paired difference with CIs."""
    if not isinstance(ev, dict):
        return ["## Locked evaluation set", "", "The evaluation carries no locked-set evidence.", ""]
    locked = locked or ev.get("locked_set") or {}
    op = ev.get("operating_point") or {}
    cal = ev.get("calibration") or {}
    paired = ev.get("paired")
    lines = ["## Locked evaluation set", "",
             f"- Version {locked.get('version')} (sha256 `{locked.get('sha256')}`): {locked.get('n')} cases, "
             f"{locked.get('positives')} positive, {locked.get('negatives')} negative",
             f"- This model's AUC: {_ci_text(ev.get('challenger'))} (DeLong)",
             f"- Champion's AUC on the same cases: {_ci_text(ev.get('champion'))}",
             f"- Paired difference (this − champion, {ev.get('comparison')}): {_ci_text(paired)}",
             f"- Operating threshold {op.get('threshold')} chosen on validation ({op.get('validation_positives')} "
             f"positives), 95% CI {op.get('threshold_ci')}",
             f"- Sensitivity {op.get('sensitivity')} (95% CI {op.get('sensitivity_ci')}), specificity "
             f"{op.get('specificity')} (95% CI {op.get('specificity_ci')})",
             f"- Calibration: Brier {cal.get('brier')}, ECE {cal.get('ece')}", ""]
    return lines


def card_markdown(card: dict[str, Any]) -> str:
    """The model card as Markdown."""
    m, d, ci = card["model"], card["data"], card["confidence_intervals"]
    lines = [f"# Model card: {m['name']} v{m['version']}", "",
             f"- Status: **{m['status']}**", f"- Model package: `{m['model_package_arn']}`",
             f"- Artefact: `{m['artifact']}`", f"- Operating threshold: {m['threshold']}", "",
             "## Intended use", "", card["intended_use"], "",
             "## Data", "", f"- Manifest: `{d['manifest_uri']}` (sha256 `{d['manifest_sha256']}`)",
             f"- Labels per class: {d['label_counts']}", f"- Labels per split and class: {d['split_counts']}",
             f"- Splits: {d['splits']}", "",
             *_evidence_lines(card.get("locked_set"), card.get("evidence")),
             "## Metrics (locked evaluation set)", "", f"Confidence intervals: {ci.get('method')}, "
             f"{int(ci.get('level', CI_LEVEL) * 100)} %, {ci.get('resamples')} resamples.", "",
             "| metric | value | 95 % CI |", "|---|---|---|"]
    for k, v in card["metrics"].items():
        if isinstance(v, dict):
            continue
        interval = ci.get(k)
        lines.append(f"| {k} | {v:.4f} | {f'{interval[0]:.4f} – {interval[1]:.4f}' if interval else ''} |")
    conf = card["metrics"].get("confusion")
    if conf:
        lines += ["", f"Confusion counts: TP {conf['tp']}, FN {conf['fn']}, TN {conf['tn']}, FP {conf['fp']}."]
    lines += ["", "## Limitations", ""] + [f"- {x}" for x in card["limitations"]]
    lin = card["lineage"]
    lines += ["", "## Lineage", "", f"- Pipeline execution: `{lin.get('pipeline_execution')}`",
              f"- Training run: `{lin.get('run_id')}`", f"- Code version: `{lin.get('code_version')}`",
              f"- Hyper-parameters: `{lin.get('hyperparameters')}`",
              f"- Parent (champion when trained): {lin.get('parent_version')}", "",
              "## Approval", "", f"- Policy: `{card['approval']['policy']}`",
              f"- Decision: {card['approval']['decision_reason']}"]
    for h in card["approval"]["history"]:
        lines.append(f"- {h.get('at')}: {h.get('action')} by {h.get('by')}: {h.get('reason')}")
    return "\n".join(lines) + "\n"
