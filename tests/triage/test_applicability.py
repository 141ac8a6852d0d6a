"""Only CR/DX chest radiographs are scored; everything else is not_applicable with a reason naming the value."""

from __future__ import annotations

from services.triage.domain.applicability import not_applicable_reason
from services.triage.domain.priority import priority_for

KW = {"modalities": ("CR", "DX"), "body_parts": ("CHEST",)}


def test_chest_radiographs_apply() -> None:
    assert not_applicable_reason("DX", "CHEST", **KW) is None
    assert not_applicable_reason("cr", None, meta={"00180015": {"vr": "CS", "Value": ["chest"]}}, **KW) is None


def test_other_modalities_body_parts_and_unknown_anatomy_do_not() -> None:
    assert "'CT'" in (not_applicable_reason("CT", "CHEST", **KW) or "")
    assert "'HAND'" in (not_applicable_reason("DX", "HAND", **KW) or "")
    assert "BodyPartExamined is missing" in (not_applicable_reason("DX", None, meta={}, **KW) or "")


def test_priority_is_urgent_exactly_at_or_above_the_operating_threshold() -> None:
    assert priority_for(0.42, 0.42) == "urgent"
    assert priority_for(0.4199, 0.42) == "routine"
    assert priority_for(None, None) == "routine"
