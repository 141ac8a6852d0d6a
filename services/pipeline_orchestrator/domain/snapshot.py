"""Dataset snapshots: the projection of final labels -> the canonical manifest (``shared.datasets``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from shared import datasets
from shared.datasets import ManifestRecord


@dataclass(frozen=True)
class Snapshot:
    """A manifest's bytes, its hash and the label counts it holds."""

    data: bytes
    sha256: str
    records: int
    per_class: dict[str, int] = field(default_factory=dict)
    per_split: dict[str, dict[str, int]] = field(default_factory=dict)


def build_snapshot(labels: Iterable[dict[str, Any]], exclude_patients: Iterable[str] = ()) -> Snapshot:
    """Build the manifest from projection items (one per sop_uid, latest version); ``indeterminate`` is excluded,
    and so is every case of a patient in ``exclude_patients`` (the locked evaluation set's and every held-out
    patient's: :func:`services.pipeline_orchestrator.domain.locked_set.excluded_patients`).

    The split is recomputed from the patient pseudo-id (:func:`shared.datasets.split_for`), never stored, so a patient
    is in the same split in every version.
    """
    records = []
    excluded = frozenset(exclude_patients)
    for item in labels:
        label = item["label"]
        if label not in datasets.LABELS or item["patient_pseudo_id"] in excluded:
            continue
        records.append(
            ManifestRecord(
                sop_uid=item["sop_uid"],
                study_uid=item["study_uid"],
                series_uid=item["series_uid"],
                bucket=item["bucket"],
                frame_key=item["frame_key"],
                metadata_key=item["metadata_key"],
                label=label,
                target=datasets.LABELS[label],
                label_version=int(item["label_version"]),
                reader=item["reader"],
                patient_pseudo_id=item["patient_pseudo_id"],
                split=datasets.split_for(item["patient_pseudo_id"]),
                **datasets.frame_location(item),
            )
        )
    data = datasets.serialize(records)
    per_class: Counter[str] = Counter(r.label for r in records)
    per_split: dict[str, dict[str, int]] = {}
    for r in records:
        per_split.setdefault(r.split, {c: 0 for c in datasets.LABELS})[r.label] += 1
    return Snapshot(
        data=data,
        sha256=datasets.sha256(data),
        records=len(records),
        per_class={c: per_class.get(c, 0) for c in datasets.LABELS},
        per_split=per_split,
    )
