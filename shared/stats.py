"""Statistics for model decisions: paired AUC comparison (DeLong), calibration, and operating-point intervals.

Pure numpy and scipy (no torch, no AWS), so the pipeline's Evaluate step, the registry's approval policy and the
verification service's live performance all compute the same numbers the same way.

- :func:`delong_paired`: AUCs of two models scored on the *same* cases, the difference and its 95% confidence interval
  from DeLong's covariance (DeLong, DeLong & Clarke-Pearson 1988; the fast algorithm of Sun & Xu 2014). Pairing
  matters: two models judged on the same images share most of their error, so the paired interval of the difference
  is much narrower than two independent intervals would suggest.
- :func:`auc_ci`: one model's AUC with its DeLong 95% interval.
- :func:`brier` and :func:`expected_calibration_error`: calibration.
- :func:`wilson`: the 95% interval of a proportion (sensitivity, specificity at the operating point).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

Z95 = float(norm.ppf(0.975))


def _midrank(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their mean rank (a NaN is refused: it equals nothing, not even itself, and the
    tie walk below never ended on one; found by a review)."""
    if np.isnan(x).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    n = len(x)
    ranks = np.empty(n, dtype=float)
    i = 0
    while i < n:
        j = i
        while j < n and xs[j] == xs[i]:
            j += 1
        ranks[i:j] = 0.5 * (i + j - 1) + 1
        i = j
    out = np.empty(n, dtype=float)
    out[order] = ranks
    return out


def _split(y_true: Any, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    y = np.asarray(y_true).astype(int).ravel()
    if set(np.unique(y)) - {0, 1}:
        raise ValueError("labels must be 0 (negative) or 1 (positive)")
    m, n = int((y == 1).sum()), int((y == 0).sum())
    if m == 0 or n == 0:
        raise ValueError(f"an AUC needs positives and negatives; got {m} positive and {n} negative cases")
    if scores.shape[-1] != len(y):
        raise ValueError(f"{scores.shape[-1]} scores for {len(y)} labels")
    return scores[..., y == 1], scores[..., y == 0], m, n


def _delong(y_true: Any, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUCs, covariance) for k score vectors (shape k × N) of the same cases."""
    pos, neg, m, n = _split(y_true, scores)
    k = scores.shape[0]
    tx = np.stack([_midrank(pos[r]) for r in range(k)])
    ty = np.stack([_midrank(neg[r]) for r in range(k)])
    tz = np.stack([_midrank(np.concatenate([pos[r], neg[r]])) for r in range(k)])
    aucs = tz[:, :m].sum(axis=1) / (m * n) - (m + 1.0) / (2.0 * n)
    v01 = (tz[:, :m] - tx) / n
    v10 = 1.0 - (tz[:, m:] - ty) / m
    cov = np.atleast_2d(np.cov(v01)) / m + np.atleast_2d(np.cov(v10)) / n
    return aucs, cov


@dataclass(frozen=True)
class AucCI:
    auc: float
    low: float
    high: float
    se: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class PairedAuc:
    """Challenger against champion on the same cases."""

    auc_a: float
    auc_b: float
    #: ``auc_a - auc_b`` and its 95% interval
    diff: float
    low: float
    high: float
    se: float
    p_value: float
    n_positive: int
    n_negative: int

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def auc_ci(y_true: Any, score: Any) -> AucCI:
    """An AUC with its DeLong 95% interval (clipped to [0, 1])."""
    s = np.asarray(score, dtype=float)[None, :]
    aucs, cov = _delong(y_true, s)
    se = math.sqrt(max(float(cov[0, 0]), 0.0))
    a = float(aucs[0])
    return AucCI(a, max(0.0, a - Z95 * se), min(1.0, a + Z95 * se), se)


def delong_paired(y_true: Any, score_a: Any, score_b: Any) -> PairedAuc:
    """The paired difference ``AUC(a) - AUC(b)`` with its DeLong 95% interval and two-sided p-value."""
    s = np.stack([np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)])
    aucs, cov = _delong(y_true, s)
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = math.sqrt(max(var, 0.0))
    diff = float(aucs[0] - aucs[1])
    # With no variance the difference is certain: p is 0 when there is one (it read 1.0), 1 when there is none.
    p = (1.0 if diff == 0 else 0.0) if se == 0 else float(2 * norm.sf(abs(diff) / se))
    y = np.asarray(y_true).astype(int)
    return PairedAuc(float(aucs[0]), float(aucs[1]), diff, diff - Z95 * se, diff + Z95 * se, se, p,
                     int((y == 1).sum()), int((y == 0).sum()))


def brier(y_true: Any, prob: Any) -> float:
    """Mean squared error of the probabilities (0 is perfect; 0.25 is a constant 0.5)."""
    y = np.asarray(y_true, dtype=float)
    p = np.asarray(prob, dtype=float)
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(y_true: Any, prob: Any, bins: int = 10) -> float:
    """ECE over ``bins`` equal-width probability bins: the count-weighted mean |observed rate − mean probability|."""
    y = np.asarray(y_true, dtype=float)
    p = np.clip(np.asarray(prob, dtype=float), 0.0, 1.0)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.sum() * abs(y[sel].mean() - p[sel].mean())
    return float(total / len(y)) if len(y) else 0.0


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (sensible at 0 and n, unlike the normal approximation)."""
    if trials <= 0:
        return (0.0, 1.0)
    phat = successes / trials
    denom = 1 + Z95**2 / trials
    centre = (phat + Z95**2 / (2 * trials)) / denom
    half = Z95 * math.sqrt(phat * (1 - phat) / trials + Z95**2 / (4 * trials**2)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
