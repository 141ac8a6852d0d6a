"""Index records and ``InstanceStored`` fields of instances an image store imported itself (``image_store=
healthimaging``), built from the store's DICOM JSON (GetImageSetMetadata) and the PHI-free identifiers ingestion kept
when it staged the instance. Pure: no AWS.

The record has the same study/series/instance fields as :func:`services.ingestion.domain.prepare.prepare` writes, so
QIDO-RS and C-FIND answer from it exactly as for the default store, plus ``image_set_id`` and ``frame_ids``.
"""

from __future__ import annotations

import json
from typing import Any

from pydicom.dataset import Dataset

from shared.dicom.dicomjson import dumps
from shared.image_store import ImportedInstance
from shared.instance_index import IndexRecord


def _s(ds: Dataset, kw: str) -> str:
    try:
        v = ds.get(kw)
    except Exception:  # a malformed value in the store's metadata reads as absent
        return ""
    return "" if v is None else str(v).strip()


def _int(ds: Dataset, kw: str) -> int | None:
    try:
        return int(ds.get(kw)) if _s(ds, kw) else None
    except (TypeError, ValueError):
        return None


def imported_record(inst: ImportedInstance, *, inline_json_max: int) -> IndexRecord:
    """The index record of one imported instance (its DICOM JSON inline when it fits ``inline_json_max`` bytes)."""
    a = inst.attributes
    ds = Dataset.from_json(inst.dicom_json)
    meta_text = dumps(inst.dicom_json)
    patient_id = _s(ds, "PatientID")
    study_date = _s(ds, "StudyDate")
    modality = _s(ds, "Modality") or str(a.get("modality") or "")
    rec = IndexRecord(inst.study_uid, inst.series_uid, inst.sop_uid, modality, patient_id)
    rec.study = {
        "study_uid": inst.study_uid, "study_date": study_date, "study_time": _s(ds, "StudyTime"),
        "accession_number": _s(ds, "AccessionNumber"), "study_description": _s(ds, "StudyDescription"),
        "study_id": _s(ds, "StudyID"), "patient_name": _s(ds, "PatientName"),
        "patient_birth_date": _s(ds, "PatientBirthDate"), "patient_sex": _s(ds, "PatientSex"),
        "referring_physician": _s(ds, "ReferringPhysicianName"),
        "level_sk": f"{study_date or '00000000'}#{inst.study_uid}", "patient_id": patient_id or None,
    }
    rec.series = {
        "study_uid": inst.study_uid, "series_uid": inst.series_uid, "modality": modality,
        "series_number": _int(ds, "SeriesNumber"), "series_description": _s(ds, "SeriesDescription"),
        "body_part": _s(ds, "BodyPartExamined"), "patient_id": patient_id or None,
    }
    rec.instance = {
        "sop_uid": inst.sop_uid, "study_uid": inst.study_uid, "series_uid": inst.series_uid,
        "sop_class_uid": _s(ds, "SOPClassUID") or a.get("sop_class_uid"), "instance_number": _int(ds, "InstanceNumber"),
        "number_of_frames": len(inst.frame_ids), "rows": _int(ds, "Rows") or a.get("rows"),
        "columns": _int(ds, "Columns") or a.get("columns"), "bits_allocated": _int(ds, "BitsAllocated"),
        "bits_stored": _int(ds, "BitsStored"), "pixel_representation": _int(ds, "PixelRepresentation"),
        "samples_per_pixel": _int(ds, "SamplesPerPixel"), "photometric": _s(ds, "PhotometricInterpretation"),
        "transfer_syntax_uid": a.get("transfer_syntax_uid") or "", "stored_transfer_syntax_uid":
            inst.stored_transfer_syntax_uid, "content_sha256": a["content_sha256"], "size_bytes": a.get("size_bytes"),
        "htj2k_bytes": a.get("htj2k_bytes"), "original_key": a["staged_key"], "metadata_key": "", "frames_prefix": "",
        "image_set_id": inst.image_set_id, "frame_ids": list(inst.frame_ids),
        "frame_offsets": json.dumps([], separators=(",", ":")), "frame_levels": 0,
        "patient_pseudo_id": a.get("patient_pseudo_id"), "source": a.get("source") or "stow",
    }
    if len(meta_text.encode()) <= inline_json_max:
        rec.instance["dicom_json"] = meta_text
    return rec


def stored_event_fields(inst: ImportedInstance) -> dict[str, Any]:
    """``InstanceStored``'s fields beyond the UIDs and ``event_id`` (identifiers only, no PHI)."""
    a = inst.attributes
    return {
        "sop_class_uid": a["sop_class_uid"], "modality": a.get("modality") or "", "body_part": a.get("body_part"),
        "view_position": a.get("view_position"), "number_of_frames": len(inst.frame_ids),
        "rows": int(a.get("rows") or 0), "columns": int(a.get("columns") or 0), "original_key": a["staged_key"],
        "frames_prefix": "", "metadata_key": "", "content_sha256": a["content_sha256"],
        "size_bytes": int(a.get("size_bytes") or 0), "htj2k_bytes": int(a.get("htj2k_bytes") or 0),
        "patient_pseudo_id": a["patient_pseudo_id"], "source": a.get("source") or "stow",
        "deidentified": bool(a.get("deidentified")), "image_set_id": inst.image_set_id, "frame_ids": inst.frame_ids,
        "datastore_id": inst.datastore_id or None,
    }
