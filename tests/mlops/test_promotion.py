"""The locked evaluation set and promotion with statistics (issue 18): pure parts, no AWS, no processes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.pipeline_orchestrator.domain import locked_set as L
from services.pipeline_orchestrator.domain.snapshot import build_snapshot
from services.registry.domain.card import build_card, card_markdown
from services.registry.domain.policy import decide
from shared import stats
from shared.approval import ApprovalPolicy, ApprovalPolicyError, judge
from shared.datasets import parse, split_for
from training.evaluate import promotion_evidence, threshold_interval
from training.preprocess import read_locked
from training.preprocess import run as preprocess_run

SHIPPED = ApprovalPolicy.load()


def _patients(bucket: str, n: int, stem: str = "p") -> list[str]:
    out, i = [], 0
    while len(out) < n:
        pid = f"{stem}-{i}"
        if split_for(pid) == bucket:
            out.append(pid)
        i += 1
    return out


def _label(patient: str, i: int, label: str, version: int = 1) -> dict[str, Any]:
    uid = f"1.2.{abs(hash(patient)) % 10**6}.{i}"
    return {"sop_uid": f"{uid}.1.1", "study_uid": uid, "series_uid": f"{uid}.1", "bucket": "b",
            "frame_key": f"frames/{uid}/1.jph", "metadata_key": f"metadata/{uid}.json", "label": label,
            "label_version": version, "reader": "r", "patient_pseudo_id": patient}


def _cohort(n_train: int, n_held: int, stem: str) -> list[dict[str, Any]]:
    items = []
    for bucket, n in (("train", n_train), ("val", n_train // 4), ("test", n_held)):
        for j, p in enumerate(_patients(bucket, n, f"{stem}{bucket}")):
            items.append(_label(p, j, "pneumonia" if j % 2 else "normal"))
    return items


# -- the locked set -----------------------------------------------------------------------------------------------


def test_the_locked_set_is_drawn_once_from_held_out_patients_and_never_in_a_training_snapshot():
    items = _cohort(40, 12, "a")
    locked = L.update(None, items)
    assert locked is not None and locked.version == 1
    held = {i["patient_pseudo_id"] for i in items if split_for(i["patient_pseudo_id"]) == "test"}
    assert locked.patients == held and locked.cases == 12 and (locked.positives, locked.negatives) == (6, 6)
    snap = build_snapshot(items, exclude_patients=L.excluded_patients(locked, items))
    in_training = {r.patient_pseudo_id for r in parse(snap.data)}
    assert in_training and not in_training & locked.patients
    assert {r.split for r in parse(snap.data)} <= {"train", "val"}
    # the guard is the exclusion, not the hash: without it the held-out patients would be in the snapshot
    assert {r.patient_pseudo_id for r in parse(build_snapshot(items).data)} & locked.patients
    # a locked patient stays locked even if the draw policy (the hash salt) changed later: membership is recorded
    assert L.excluded_patients(locked, []) == locked.patients


def test_no_draw_until_the_held_out_labels_hold_both_classes():
    only_neg = [_label(p, j, "normal") for j, p in enumerate(_patients("test", 3, "n"))]
    assert L.update(None, only_neg) is None
    assert L.update(None, []) is None


def test_the_manifest_is_stable_and_append_only():
    items = _cohort(10, 10, "b")
    v1 = L.update(None, items)
    assert v1 is not None
    # the same labels, scanned in another order, give the same bytes and hash; nothing new, no new version
    again = L.update(None, list(reversed(items)))
    assert again is not None and again.sha256 == v1.sha256 and again.data == v1.data
    assert L.update(v1, items) is v1
    # new held-out cases and a corrected label are appended; version 1's bytes are a prefix of version 2's
    held = next(i for i in items if split_for(i["patient_pseudo_id"]) == "test")
    fixed = {**held, "label": "pneumonia" if held["label"] == "normal" else "normal", "label_version": 2}
    newp = _patients("test", 1, "late")[0]
    more = [*items, fixed, _label(newp, 99, "pneumonia"), _label(held["patient_pseudo_id"], 77, "normal")]
    more = [m for m in more if m is not held]
    v2 = L.update(v1, more)
    assert v2 is not None and v2.version == 2 and v2.data.startswith(v1.data) and v2.sha256 != v1.sha256
    assert v2.cases == v1.cases + 2  # the correction replaces a case's label; it is not a new case
    latest = {r.sop_uid: r for r in L.current_records(v2.data)}
    assert latest[held["sop_uid"]].label == fixed["label"] and latest[held["sop_uid"]].label_version == 2
    assert newp in v2.patients
    # a train patient's new image never enters the locked set
    trainp = next(i for i in items if split_for(i["patient_pseudo_id"]) == "train")
    assert L.update(v2, [*more, _label(trainp["patient_pseudo_id"], 55, "normal")]) is v2
    # a version that would rewrite history is refused
    with pytest.raises(L.LockedSetError):
        L.check_append_only(v2.data, v1.data + b"x")


def test_preprocess_refuses_a_training_manifest_that_names_a_locked_patient(tmp_path: Path):
    items = _cohort(6, 6, "c")
    locked = L.update(None, items)
    assert locked is not None
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "manifest.jsonl").write_bytes(locked.data)
    (tmp_path / "locked" / "version.json").write_text(json.dumps(locked.summary()))
    records, summary = read_locked(tmp_path / "locked")
    assert summary == locked.summary() and {r.split for r in records} == {"test"}
    leaky = build_snapshot(items)  # no exclusion: held-out patients in the training manifest
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "manifest.json").write_bytes(leaky.data)
    with pytest.raises(ValueError, match="patients in the locked evaluation set"):
        preprocess_run(tmp_path / "m", tmp_path / "out", 16, locked_dir=tmp_path / "locked")
    (tmp_path / "locked" / "version.json").write_text(json.dumps({**locked.summary(), "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="does not match"):
        read_locked(tmp_path / "locked")


# -- the policy -------------------------------------------------------------------------------------------------------


def _scores(n_pos: int, n_neg: int, sep: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    y = np.array([1] * n_pos + [0] * n_neg)
    latent = r.normal(size=len(y)) + sep * y
    return y, 1 / (1 + np.exp(-latent))


def _evidence(y: np.ndarray, p: np.ndarray, champion: np.ndarray | None, *, threshold: float | None = None,
              val_pos: int = 40, comparison: str = "superiority") -> dict[str, Any]:
    yv, pv = _scores(val_pos, 40, 2.0, 9)
    from training.train import threshold_for_sensitivity

    thr = threshold_for_sensitivity(yv, pv, 0.9) if threshold is None else threshold
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    locked = {"version": 3, "sha256": "ab" * 32, "n": len(y), "positives": pos, "negatives": neg}
    return promotion_evidence(yv, pv, thr, y, p, champion, target=0.9, locked=locked,
                              champion_expected=champion is not None, comparison=comparison)


def test_the_shipped_policy_has_every_gate():
    assert (SHIPPED.auc_floor, SHIPPED.auc_margin, SHIPPED.sensitivity_floor) == (0.75, 0.01, 0.80)
    assert SHIPPED.specificity_floor >= 0.5 and SHIPPED.min_positives >= 20 and SHIPPED.min_negatives >= 20
    with pytest.raises(ApprovalPolicyError, match="min_positives"):
        dataclasses.replace(SHIPPED, min_positives=-1)
    with pytest.raises(ApprovalPolicyError, match="specificity_floor"):
        dataclasses.replace(SHIPPED, specificity_floor=1.5)


def test_a_first_model_is_judged_on_absolute_floors_with_intervals():
    y, p = _scores(60, 60, 3.0, 1)
    v = judge(SHIPPED, _evidence(y, p, None))
    assert v.approved, v.reasons
    assert any("first model" in r and "lower bound" in r for r in v.reasons)
    # the same model on a locked set of 10 + 10 cases: too few to judge, whatever its AUC
    v = judge(SHIPPED, _evidence(y[50:70], p[50:70], None))
    assert not v.approved and any("holds 10 positives and 10 negatives" in r for r in v.reasons)
    # a point AUC above the floor whose interval reaches below it is not enough for a first model
    y2, p2 = _scores(25, 25, 1.35, 4)
    ev = _evidence(y2, p2, None)
    assert ev["challenger"]["auc"] >= SHIPPED.auc_floor > ev["challenger"]["low"]
    assert not judge(SHIPPED, ev).approved


def test_a_challenger_whose_paired_interval_overlaps_the_margin_stays_pending():
    y, champ = _scores(60, 60, 1.5, 2)
    r = np.random.default_rng(3)
    latent = np.log(champ / (1 - champ))
    challenger = 1 / (1 + np.exp(-(latent + r.normal(0, 0.3, len(y)) + 0.3 * y)))  # a little better, same cases
    ev = _evidence(y, challenger, champ)
    assert ev["paired"]["diff"] > 0 and ev["paired"]["low"] <= SHIPPED.auc_margin
    v = judge(SHIPPED, ev)
    assert not v.approved
    assert any("paired difference" in x and "lower bound is not above +0.0100" in x for x in v.reasons), v.reasons
    # the registry applies the same function to the same block, and names the reason in words
    decision, reason = decide(SHIPPED, {"promotion": ev}, has_champion=True)
    assert decision == "pending" and "not shown to be better than the champion" in reason
    # the same evidence as a declared non-inferiority refresh: its lower bound is above -margin
    ni = {**ev, "comparison": "non-inferiority"}
    assert judge(SHIPPED, ni).approved, judge(SHIPPED, ni).reasons
    # a clearly better challenger is approved
    better = _evidence(y, _scores(60, 60, 5.0, 2)[1], champ)
    assert better["paired"]["low"] > SHIPPED.auc_margin and judge(SHIPPED, better).approved


def test_a_useless_operating_point_is_refused():
    y, p = _scores(60, 60, 3.0, 5)
    thr = float(np.sort(p)[1])  # flags all but 2 images: specificity ~0.03, as the v2
    ev = _evidence(y, p, None, threshold=thr)
    assert ev["operating_point"]["specificity"] < 0.05 and ev["operating_point"]["sensitivity"] == 1.0
    v = judge(SHIPPED, ev)
    assert not v.approved and any(x.startswith("specificity 0.0") and "< floor 0.5000" in x for x in v.reasons)
    lo, hi = ev["operating_point"]["specificity_ci"]
    assert lo < ev["operating_point"]["specificity"] < hi


def test_a_threshold_chosen_from_too_few_positives_is_refused():
    y, p = _scores(60, 60, 3.0, 6)
    ev = _evidence(y, p, None, val_pos=8)
    v = judge(SHIPPED, ev)
    assert not v.approved and any("chosen from 8 validation positives" in x for x in v.reasons)
    ci = ev["operating_point"]["threshold_ci"]
    assert ci[0] <= ev["operating_point"]["threshold"] <= ci[1]


def test_calibration_is_reported_and_gated_only_when_the_policy_says():
    y, p = _scores(60, 60, 3.0, 7)
    squashed = 0.5 + (p - 0.5) * 0.1  # the same ranking, badly calibrated
    ev = _evidence(y, squashed, None)
    assert ev["calibration"]["brier"] == pytest.approx(stats.brier(y, squashed), abs=1e-6)
    assert ev["calibration"]["ece"] > 0.2
    strict = dataclasses.replace(SHIPPED, ece_max=0.1, specificity_floor=0.0, sensitivity_floor=0.0)
    assert judge(dataclasses.replace(strict, ece_max=None), ev).approved
    v = judge(strict, ev)
    assert not v.approved and any(x.startswith("ece ") and "> ceiling 0.1000" in x for x in v.reasons)


def test_missing_evidence_or_a_missing_champion_comparison_is_pending_with_the_reason():
    decision, reason = decide(SHIPPED, {"binary_classification_metrics": {"auc": {"value": 0.99}}}, has_champion=False)
    assert decision == "pending" and "no locked-set evidence" in reason
    y, p = _scores(60, 60, 4.0, 8)
    ev = _evidence(y, p, None)  # evaluated without a champion, but the registry has one now
    decision, reason = decide(SHIPPED, {"promotion": ev}, has_champion=True)
    assert decision == "pending" and "could not be re-scored on the locked set" in reason


def test_threshold_interval_narrows_with_more_positives():
    y1, p1 = _scores(20, 20, 2.0, 10)
    y2, p2 = _scores(400, 400, 2.0, 10)
    a, b = threshold_interval(y1, p1, 0.9), threshold_interval(y2, p2, 0.9)
    assert a and b and (b[1] - b[0]) < (a[1] - a[0])


def test_the_model_card_records_the_locked_set_and_each_interval():
    y, champ = _scores(60, 60, 2.5, 2)
    ev = _evidence(y, _scores(60, 60, 5.0, 2)[1], champ)
    model = {"version": 2, "status": "approved", "lineage": {"locked_set": ev["locked_set"]}, "evidence": ev,
             "metrics": {"auc": ev["challenger"]["auc"]}}
    card = build_card(model, {"method": "x", "level": 0.95}, SHIPPED.as_dict())
    assert card["locked_set"]["version"] == 3 and card["evidence"]["paired"]["low"] == ev["paired"]["low"]
    md = card_markdown(card)
    assert "Version 3 (sha256" in md and "Paired difference" in md and "95% CI" in md
