"""The CPU-bound half of the pipeline, run in a worker process: parse, (de-identify), decode, transcode, describe.

:func:`prepare` takes the received bytes and returns a :class:`Prepared` (picklable) holding everything the I/O
half needs to store, index and announce the instance, or raises :class:`DicomRejection`. It touches no network.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from shared.dicom.dicomjson import dumps, to_dicom_json
from shared.dicom.errors import DATASET_MISMATCH, DicomRejection
from shared.dicom.parse import ParseLimits, parse_safely
from shared.dicom.pixels import EncodedFrames, transcode
from shared.events import pseudonymise
from shared.instance_index import IndexRecord
from shared.storage import frames_prefix, metadata_key, original_key

SOURCES = ("stow", "dimse", "s3")


@dataclass(frozen=True)
class PrepareOptions:
    limits: ParseLimits
    pseudonym_key: str
    deidentify: bool = False
    deid_key: str = ""
    deid_private_allowlist: tuple[int, ...] = ()
    #: STOW-RS to /studies/{study}: every instance must belong to this study (PS3.18 §10.5.3, 0xA900 otherwise).
    expected_study: str | None = None
    source: str = "stow"


@dataclass
class Prepared:
    """One instance ready to store: bytes, frames, metadata and the index record."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    content_sha256: str
    #: The data set's own identity: SHA-256 of its transfer syntax and the bytes after the file meta, equal for the
    #: same data set received with another file meta (over DIMSE, then as a file over STOW-RS).
    dataset_sha256: str
    #: The bytes to store when they differ from the received ones (de-identified); empty means "as received", so
    #: the received object does not travel back from the worker process.
    stored_bytes: bytes
    frames: list[bytes]
    dicom_json: str
    record: IndexRecord
    event_fields: dict[str, Any] = field(default_factory=dict)
    deidentified: bool = False
    #: Set when the instance must be quarantined instead of stored (the reason).
    quarantine_reason: str | None = None
    #: The frame-offset table when it is stored in S3 instead of the index item (set by the pipeline).
    offsets_object: bytes | None = None

    @property
    def original_key(self) -> str:
        return original_key(self.study_uid, self.series_uid, self.sop_uid)

    @property
    def metadata_key(self) -> str:
        return metadata_key(self.study_uid, self.series_uid, self.sop_uid)

    @property
    def frames_prefix(self) -> str:
        return frames_prefix(self.study_uid, self.series_uid, self.sop_uid)


def _s(ds: Dataset, kw: str) -> str:
    v = ds.get(kw)
    return "" if v is None else str(v).strip()


def _int_or_none(ds: Dataset, kw: str) -> int | None:
    v = ds.get(kw)
    try:
        return int(v) if v not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _bytes_of(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dataset_identity(data: bytes, transfer_syntax: str, offset: int) -> str:
    """SHA-256 of the transfer syntax UID and the data set's bytes as received (everything after the file meta)."""
    h = hashlib.sha256(str(transfer_syntax).encode() + b"\0")
    h.update(memoryview(data)[offset:])
    return h.hexdigest()


def prepare(data: bytes, opts: PrepareOptions) -> Prepared:
    """Run the CPU-bound steps on one received object (see the module docstring)."""
    sha = hashlib.sha256(data).hexdigest()
    parsed = parse_safely(data, opts.limits)
    ds = parsed.dataset
    ident = dataset_identity(data, parsed.transfer_syntax, parsed.dataset_offset)
    ref = {"sop_uid": parsed.sop_uid, "sop_class_uid": parsed.sop_class_uid, "study_uid": parsed.study_uid}
    if opts.expected_study and parsed.study_uid != opts.expected_study:
        raise DicomRejection(DATASET_MISMATCH, f"The instance belongs to study {parsed.study_uid}, not to study "
                             f"{opts.expected_study} named in the request URL.", kind="study-mismatch", **ref)
    stored = data
    deidentified = False
    quarantine: str | None = None
    # The pseudonym comes from the PatientID as received: de-identification replaces it with a constant, so a
    # pseudonym computed afterwards would be the same for every patient (one patient, one train/val/test split).
    pseudo = pseudonymise(_s(ds, "PatientID"), opts.pseudonym_key)
    if opts.deidentify:
        from shared.dicom.deid import burned_in_annotation_reason, deidentify

        # A structured report has no pixels, so no text can be burned into them (its text is de-identified).
        quarantine = burned_in_annotation_reason(ds) if parsed.number_of_frames else None
        if quarantine is None:
            deidentify(ds, key=opts.deid_key, private_allowlist=opts.deid_private_allowlist)
            stored = _bytes_of(ds)
            deidentified = True
            # Keys and the index must use the remapped UIDs.
            parsed.study_uid, parsed.series_uid = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
            parsed.sop_uid = str(ds.SOPInstanceUID)
    if quarantine is not None:
        return Prepared(study_uid=parsed.study_uid, series_uid=parsed.series_uid, sop_uid=parsed.sop_uid,
                        sop_class_uid=parsed.sop_class_uid, modality=parsed.modality, content_sha256=sha,
                        dataset_sha256=ident, stored_bytes=b"", frames=[], dicom_json="{}", record=IndexRecord(
                            parsed.study_uid, parsed.series_uid, parsed.sop_uid, parsed.modality, ""),
                        quarantine_reason=quarantine)
    if parsed.number_of_frames == 0:  # a structured report (shared.dicom.sop_classes): nothing to transcode
        encoded = EncodedFrames(codestreams=[], offsets=[], levels=0, photometric="")
    else:
        encoded = transcode(ds, expected_frames=parsed.number_of_frames, sop_uid=parsed.sop_uid)
    meta = to_dicom_json(ds)
    meta_text = dumps(meta)
    patient_id = _s(ds, "PatientID")  # de-identified when de-identification ran (the index holds no PHI then)
    study_date = _s(ds, "StudyDate")
    prep = Prepared(
        study_uid=parsed.study_uid, series_uid=parsed.series_uid, sop_uid=parsed.sop_uid,
        sop_class_uid=parsed.sop_class_uid, modality=parsed.modality, content_sha256=sha, dataset_sha256=ident,
        stored_bytes=stored if deidentified else b"",
        frames=encoded.codestreams, dicom_json=meta_text, record=IndexRecord(
            parsed.study_uid, parsed.series_uid, parsed.sop_uid, parsed.modality, patient_id),
        deidentified=deidentified,
    )
    import json

    rec = prep.record
    rec.study = {
        "study_uid": parsed.study_uid, "study_date": study_date, "study_time": _s(ds, "StudyTime"),
        "accession_number": _s(ds, "AccessionNumber"), "study_description": _s(ds, "StudyDescription"),
        "study_id": _s(ds, "StudyID"), "patient_name": _s(ds, "PatientName"),
        "patient_birth_date": _s(ds, "PatientBirthDate"), "patient_sex": _s(ds, "PatientSex"),
        "referring_physician": _s(ds, "ReferringPhysicianName"),
        "level_sk": f"{study_date or '00000000'}#{parsed.study_uid}", "patient_id": patient_id or None,
    }
    rec.series = {
        "study_uid": parsed.study_uid, "series_uid": parsed.series_uid, "modality": parsed.modality,
        "series_number": _int_or_none(ds, "SeriesNumber"), "series_description": _s(ds, "SeriesDescription"),
        "body_part": _s(ds, "BodyPartExamined"), "patient_id": patient_id or None,
    }
    rec.instance = {
        "sop_uid": parsed.sop_uid, "study_uid": parsed.study_uid, "series_uid": parsed.series_uid,
        "sop_class_uid": parsed.sop_class_uid, "instance_number": _int_or_none(ds, "InstanceNumber"),
        "number_of_frames": parsed.number_of_frames, "rows": parsed.rows, "columns": parsed.columns,
        "bits_allocated": _int_or_none(ds, "BitsAllocated"), "bits_stored": _int_or_none(ds, "BitsStored"),
        "pixel_representation": _int_or_none(ds, "PixelRepresentation"),
        "samples_per_pixel": _int_or_none(ds, "SamplesPerPixel"),
        "photometric": encoded.photometric, "transfer_syntax_uid": str(parsed.transfer_syntax),
        "content_sha256": sha, "size_bytes": len(stored), "htj2k_bytes": encoded.total_bytes,
        "original_key": prep.original_key, "metadata_key": prep.metadata_key, "frames_prefix": prep.frames_prefix,
        "frame_offsets": json.dumps(encoded.offsets, separators=(",", ":")), "frame_levels": encoded.levels,
        "patient_pseudo_id": pseudo, "source": opts.source, "dicom_json": meta_text,
    }
    prep.event_fields = {
        "sop_class_uid": parsed.sop_class_uid, "modality": parsed.modality,
        "body_part": _s(ds, "BodyPartExamined") or None, "view_position": _s(ds, "ViewPosition") or None,
        "number_of_frames": parsed.number_of_frames, "rows": parsed.rows, "columns": parsed.columns,
        "original_key": prep.original_key, "frames_prefix": prep.frames_prefix, "metadata_key": prep.metadata_key,
        "content_sha256": sha, "size_bytes": len(stored), "htj2k_bytes": encoded.total_bytes,
        "patient_pseudo_id": pseudo, "source": opts.source, "deidentified": deidentified,
    }
    return prep
