"""Paired AUC statistics against sklearn, the O(mn) definition of DeLong's variance, and a paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from shared.stats import auc_ci, brier, delong_paired, expected_calibration_error, wilson


def _cohort(seed: int, n: int = 300, sep_a: float = 1.2, sep_b: float = 1.0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    shared_noise = rng.normal(size=n)  # both models see the same hard cases: their errors correlate
    a = y * sep_a + shared_noise + 0.5 * rng.normal(size=n)
    b = y * sep_b + shared_noise + 0.5 * rng.normal(size=n)
    return y, np.round(a, 1), np.round(b, 1)  # rounding makes ties, which the midranks must handle


def _delong_by_definition(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """DeLong 1988 written out: psi over all positive/negative pairs, structural components, covariance."""
    comps = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]).astype(float) + 0.5 * (x[:, None] == z[None, :])
        comps.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
    m, n = (y == 1).sum(), (y == 0).sum()
    v10 = np.cov(np.stack([c[0] for c in comps]))
    v01 = np.cov(np.stack([c[1] for c in comps]))
    cov = v10 / m + v01 / n
    return comps[0][2] - comps[1][2], float(np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_aucs_match_sklearn_and_the_variance_matches_its_definition(seed: int) -> None:
    y, a, b = _cohort(seed)
    r = delong_paired(y, a, b)
    assert r.auc_a == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert r.auc_b == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    diff, se = _delong_by_definition(y, a, b)
    assert r.diff == pytest.approx(diff, abs=1e-12)
    assert r.se == pytest.approx(se, rel=1e-9)
    assert r.low < r.diff < r.high
    single = auc_ci(y, a)
    assert single.auc == pytest.approx(r.auc_a) and single.low < single.auc < single.high


def test_the_paired_interval_agrees_with_a_paired_bootstrap() -> None:
    y, a, b = _cohort(7, n=400)
    r = delong_paired(y, a, b)
    rng = np.random.default_rng(0)
    diffs = []
    for _ in range(800):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        diffs.append(roc_auc_score(y[i], a[i]) - roc_auc_score(y[i], b[i]))
    assert r.se == pytest.approx(float(np.std(diffs)), rel=0.2)


def test_pairing_narrows_the_interval_of_correlated_models() -> None:
    y, a, b = _cohort(11, n=300)
    paired = delong_paired(y, a, b)
    ia, ib = auc_ci(y, a), auc_ci(y, b)
    independent_se = float(np.hypot(ia.se, ib.se))
    assert paired.se < 0.8 * independent_se


@pytest.mark.timeout(20)  # a NaN score made the rank walk loop forever (found by a review)
def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="positives and negatives"):
        delong_paired([1, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="scores for"):
        auc_ci([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        auc_ci([1, 1, 0, 0], [float("nan"), 0.8, 0.3, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        delong_paired([1, 1, 0, 0], [0.9, 0.8, 0.3, 0.2], [0.9, float("nan"), 0.3, 0.2])


def test_a_certain_difference_has_p_zero() -> None:
    """A challenger that separates perfectly against a champion with one score for all: no variance, a difference
    of 0.5, so p = 0 (it read 1.0, contradicting the interval; found by a review); no difference, p = 1."""
    y = [1] * 20 + [0] * 20
    perfect, constant = [0.9] * 20 + [0.1] * 20, [0.5] * 40
    d = delong_paired(y, perfect, constant)
    assert (d.diff, d.low, d.high, d.se, d.p_value) == (0.5, 0.5, 0.5, 0.0, 0.0)
    assert delong_paired(y, constant, constant).p_value == 1.0


def test_calibration_and_proportion_intervals() -> None:
    y = np.array([0, 0, 1, 1])
    assert brier(y, [0, 0, 1, 1]) == 0.0
    assert brier(y, [0.5] * 4) == pytest.approx(0.25)
    assert expected_calibration_error(y, [0.0, 0.0, 1.0, 1.0]) == 0.0
    assert expected_calibration_error(y, [0.9, 0.9, 0.9, 0.9]) == pytest.approx(0.4)
    lo, hi = wilson(9, 10)
    assert 0.55 < lo < 0.6 and 0.98 < hi <= 1.0
    assert wilson(0, 10)[0] == 0.0
