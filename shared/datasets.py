"""Dataset manifests: the contract between the pipeline orchestrator (writes them) and training (reads them).

A manifest is JSON lines, one :class:`ManifestRecord` per final, non-indeterminate label, sorted by ``sop_uid`` so that
the same labels always give the same bytes and therefore the same SHA-256 (``datasets/{sha256}/manifest.json``).

Splits come from a stable hash of the patient pseudo-id (:func:`split_for`): a patient is in the same split in every
dataset version, so the test set never leaks into training and champion and challenger are compared on the same
patients.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Split = Literal["train", "val", "test"]
#: Fractions of patients per split (by hash bucket out of 100).
SPLIT_BUCKETS: dict[Split, range] = {"train": range(0, 70), "val": range(70, 85), "test": range(85, 100)}
LABELS = {"normal": 0, "pneumonia": 1}


def split_for(patient_pseudo_id: str, salt: str = "radloop-split-v1") -> Split:
    """The split of a patient: stable across dataset versions (SHA-256 of salt and pseudo-id, bucket 0-99)."""
    bucket = int(hashlib.sha256(f"{salt}:{patient_pseudo_id}".encode()).hexdigest()[:8], 16) % 100
    for split, r in SPLIT_BUCKETS.items():
        if bucket in r:
            return split
    raise AssertionError("split buckets must cover 0-99")


class ManifestRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sop_uid: str
    study_uid: str
    series_uid: str
    #: the images bucket and the keys of the first frame (HTJ2K) and of the instance's DICOM JSON
    bucket: str
    frame_key: str
    metadata_key: str
    label: Literal["normal", "pneumonia"]
    target: int = Field(ge=0, le=1)
    label_version: int = Field(ge=1)
    reader: str
    patient_pseudo_id: str
    split: Split
    #: With ``image_store=healthimaging``: frame 1 is image frame ``frame_id`` of image set ``image_set_id`` in data
    #: store ``datastore_id`` (``frame_key`` and ``metadata_key`` then name no object). Absent otherwise, and left out
    #: of the serialized line, so a manifest of the default store is byte for byte what it was.
    datastore_id: str | None = Field(default=None, pattern=r"^[0-9a-z]{32}$")
    image_set_id: str | None = Field(default=None, pattern=r"^[0-9a-z]{32}$")
    frame_id: str | None = Field(default=None, pattern=r"^[0-9a-z]{32}$")


#: The fields that say where a HealthImaging frame is, carried from ``ImageVerified`` through the orchestrator's label
#: projection into the manifest.
FRAME_LOCATION_FIELDS: tuple[str, ...] = ("datastore_id", "image_set_id", "frame_id")


def frame_location(item: Mapping[str, Any]) -> dict[str, str]:
    """The HealthImaging location fields that ``item`` (an event's fields or a projection item) has, all or none."""
    found = {k: str(item[k]) for k in FRAME_LOCATION_FIELDS if item.get(k)}
    return found if len(found) == len(FRAME_LOCATION_FIELDS) else {}


def serialize(records: Iterable[ManifestRecord]) -> bytes:
    """Canonical JSON-lines bytes (sorted by sop_uid, sorted keys; absent optional fields left out)."""
    rows = sorted(records, key=lambda r: r.sop_uid)
    return b"".join(json.dumps(r.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":")).encode() + b"\n"
                    for r in rows)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse(data: bytes) -> list[ManifestRecord]:
    """Parse manifest bytes; raises ValueError naming the bad line."""
    out = []
    for i, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(ManifestRecord.model_validate_json(line))
        except ValueError as exc:
            raise ValueError(f"manifest line {i} is not a valid record: {exc}") from None
    return out
