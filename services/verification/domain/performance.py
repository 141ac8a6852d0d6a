"""Live model performance from verified labels: confusion matrix, sensitivity, specificity, PPV, NPV, AUC, kappa.

The population of a model version is the images it scored that have a final, non-excluded label (pneumonia or
normal; ``indeterminate`` is excluded), and only those it scored *before* the label was final: monitoring is
prospective. A score given after the read (a new champion scoring the backlog, which holds the very images it was
trained on) says nothing about how the model triages new images, and would flatter or condemn it unfairly.
The rolling window keeps the most recently verified ``window`` of them. A
positive call is ``probability >= threshold``, the threshold the model scored with.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """One verified, scored image."""

    model_version: int
    probability: float
    threshold: float
    label: int  # 1 pneumonia, 0 normal
    verified_at: str


def auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """ROC AUC by the Mann-Whitney U statistic (ties count one half); None without both classes."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y == 1]
    neg = [s for s, y in zip(scores, labels, strict=True) if y == 0]
    if not pos or not neg:
        return None
    ranked = sorted((s, y) for s, y in zip(scores, labels, strict=True))
    # average ranks over ties
    ranks: list[float] = [0.0] * len(ranked)
    i = 0
    while i < len(ranked):
        j = i
        while j + 1 < len(ranked) and ranked[j + 1][0] == ranked[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    r_pos = sum(r for r, (_, y) in zip(ranks, ranked, strict=True) if y == 1)
    u = r_pos - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def metrics(outcomes: Iterable[Outcome], window: int) -> dict[str, Any]:
    """Metrics of one model version over its most recent ``window`` verified images."""
    recent = sorted(outcomes, key=lambda o: o.verified_at)[-window:] if window > 0 else list(outcomes)
    tp = sum(1 for o in recent if o.label == 1 and o.probability >= o.threshold)
    fn = sum(1 for o in recent if o.label == 1 and o.probability < o.threshold)
    fp = sum(1 for o in recent if o.label == 0 and o.probability >= o.threshold)
    tn = sum(1 for o in recent if o.label == 0 and o.probability < o.threshold)
    return {
        "sample_size": len(recent),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "auc": auc([o.probability for o in recent], [o.label for o in recent]),
        "prevalence": _ratio(tp + fn, len(recent)),
    }


def cohen_kappa(pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Cohen's kappa of two readers over label pairs (all three labels are categories)."""
    ps = list(pairs)
    n = len(ps)
    if n == 0:
        return {"pairs": 0, "kappa": None, "observed_agreement": None}
    po = sum(1 for a, b in ps if a == b) / n
    ca, cb = Counter(a for a, _ in ps), Counter(b for _, b in ps)
    pe = sum(ca[k] * cb[k] for k in set(ca) | set(cb)) / (n * n)
    kappa = 1.0 if pe == 1.0 else (po - pe) / (1 - pe)
    return {"pairs": n, "kappa": kappa, "observed_agreement": po}


def breaches(m: dict[str, Any], *, min_sample: int, auc_floor: float, sensitivity_floor: float) -> list[tuple[str, float, float]]:
    """(metric, value, floor) for each monitored metric below its floor, when the sample is large enough."""
    if m["sample_size"] < min_sample:
        return []
    out = []
    if m["auc"] is not None and m["auc"] < auc_floor:
        out.append(("auc", float(m["auc"]), auc_floor))
    if m["sensitivity"] is not None and m["sensitivity"] < sensitivity_floor:
        out.append(("sensitivity", float(m["sensitivity"]), sensitivity_floor))
    return out


def outcome_of(case: dict[str, Any]) -> Outcome | None:
    """The outcome a case contributes, or None (not final, excluded, not scored by a model, or scored only after its
    label was final)."""
    final, score = case.get("final") or {}, case.get("score") or {}
    if not final or final.get("excluded") or final.get("label") not in ("pneumonia", "normal"):
        return None
    if score.get("status") != "scored" or score.get("probability") is None or score.get("model_version") is None:
        return None
    scored_at, final_at = _instant(score.get("event_at")), _instant(final.get("at"))
    if scored_at is not None and final_at is not None and scored_at > final_at:
        return None
    return Outcome(model_version=int(score["model_version"]), probability=float(score["probability"]),
                   threshold=float(score["threshold"]), label=1 if final["label"] == "pneumonia" else 0,
                   verified_at=str(final.get("at", "")))


def _instant(value: Any) -> datetime | None:
    """An ISO-8601 timestamp as a datetime (None when absent or unreadable): the score and the label carry different
    precisions, so they are compared as instants, not as strings."""
    try:
        instant = datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
    return instant.replace(tzinfo=UTC) if instant is not None and instant.tzinfo is None else instant  # naive: UTC
