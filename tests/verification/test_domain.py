"""Pure rules of the verification domain: reading modes, amendments, worklist order, metrics against hand counts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.verification.domain import performance as perf
from services.verification.domain.cases import (
    ReadRejected,
    apply_read,
    apply_scored,
    apply_stored,
    priority_sk,
)
from shared.events import InstanceScored, InstanceStored

STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"


def stored(sop: str, minute: int = 0) -> InstanceStored:
    return InstanceStored(
        study_uid=STUDY, series_uid=SERIES, sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", modality="DX",
        body_part="CHEST", number_of_frames=1, rows=8, columns=8, original_key="k", frames_prefix="f",
        metadata_key="m", content_sha256="0" * 64, size_bytes=1, htj2k_bytes=1, patient_pseudo_id="p" * 32,
        source="stow", occurred_at=datetime(2026, 1, 1, 8, minute, tzinfo=UTC))


def scored(sop: str, p: float | None, priority: str = "routine", status: str = "scored") -> InstanceScored:
    return InstanceScored(study_uid=STUDY, series_uid=SERIES, sop_uid=sop, status=status, probability=p,  # type: ignore[arg-type]
                          threshold=0.5 if p is not None else None, priority=priority,  # type: ignore[arg-type]
                          model_version=3 if p is not None else None)


def case(sop: str, mode: str = "single", p: float | None = 0.7) -> dict:
    c = apply_stored(None, stored(sop), mode=mode)
    if p is not None:
        c = apply_scored(c, scored(sop, p, "urgent" if p >= 0.5 else "routine"))
    return c


def test_worklist_order_is_priority_then_probability_then_arrival_and_either_event_order_works() -> None:
    a = apply_stored(apply_scored(None, scored("1.9.1", 0.9, "urgent")), stored("1.9.1", 5), mode="single")
    b = apply_scored(apply_stored(None, stored("1.9.2", 1), mode="single"), scored("1.9.2", 0.3))
    c = apply_scored(apply_stored(None, stored("1.9.3", 2), mode="single"), scored("1.9.3", 0.6, "urgent"))
    d = apply_stored(None, stored("1.9.4", 0), mode="single")  # no score yet
    e = apply_scored(apply_stored(None, stored("1.9.5", 3), mode="single"), scored("1.9.5", None, status="unscored"))
    order = [x["case_id"] for x in sorted([a, b, c, d, e], key=priority_sk)]
    assert order == ["1.9.1", "1.9.3", "1.9.2", "1.9.4", "1.9.5"]
    assert a["score"]["probability"] == 0.9 and a["stored"], "a score that arrived first is kept when stored arrives"


def test_single_read_is_final_and_only_its_reader_may_amend() -> None:
    out = apply_read(case("1.8.1"), "r1", "pneumonia", 0.9, None, now=0)
    assert out.case["status"] == "final" and [e.label_version for e in out.events] == [1]
    ev = out.events[0]
    assert ev.resolution == "single" and ev.model_version == 3 and ev.frame_key.endswith("/1.jph")
    with pytest.raises(ReadRejected) as err:
        apply_read(out.case, "r2", "normal", None, None, now=0)
    assert err.value.status == 409
    amended = apply_read(out.case, "r1", "normal", None, "second look", now=0)
    assert [(e.label, e.label_version, e.resolution) for e in amended.events] == [("normal", 2, "amended")]
    assert [a["label_sk"] for a in amended.appends] == ["read#000002", "label#000002"]


def test_double_read_agreement_disagreement_adjudication() -> None:
    c = case("1.8.2", "double")
    first = apply_read(c, "r1", "pneumonia", None, None, now=0)
    assert first.case["status"] == "open" and not first.events
    agree = apply_read(first.case, "r2", "pneumonia", None, None, now=0)
    assert agree.case["status"] == "final" and agree.events[0].resolution == "agreement"

    dis = apply_read(first.case, "r2", "normal", None, None, now=0)
    assert dis.case["status"] == "adjudication" and not dis.events
    assert dis.case["paired_reads"] == ["pneumonia", "normal"]
    adj = apply_read(dis.case, "r3", "normal", None, None, now=0)
    assert adj.case["status"] == "final" and adj.events[0].resolution == "adjudicated"
    assert adj.events[0].reader == "r3"
    with pytest.raises(ReadRejected):  # the adjudicator's read is final: a double reader cannot override it
        apply_read(adj.case, "r1", "pneumonia", None, None, now=0)


def test_a_live_lease_of_another_reader_blocks_and_an_expired_one_does_not() -> None:
    c = dict(case("1.8.3"), lease_owner="r1", lease_expires_at=100.0)
    with pytest.raises(ReadRejected) as err:
        apply_read(c, "r2", "normal", None, None, now=50)
    assert err.value.status == 409
    out = apply_read(c, "r2", "normal", None, None, now=150)
    assert out.case["status"] == "final"


def test_metrics_match_a_hand_computed_confusion_matrix() -> None:
    rows = [(0.9, 1), (0.8, 0), (0.7, 1), (0.6, 0), (0.4, 1), (0.3, 0), (0.2, 1), (0.1, 0)]
    outs = [perf.Outcome(3, p, 0.5, y, f"2026-01-01T00:00:0{i}") for i, (p, y) in enumerate(rows)]
    m = perf.metrics(outs, window=100)
    assert m["confusion"] == {"tp": 2, "fp": 2, "tn": 2, "fn": 2}
    assert (m["sensitivity"], m["specificity"], m["ppv"], m["npv"]) == (0.5, 0.5, 0.5, 0.5)
    assert m["auc"] == pytest.approx(10 / 16)  # positive-over-negative pairs counted by hand
    assert perf.metrics(outs, window=4)["sample_size"] == 4  # the rolling window keeps the most recent
    br = perf.breaches(m, min_sample=8, auc_floor=0.75, sensitivity_floor=0.8)
    assert {b[0] for b in br} == {"auc", "sensitivity"}
    assert perf.breaches(m, min_sample=9, auc_floor=0.75, sensitivity_floor=0.8) == []
    k = perf.cohen_kappa([("pneumonia", "pneumonia"), ("normal", "normal"), ("pneumonia", "normal"),
                          ("normal", "normal")])
    # po = 3/4; pe = (2*1 + 2*3)/16 = 1/2 -> kappa = 0.5
    assert k["kappa"] == pytest.approx(0.5)


def test_live_performance_counts_only_scores_given_before_the_label_was_final() -> None:
    """Monitoring is prospective: a champion scoring the backlog after the reads (images it may have been trained on)
    must not count towards its live performance."""
    before = apply_scored(apply_stored(None, stored("1.8.9"), mode="single"),
                          scored("1.8.9", 0.8).model_copy(update={"occurred_at": datetime(2026, 1, 1, 8, 1, tzinfo=UTC)}))
    read = apply_read(before, "r1", "pneumonia", 0.9, None, now=0).case
    o = perf.outcome_of(read)
    assert o is not None and (o.model_version, o.label, o.probability) == (3, 1, 0.8)

    unscored = apply_read(apply_stored(None, stored("1.8.10"), mode="single"), "r1", "normal", 0.9, None, now=0).case
    assert perf.outcome_of(unscored) is None  # no model scored it
    final_at = datetime.fromisoformat(unscored["final"]["at"])
    late = apply_scored(unscored, scored("1.8.10", 0.2).model_copy(
        update={"occurred_at": final_at.replace(microsecond=final_at.microsecond + 1)}))
    assert late is not None and late["score"]["model_version"] == 3
    assert perf.outcome_of(late) is None  # scored after its label was final: retrospective, not counted
    same_instant = apply_scored(unscored, scored("1.8.10", 0.2).model_copy(update={"occurred_at": final_at}))
    assert perf.outcome_of(same_instant) is not None  # millisecond and microsecond stamps compare as instants
    naive = copy_with_final_at(same_instant, final_at.replace(tzinfo=None).isoformat())
    assert perf.outcome_of(naive) is not None  # a timestamp without an offset is read as UTC, not a TypeError


def copy_with_final_at(case: dict, at: str) -> dict:
    return {**case, "final": {**case["final"], "at": at}}



def test_the_same_read_again_on_a_final_case_records_and_publishes_nothing() -> None:
    """A retry of a read whose first attempt was recorded, but whose process was killed before the Idempotency-Key
    record was completed, ran the read again: an 'amendment' to the same label and a second ImageVerified (label v2)
    in the 2,000-image chaos run. The same read again now changes nothing; a real amendment still does."""
    first = apply_read(case("1.8.20"), "r1", "pneumonia", 0.9, None, now=0)
    again = apply_read(first.case, "r1", "pneumonia", 0.9, None, now=5)
    assert again.events == [] and again.appends == [] and again.case == first.case
    assert again.response["label_version"] == 1 and again.response["final_label"] == "pneumonia"
    changed = apply_read(first.case, "r1", "pneumonia", 0.6, None, now=5)  # another confidence: a new read
    assert [e.label_version for e in changed.events] == [2]


def test_the_same_read_again_in_double_reading_records_and_publishes_nothing() -> None:
    """Double reading: reader 1's retry of a recorded read (its Idempotency-Key record not completed: the process was
    killed) became an amendment, and once reader 2's agreement had made the case final, a second label version and
    a second ImageVerified (found by a review). Before and after reader 2 reads, it changes nothing now."""
    c = case("1.8.21", mode="double")
    first = apply_read(c, "r1", "pneumonia", 0.9, None, now=0)
    assert first.response["status"] == "open"
    again = apply_read(first.case, "r1", "pneumonia", 0.9, None, now=5)  # still open: reader 2 has not read
    assert again.events == [] and again.appends == [] and again.case == first.case
    assert again.response["read_kind"] == "repeat" and again.response["status"] == "open"
    agreed = apply_read(first.case, "r2", "pneumonia", 0.8, None, now=10)
    assert [e.label_version for e in agreed.events] == [1]
    retry = apply_read(agreed.case, "r1", "pneumonia", 0.9, None, now=15)  # made final meanwhile
    assert retry.events == [] and retry.appends == [] and retry.response["label_version"] == 1
    changed = apply_read(agreed.case, "r1", "normal", 0.9, None, now=15)  # a real amendment still is one
    assert changed.response["read_kind"] == "amendment" and changed.appends


def test_the_same_read_again_while_the_case_waits_for_its_adjudicator_changes_nothing() -> None:
    """Double reading: the readers disagreed, and reader 1's retry of their recorded read (a kill left its
    Idempotency-Key record incomplete) was recorded as an amendment row in the case's history (session 22)."""
    c = case("1.8.22", mode="double")
    first = apply_read(c, "r1", "pneumonia", 0.9, None, now=0)
    disagreed = apply_read(first.case, "r2", "normal", 0.8, None, now=10)
    assert disagreed.case["status"] == "adjudication"
    retry = apply_read(disagreed.case, "r1", "pneumonia", 0.9, None, now=15)
    assert retry.events == [] and retry.appends == [] and retry.case == disagreed.case
    assert retry.response["read_kind"] == "repeat" and retry.response["status"] == "adjudication"
    changed = apply_read(disagreed.case, "r1", "normal", 0.9, None, now=15)  # a real change of mind still counts
    assert changed.response["read_kind"] == "amendment" and changed.appends
    decided = apply_read(disagreed.case, "r3", "pneumonia", 0.7, None, now=20)
    assert decided.response["read_kind"] == "adjudication" and [e.label_version for e in decided.events] == [1]
