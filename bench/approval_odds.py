"""Simulation: how often does a model of a given quality earn approval under the shipped policy, at the demo's sizes?

The demo's models are judged on small sets (a locked set of about 80 cases, an operating threshold chosen on about 30
validation positives), so a good model can still miss a floor by chance. This estimates that chance with the code
that decides for real: :func:`training.train.threshold_for_sensitivity` chooses the threshold on the validation
scores, :func:`training.evaluate.promotion_evidence` measures the locked-set evidence, and :func:`shared.approval.judge`
applies the shipped policy (``shared/approval_policy.json``). Only the scores are simulated.

**Scores.** Binormal: a negative case scores ``N(0, 1)``, a positive one ``N(d, 1)`` with ``d = sqrt(2) *
Phi^-1(AUC)``, mapped to (0, 1) by the logistic function. A share of labels (``--label-error``) is flipped, as
reader errors that reach the ground truth. Each case has its own difficulty shared by every model that scores it
(correlation ``--rho``), so two versions scored on the same locked cases agree as trained models do.

**Scenarios.** A demo run of R rounds is a sequence of versions, each trained on more labels and judged on a locked set
that grows by appending (``--rounds``: AUC, validation positives/negatives, locked positives/negatives per version).
A version is judged as a first model while nothing is approved (the lower bound of its AUC interval must reach the
floor), and against the champion after that. What is counted is the share of draws in which some version is
approved, and in which the last champion also meets the demo's quality target (AUC >= 0.85, specificity >= 0.6,
sensitivity >= 0.9 on the locked set).

Usage: ``python bench/approval_odds.py [--draws 600] [--seed 1] [--sensitivity-target 0.9]``; writes
``bench/results/approval_odds.json``. About two minutes on an idle 2-core machine for the default scenarios (each draw
computes DeLong intervals and bootstrap threshold intervals, as the evaluate step does); 600 draws put a share of
about 13% within +-3 points (95%).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.approval import ApprovalPolicy, Verdict, judge  # noqa: E402
from training.evaluate import promotion_evidence  # noqa: E402
from training.train import threshold_for_sensitivity  # noqa: E402

#: One version: its AUC, validation positives and negatives, locked-set positives and negatives (cumulative).
Version = tuple[float, int, int, int, int]

#: The demo's sizes as measured in its runs (docs/demo.md): each version's locked-set AUC, validation positives
#: (negatives about 1.6 times as many) and locked-set positives and negatives, after rounds of 180 double reads.
SCENARIOS: dict[str, list[Version]] = {
    # 600 radiographs in three waves (sessions 13-17): v1 and v2 never had 20 locked positives
    "three rounds (600 radiographs; sessions 13-17)": [(0.79, 12, 18, 5, 22), (0.86, 22, 38, 14, 41),
                                                       (0.94, 29, 46, 23, 59)],
    # 800 radiographs in four waves (session 18's run): the second version already had 22 locked positives
    "four rounds (800 radiographs; session 18)": [(0.78, 7, 12, 9, 22), (0.917, 22, 35, 22, 40),
                                                  (0.925, 31, 50, 28, 61), (0.939, 42, 67, 40, 80)],
}


class Cases:
    """A growing pool of cases with fixed labels, observed labels and per-case difficulty (shared by all models)."""

    def __init__(self, rng: np.random.Generator, label_error: float) -> None:
        self.rng, self.label_error = rng, label_error
        self.truth = np.zeros(0, dtype=int)
        self.observed = np.zeros(0, dtype=int)
        self.latent = np.zeros(0)

    def grow_to(self, pos: int, neg: int) -> None:
        have_pos, have_neg = int((self.truth == 1).sum()), int((self.truth == 0).sum())
        add = np.array([1] * max(0, pos - have_pos) + [0] * max(0, neg - have_neg), dtype=int)
        flip = self.rng.random(len(add)) < self.label_error
        self.truth = np.concatenate([self.truth, add])
        self.observed = np.concatenate([self.observed, np.where(flip, 1 - add, add)])
        self.latent = np.concatenate([self.latent, self.rng.standard_normal(len(add))])

    def scores(self, model: Model) -> np.ndarray:
        """``model``'s scores on every case so far (the same scores for the cases it scored before)."""
        n = len(self.truth)
        if len(model.own) < n:
            model.own = np.concatenate([model.own, self.rng.standard_normal(n - len(model.own))])
        d = math.sqrt(2.0) * NormalDist().inv_cdf(model.auc)
        z = d * self.truth + model.rho * self.latent + math.sqrt(1.0 - model.rho**2) * model.own[:n]
        return 1.0 / (1.0 + np.exp(-(z - d / 2.0)))


class Model:
    """A trained version: its AUC on new cases, and its own noise per case (drawn as it meets new cases)."""

    def __init__(self, auc: float, rho: float) -> None:
        self.auc, self.rho = auc, rho
        self.own = np.zeros(0)


def run_once(policy: ApprovalPolicy, versions: list[Version], rng: np.random.Generator, label_error: float,
             rho: float, target: float) -> dict[str, Any]:
    locked = Cases(rng, label_error)
    champion: Model | None = None
    approved_at: int | None = None
    last_ok = False
    verdicts: list[Verdict] = []
    for k, (auc, vpos, vneg, lpos, lneg) in enumerate(versions, start=1):
        model = Model(auc, rho)
        val = Cases(rng, label_error)  # a fresh validation split per version (its training data grew)
        val.grow_to(vpos, vneg)
        p_val = val.scores(model)
        thr = threshold_for_sensitivity(val.observed, p_val, target)
        locked.grow_to(lpos, lneg)
        p = locked.scores(model)
        ev = promotion_evidence(val.observed, p_val, thr, locked.observed, p,
                                None if champion is None else locked.scores(champion), target=target,
                                locked={"version": k, "sha256": "", "n": len(p), "positives": lpos,
                                        "negatives": lneg},
                                champion_expected=champion is not None, comparison="superiority")
        verdicts.append(judge(policy, ev))
        if verdicts[-1].approved:
            approved_at = approved_at or k
            champion = model
            op = ev["operating_point"]
            last_ok = (ev["challenger"]["auc"] >= 0.85 and (op["specificity"] or 0) >= 0.6
                       and (op["sensitivity"] or 0) >= 0.9)
    return {"approved_at": approved_at, "target_met": last_ok, "verdicts": verdicts}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--draws", type=int, default=600, help="simulated demo runs per scenario (default 600)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--label-error", type=float, default=0.004,
                    help="share of ground-truth labels that are wrong (double reading leaves about 0.004)")
    ap.add_argument("--rho", type=float, default=0.7, help="correlation of two models' scores on the same case")
    ap.add_argument("--sensitivity-target", type=float, default=0.9,
                    help="the sensitivity the operating threshold is chosen for (the pipeline's default, 0.9)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "approval_odds.json"))
    a = ap.parse_args()
    if not 1 <= a.draws <= 100_000:
        ap.error("--draws must be 1-100000")
    policy = ApprovalPolicy.load()
    target = a.sensitivity_target
    rng = np.random.default_rng(a.seed)
    out: dict[str, Any] = {"policy": policy.as_dict(), "draws": a.draws, "label_error": a.label_error,
                           "rho": a.rho, "sensitivity_target": target, "scenarios": {}}
    for name, versions in SCENARIOS.items():
        t0 = time.perf_counter()
        results = [run_once(policy, versions, rng, a.label_error, a.rho, target) for _ in range(a.draws)]
        none = sum(r["approved_at"] is None for r in results)
        first = {k: sum(r["approved_at"] == k for r in results) for k in range(1, len(versions) + 1)}
        met = sum(r["target_met"] for r in results)
        out["scenarios"][name] = {
            "versions": [dict(zip(("auc", "validation_positives", "validation_negatives", "locked_positives",
                                   "locked_negatives"), v, strict=True)) for v in versions],
            "no_approval": round(none / a.draws, 4),
            "first_approved_at": {f"v{k}": round(n / a.draws, 4) for k, n in first.items()},
            "last_champion_meets_target": round(met / a.draws, 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{name}: no approval in {none / a.draws:.1%} of {a.draws} draws; first approval "
              + ", ".join(f"v{k} {n / a.draws:.1%}" for k, n in first.items())
              + f"; the last champion meets the quality target in {met / a.draws:.1%}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
