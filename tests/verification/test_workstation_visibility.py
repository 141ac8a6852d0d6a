"""Pure rules the workstation relies on: who sees the blinded reads of a double-read case, and who may amend."""

from __future__ import annotations

from services.verification.domain.cases import ADJUDICATION, FINAL, OPEN, apply_read, may_amend, reads_visible_to
from tests.verification.test_domain import case

NOW = 1_000_000.0


def disagreeing(sop: str = "1.2.3.4.5.9") -> dict:
    c = apply_read(case(sop, mode="double"), "rad-1", "pneumonia", None, None, now=NOW).case
    return apply_read(c, "rad-2", "normal", None, None, now=NOW).case


def test_blind_until_adjudication_then_the_adjudicator_sees_both() -> None:
    c = apply_read(case("1.2.3.4.5.8", mode="double"), "rad-1", "pneumonia", None, None, now=NOW).case
    assert c["status"] == OPEN
    assert not reads_visible_to(c, "rad-2", ("radiologist",), True), "the second reader reads blind"
    assert not reads_visible_to(c, "rad-3", ("radiologist",), True), "no adjudication yet: nothing to decide"
    c = disagreeing()
    assert c["status"] == ADJUDICATION
    assert reads_visible_to(c, "rad-3", ("radiologist",), True), "the adjudicator decides between the two reads"
    assert not reads_visible_to(c, "rad-1", ("radiologist",), True), "a reader never sees the other read early"
    assert not reads_visible_to(c, "rad-2", ("radiologist",), True)
    assert not reads_visible_to(c, "v-1", ("viewer",), False), "a viewer cannot adjudicate"
    assert reads_visible_to(c, "root", ("admin",), True)
    final = apply_read(c, "rad-3", "pneumonia", None, None, now=NOW).case
    assert final["status"] == FINAL and reads_visible_to(final, "rad-1", ("radiologist",), True)
    assert reads_visible_to(case("1.2.3.4.5.7"), "anyone", ("viewer",), False), "single reading is not blinded"


def test_may_amend_follows_who_decided() -> None:
    c = disagreeing()
    assert not may_amend(c, "rad-1"), "no final label yet"
    final = apply_read(c, "rad-3", "pneumonia", None, None, now=NOW).case
    assert may_amend(final, "rad-3") and not may_amend(final, "rad-1"), "an adjudicated label is the adjudicator's"
    single = apply_read(case("1.2.3.4.5.6"), "rad-9", "normal", None, None, now=NOW).case
    assert may_amend(single, "rad-9") and not may_amend(single, "rad-8")
