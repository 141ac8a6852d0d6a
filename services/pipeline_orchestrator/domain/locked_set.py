"""The locked evaluation set: a fixed, patient-disjoint set of verified cases that no training run ever sees.

Drawn once, by this policy: the patients whose stable hash bucket (:func:`shared.datasets.split_for`) is the
``test`` bucket (15 % of patients) are held out. The first time their verified labels hold at least one positive and
one negative, those cases become version 1 of the locked set. After that the set only grows:

- a new verified case of a patient already in the set, or of a new held-out patient, is **appended**;
- a corrected label of a locked case (a higher ``label_version``) is appended as a new line, and readers take the
  latest version of each case (:func:`current_records`); nothing is ever rewritten or removed.

The set's bytes are canonical JSON lines (:mod:`shared.datasets` records with ``split = "test"``), each appended batch
sorted by ``sop_uid``, so version *n+1*'s bytes start with version *n*'s (:func:`check_append_only`) and each
version is named by the SHA-256 of its bytes. Training snapshots exclude every held-out and every locked patient
(:func:`excluded_patients`; ``build_snapshot(..., exclude_patients=...)``), so no run trains or validates on them.

Pure: no AWS (the bytes are stored by ``adapters/datasets.py``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared import datasets
from shared.datasets import ManifestRecord

#: The hash bucket whose patients are held out for the locked set.
HOLDOUT_BUCKET = "test"


class LockedSetError(ValueError):
    """A new version of the locked set would rewrite or drop what an earlier version holds."""


def held_out(patient_pseudo_id: str) -> bool:
    """Whether the draw policy holds this patient out of training (the stable ``test`` hash bucket)."""
    return datasets.split_for(patient_pseudo_id) == HOLDOUT_BUCKET


@dataclass(frozen=True)
class LockedSet:
    """One version of the locked set: its bytes (every line ever appended), hash and counts of current labels."""

    data: bytes
    version: int
    sha256: str
    cases: int
    positives: int
    negatives: int
    patients: frozenset[str] = field(default_factory=frozenset)

    def summary(self) -> dict[str, Any]:
        """What a run, a model card and a report record (no patient ids)."""
        return {"version": self.version, "sha256": self.sha256, "n": self.cases, "positives": self.positives,
                "negatives": self.negatives}


def current_records(data: bytes) -> list[ManifestRecord]:
    """The latest label of each case in the set's bytes (a correction appended later wins), sorted by sop_uid."""
    latest: dict[str, ManifestRecord] = {}
    for r in datasets.parse(data):
        if r.sop_uid not in latest or r.label_version >= latest[r.sop_uid].label_version:
            latest[r.sop_uid] = r
    return [latest[k] for k in sorted(latest)]


def describe(data: bytes, version: int) -> LockedSet:
    recs = current_records(data)
    pos = sum(r.target for r in recs)
    return LockedSet(data=data, version=version, sha256=datasets.sha256(data), cases=len(recs), positives=pos,
                     negatives=len(recs) - pos, patients=frozenset(r.patient_pseudo_id for r in recs))


def check_append_only(old: bytes, new: bytes) -> None:
    """Refuse a version that does not start with the previous one's bytes."""
    if not new.startswith(old):
        raise LockedSetError("a new version of the locked evaluation set must only append to the previous one")


def _record(item: dict[str, Any]) -> ManifestRecord:
    return ManifestRecord(
        sop_uid=item["sop_uid"], study_uid=item["study_uid"], series_uid=item["series_uid"], bucket=item["bucket"],
        frame_key=item["frame_key"], metadata_key=item["metadata_key"], label=item["label"],
        target=datasets.LABELS[item["label"]], label_version=int(item["label_version"]), reader=item["reader"],
        patient_pseudo_id=item["patient_pseudo_id"], split=HOLDOUT_BUCKET, **datasets.frame_location(item))


def update(current: LockedSet | None, labels: Iterable[dict[str, Any]]) -> LockedSet | None:
    """The next version of the locked set given every final label (projection items), or ``current`` when nothing
    is new; None while no set can be drawn yet (the held-out labels lack a positive or a negative)."""
    old = current.data if current else b""
    locked_patients = current.patients if current else frozenset()
    seen = {r.sop_uid: r.label_version for r in current_records(old)} if old else {}
    new: list[ManifestRecord] = []
    for item in labels:
        if item["label"] not in datasets.LABELS:
            continue  # indeterminate: not a case to score on (a locked case stays as it was last verified)
        patient = item["patient_pseudo_id"]
        if patient not in locked_patients and not held_out(patient):
            continue
        if item["sop_uid"] in seen and int(item["label_version"]) <= seen[item["sop_uid"]]:
            continue
        new.append(_record(item))
    if current is None:
        targets = {r.target for r in new}
        if targets != {0, 1}:
            return None
    if not new:
        return current
    data = old + datasets.serialize(new)
    check_append_only(old, data)
    return describe(data, (current.version + 1) if current else 1)


def excluded_patients(current: LockedSet | None, labels: Iterable[dict[str, Any]]) -> frozenset[str]:
    """Every patient a training snapshot must leave out: the locked set's and every held-out patient's."""
    out = set(current.patients if current else ())
    out.update(i["patient_pseudo_id"] for i in labels if held_out(i["patient_pseudo_id"]))
    return frozenset(out)
