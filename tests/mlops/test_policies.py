"""Unit tests of the pure parts: trigger policy, coalescing, snapshots and splits, approval policy, intervals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.pipeline_orchestrator.adapters.executors import _child_env
from services.pipeline_orchestrator.domain.policy import TriggerPolicy, merge_pending
from services.pipeline_orchestrator.domain.snapshot import build_snapshot
from services.pipeline_orchestrator.settings import OrchestratorSettings
from services.registry.domain.card import (
    ci_from_counts,
    ci_from_predictions,
    confusion_counts,
    metrics_from_evaluation,
    parse_predictions,
)
from services.registry.domain.policy import decide
from services.registry.settings import RegistrySettings
from shared.approval import (
    DEFAULT_POLICY_FILE,
    POLICY_FILE_ENV,
    ApprovalPolicy,
    ApprovalPolicyError,
    load_policy,
    refuse_removed_variables,
)
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


def test_approval_policy_decision_from_the_one_document():
    """The registry's decision is the policy's judge applied to evaluation.json's locked-set evidence
    (tests/mlops/test_promotion.py covers the conditions one by one)."""
    p = ApprovalPolicy.load()
    assert json.loads(DEFAULT_POLICY_FILE.read_text())["auc_floor"] == p.auc_floor
    assert (p.auc_margin, p.auc_floor, p.sensitivity_floor) == (0.01, 0.75, 0.80)
    evidence = {"locked_set": {"version": 1, "sha256": "a" * 64, "n": 80, "positives": 40, "negatives": 40},
                "challenger": {"auc": 0.93, "low": 0.88, "high": 0.98, "se": 0.025}, "champion": None, "paired": None,
                "champion_expected": False, "comparison": "superiority",
                "operating_point": {"threshold": 0.4, "validation_positives": 30, "sensitivity": 0.9,
                                    "specificity": 0.8},
                "calibration": {"brier": 0.1, "ece": 0.05}}
    assert decide(p, {"promotion": evidence}, has_champion=False)[0] == "approved"  # first model: floors only
    decision, reason = decide(p, {"promotion": evidence}, has_champion=True)
    assert decision == "pending" and "no paired comparison" in reason
    paired = {**evidence, "champion": {"auc": 0.90, "low": 0.85, "high": 0.95},
              "paired": {"diff": 0.03, "low": 0.005, "high": 0.055}}
    decision, reason = decide(p, {"promotion": paired}, has_champion=True)
    assert decision == "pending" and "lower bound is not above +0.0100" in reason
    better = {**paired, "paired": {"diff": 0.05, "low": 0.02, "high": 0.08}}
    assert decide(p, {"promotion": better}, has_champion=True)[0] == "approved"
    assert decide(p, {"promotion": better}, has_champion=True, champion_version=2, compared_with=2)[0] == "approved"
    # Evidence against an older champion: v2 became champion while the run trained against v1 (a review had a
    # challenger worse than v2 approved on its comparison with v1).
    decision, reason = decide(p, {"promotion": better}, has_champion=True, champion_version=2, compared_with=1)
    assert decision == "pending" and "compares this model with v1, but v2 became champion" in reason
    # Only a declared non-inferiority refresh lowers the bar; a misspelt comparison is held to superiority (any value
    # but exactly "superiority" lowered it: a review).
    close = {**paired, "paired": {"diff": 0.001, "low": -0.009, "high": 0.011}}
    assert decide(p, {"promotion": {**close, "comparison": "non-inferiority"}}, has_champion=True)[0] == "approved"
    for spelt in ("Superiority", "superiority ", "superior", "noninferiority", None):
        assert decide(p, {"promotion": {**close, "comparison": spelt}}, has_champion=True)[0] == "pending", spelt
    low_sens = {**evidence, "operating_point": {**evidence["operating_point"], "sensitivity": 0.7}}
    decision, reason = decide(p, {"promotion": low_sens}, has_champion=False)
    assert decision == "pending" and "sensitivity 0.7000 at threshold 0.4000 < floor 0.8000" in reason
    assert decide(p, {}, has_champion=False)[0] == "pending"


def test_approval_policy_document_is_validated_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"auc_margin": 0.1, "auc_floor": 2}))
    with pytest.raises(ValueError, match="sensitivity_floor"):
        ApprovalPolicy.load(bad)
    bad.write_text(json.dumps({"auc_margin": 0.1, "auc_floor": 2, "sensitivity_floor": 0.5}))
    with pytest.raises(ValueError, match="auc_floor=2.0 must lie between 0 and 1"):
        ApprovalPolicy.load(bad)
    bad.write_text(json.dumps({"auc_margin": "high", "auc_floor": 0.5, "sensitivity_floor": 0.5}))
    with pytest.raises(ApprovalPolicyError, match="auc_margin='high' must be a number"):
        ApprovalPolicy.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ApprovalPolicyError, match="JSON object"):
        ApprovalPolicy.load(bad)
    with pytest.raises(ApprovalPolicyError, match="not readable JSON"):
        ApprovalPolicy.load(tmp_path / "absent.json")
    # What a deployment (the demo) does: write its own document and point every reader at it.
    own = ApprovalPolicy(name="demo", auc_floor=0.5, auc_margin=0.02, sensitivity_floor=0.6).write(tmp_path / "p.json")
    assert ApprovalPolicy.load(own) == ApprovalPolicy(name="demo", auc_floor=0.5, auc_margin=0.02, sensitivity_floor=0.6)
    monkeypatch.delenv(POLICY_FILE_ENV, raising=False)
    assert load_policy() == ApprovalPolicy.load(DEFAULT_POLICY_FILE)
    assert load_policy(own).name == "demo"


def test_both_services_read_the_policy_file_named_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    own = ApprovalPolicy(name="own", auc_floor=0.55, auc_margin=0.03, sensitivity_floor=0.6).write(tmp_path / "p.json")
    monkeypatch.setenv(POLICY_FILE_ENV, str(own))
    monkeypatch.setenv("RADLOOP_ENVIRONMENT", "local")
    assert RegistrySettings().approval_policy_file == own
    orch = OrchestratorSettings(var_dir=tmp_path)
    assert orch.approval_policy_file == own
    assert load_policy().auc_floor == 0.55
    # The definition generated by the local executor path reads the same document.
    assert _child_env(orch)[POLICY_FILE_ENV] == str(own.resolve())
    # There are no per-number overrides any more: a variable that used to set one is refused at start-up.
    refuse_removed_variables()
    monkeypatch.setenv("RADLOOP_APPROVAL_AUC_FLOOR", "0.1")
    monkeypatch.setenv("RADLOOP_AUC_FLOOR", "0.1")
    assert not hasattr(RegistrySettings(), "approval_auc_floor") and not hasattr(OrchestratorSettings(), "auc_floor")
    with pytest.raises(ApprovalPolicyError, match="RADLOOP_APPROVAL_AUC_FLOOR, RADLOOP_AUC_FLOOR no longer set"):
        refuse_removed_variables()
    monkeypatch.delenv("RADLOOP_APPROVAL_AUC_FLOOR")
    monkeypatch.delenv("RADLOOP_AUC_FLOOR")
    monkeypatch.delenv(POLICY_FILE_ENV)
    assert RegistrySettings().approval_policy_file == DEFAULT_POLICY_FILE == OrchestratorSettings().approval_policy_file


def test_prediction_files_need_both_classes():
    assert parse_predictions("predictions.jsonl", '{"target": 1, "probability": 0.9}\n{"target": 0, "score": 0.2}\n') == (
        [1, 0], [0.9, 0.2])
    assert parse_predictions("predictions.csv", "y_true,y_score\n1,0.8\n0,0.1\n1,0.7\n") == ([1, 0, 1], [0.8, 0.1, 0.7])
    assert parse_predictions("predictions.csv", "y_true,y_score\n1,0.8\n1,0.7\n") is None


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


def test_the_pipeline_definition_takes_its_gate_from_the_policy_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``training.pipeline``'s AucFloor/AucMargin defaults (the generated definition is checked in test_loop.py)."""
    from training.pipeline import config_from_env

    monkeypatch.delenv(POLICY_FILE_ENV, raising=False)
    assert config_from_env().policy == ApprovalPolicy.load(DEFAULT_POLICY_FILE)
    own = ApprovalPolicy(name="own", auc_floor=0.62, auc_margin=0.04, sensitivity_floor=0.7).write(tmp_path / "p.json")
    monkeypatch.setenv(POLICY_FILE_ENV, str(own))
    assert (config_from_env().policy.auc_floor, config_from_env().policy.auc_margin) == (0.62, 0.04)
    other = ApprovalPolicy(name="flag", auc_floor=0.5, auc_margin=0.0, sensitivity_floor=0.5)
    assert config_from_env(approval=other).policy == other  # what --approval-policy passes
