"""Unit tests of the pure parts: trigger policy, coalescing, snapshots and splits, approval policy, intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.pipeline_orchestrator.domain.policy import TriggerPolicy, merge_pending
from services.pipeline_orchestrator.domain.snapshot import build_snapshot
from services.registry.domain.card import ci_from_counts, ci_from_predictions, confusion_counts, metrics_from_evaluation
from services.registry.domain.policy import ApprovalPolicy
from services.registry.settings import DEFAULT_POLICY_FILE
from shared.datasets import parse, split_for


def test_label_policy_needs_total_and_per_class():
    p = TriggerPolicy(min_new_labels=10, min_per_class=3)
    assert not p.labels_due({"normal": 9, "pneumonia": 0})
    assert not p.labels_due({"normal": 8, "pneumonia": 2})
    assert p.labels_due({"normal": 7, "pneumonia": 3})
    assert not p.labels_due({"normal": 20, "pneumonia": 2})


def test_cooldown_and_schedule():
    p = TriggerPolicy(min_new_labels=1, min_per_class=0, schedule_s=100, cooldown_s=50)
    assert p.cooldown_left(1000, 980, "policy") == 30
    assert p.cooldown_left(1000, 980, "manual") == 0
    assert p.cooldown_left(1000, None, "schedule") == 0
    assert not p.schedule_due(1050, None, started_at_boot=1000)
    assert p.schedule_due(1100, None, started_at_boot=1000)
    assert not p.schedule_due(1100, 1050, started_at_boot=0)
    assert not TriggerPolicy(1, 0).schedule_due(10**9, None, 0)


def test_coalescing_keeps_one_follow_up_and_manual_wins():
    assert merge_pending(None, "policy") == "policy"
    assert merge_pending("policy", "schedule") == "policy"
    assert merge_pending("policy", "manual") == "manual"
    assert merge_pending("manual", "degraded") == "manual"


def _label(i: int, label: str, version: int = 1) -> dict:
    uid = f"1.2.{i}"
    return {"sop_uid": f"{uid}.1.1", "study_uid": uid, "series_uid": f"{uid}.1", "bucket": "b",
            "frame_key": f"frames/{uid}/{uid}.1/{uid}.1.1/1.jph", "metadata_key": f"metadata/{uid}.json",
            "label": label, "label_version": version, "reader": "r", "patient_pseudo_id": f"patient-{i % 7}"}


def test_snapshot_is_canonical_excludes_indeterminate_and_splits_by_patient():
    items = [_label(i, ["normal", "pneumonia", "indeterminate"][i % 3]) for i in range(30)]
    a = build_snapshot(items)
    b = build_snapshot(list(reversed(items)))
    assert a.sha256 == b.sha256 and a.data == b.data  # order of the scan does not matter
    assert a.records == 20 and a.per_class == {"normal": 10, "pneumonia": 10}
    records = parse(a.data)
    assert all(r.label != "indeterminate" for r in records)
    by_patient: dict[str, set[str]] = {}
    for r in records:
        by_patient.setdefault(r.patient_pseudo_id, set()).add(r.split)
        assert r.split == split_for(r.patient_pseudo_id)
    assert all(len(s) == 1 for s in by_patient.values())  # one patient, one split
    # A changed label (a newer version) changes the hash; the same labels give the same hash.
    items2 = [*items[:-2], _label(28, "pneumonia", version=2), items[-1]]
    assert build_snapshot(items2).sha256 != a.sha256
    assert build_snapshot([dict(x) for x in items]).sha256 == a.sha256


def test_approval_policy_from_file_and_overrides(tmp_path: Path):
    p = ApprovalPolicy.load(DEFAULT_POLICY_FILE)
    assert (p.auc_margin, p.auc_floor, p.sensitivity_floor) == (0.01, 0.75, 0.80)
    assert p.decide(0.80, 0.85, None)[0] == "approved"  # first model: floors only
    decision, reason = p.decide(0.80, 0.85, 0.795)
    assert decision == "pending" and "champion AUC 0.7950 + margin 0.0100" in reason
    assert p.decide(0.806, 0.85, 0.795)[0] == "approved"
    decision, reason = p.decide(0.95, 0.70, 0.80)
    assert decision == "pending" and "sensitivity 0.7000 < floor 0.8000" in reason
    decision, reason = p.decide(0.70, 0.90, None)
    assert decision == "pending" and "AUC 0.7000 < floor 0.7500" in reason
    assert p.decide(None, 0.9, None)[0] == "pending"
    q = ApprovalPolicy.load(DEFAULT_POLICY_FILE, auc_floor=0.5, auc_margin=None)
    assert q.auc_floor == 0.5 and q.auc_margin == 0.01
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"auc_margin": 0.1, "auc_floor": 2}))
    with pytest.raises(ValueError, match="sensitivity_floor"):
        ApprovalPolicy.load(bad)
    bad.write_text(json.dumps({"auc_margin": 0.1, "auc_floor": 2, "sensitivity_floor": 0.5}))
    with pytest.raises(ValueError, match="auc_floor=2.0 must lie between 0 and 1"):
        ApprovalPolicy.load(bad)


def test_metrics_and_intervals_from_the_training_evaluation_layout():
    evaluation = {"binary_classification_metrics": {
        "auc": {"value": 0.83, "standard_deviation": 0.04}, "sensitivity": {"value": 0.9}, "recall": {"value": 0.9},
        "specificity": {"value": 0.7}, "threshold": {"value": 0.31}, "n": {"value": 50},
        "confusion_matrix": {"0": {"0": 21, "1": 9}, "1": {"0": 2, "1": 18}}}}
    m = metrics_from_evaluation(evaluation)
    assert m["auc"] == 0.83 and m["sensitivity"] == 0.9 and m["threshold"] == 0.31 and m["n_test"] == 50
    assert m["confusion"] == {"tn": 21, "fp": 9, "fn": 2, "tp": 18}
    assert confusion_counts({"TP": 1, "FN": 2, "TN": 3, "FP": 4}) == {"tp": 1, "fn": 2, "tn": 3, "fp": 4}
    ci = ci_from_counts(m, 500)
    assert ci["cases"] == 50 and ci["sensitivity"][0] <= 0.9 <= ci["sensitivity"][1]
    assert ci["auc"][0] < 0.83 < ci["auc"][1]
    # More cases, narrower intervals.
    big = ci_from_counts({**m, "confusion": {k: v * 10 for k, v in m["confusion"].items()}}, 500)
    assert big["auc"][1] - big["auc"][0] < ci["auc"][1] - ci["auc"][0]
    y = [0] * 30 + [1] * 30
    p = [i / 100 for i in range(30)] + [0.2 + i / 100 for i in range(30)]
    ci = ci_from_predictions(y, p, threshold=0.25, resamples=300)
    assert ci["cases"] == 60 and 0.5 < ci["auc"][0] <= ci["auc"][1] <= 1.0
