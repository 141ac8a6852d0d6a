"""bench/approval_odds.py judges simulated scores with the real threshold rule, evidence and policy: a model that is
clearly good is approved as the first model, a useless one never is, and a challenger that is no better than the
champion stays pending (the paired interval), so the demo's odds it reports come from the rules that decide."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from shared.approval import ApprovalPolicy

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _odds():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("approval_odds", REPO / "bench" / "approval_odds.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["approval_odds"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_clearly_good_first_model_is_approved_and_a_useless_one_never_is() -> None:
    odds, policy = _odds(), ApprovalPolicy.load()
    rng = np.random.default_rng(3)
    # threshold at the lowest validation positive (target 0.97 with 60 positives): at 0.9 even this model misses the
    # sensitivity floor now and then on 60 locked positives, which is what the simulation is for
    good = [odds.run_once(policy, [(0.995, 60, 90, 60, 90)], rng, 0.0, 0.7, 0.97) for _ in range(20)]
    assert all(r["approved_at"] == 1 for r in good)
    useless = [odds.run_once(policy, [(0.55, 60, 90, 60, 90)], rng, 0.0, 0.7, 0.9) for _ in range(20)]
    assert all(r["approved_at"] is None and not r["target_met"] for r in useless)


def test_too_few_locked_positives_are_refused_whatever_the_model() -> None:
    odds, policy = _odds(), ApprovalPolicy.load()
    rng = np.random.default_rng(4)
    small = [(0.995, 60, 90, policy.min_positives - 1, 90)]
    assert all(odds.run_once(policy, small, rng, 0.0, 0.7, 0.9)["approved_at"] is None for _ in range(10))


def test_an_equal_challenger_stays_pending_behind_the_champion() -> None:
    odds, policy = _odds(), ApprovalPolicy.load()
    rng = np.random.default_rng(5)
    runs = [odds.run_once(policy, [(0.97, 60, 90, 60, 90), (0.97, 60, 90, 80, 120)], rng, 0.0, 0.7, 0.9)
            for _ in range(20)]
    assert all(r["approved_at"] == 1 for r in runs)
    for r in runs:
        second = r["verdicts"][1]
        assert not second.approved and any("not shown to be better than the champion" in why for why in second.reasons), \
            second.reasons
