"""AWS HealthImaging image set metadata (GetImageSetMetadata) read as DICOM JSON (PS3.18 F.2). Pure: no AWS calls.

GetImageSetMetadata answers one gzip-compressed JSON document per image set, normalised by study level::

    {"SchemaVersion": "1.1", "DatastoreID": ..., "ImageSetID": ...,
     "Patient": {"DICOM": {"PatientID": ..., "PatientName": ...}},
     "Study": {"DICOM": {"StudyInstanceUID": ..., "StudyDate": ...},
               "Series": {"<SeriesInstanceUID>": {"DICOM": {...},
                          "Instances": {"<SOPInstanceUID>": {"DICOM": {...}, "DICOMVRs": {...},
                                        "StoredTransferSyntaxUID": "1.2.840.10008.1.2.4.202",
                                        "ImageFrames": [{"ID": "<32 hex>", "FrameSizeInBytes": ..., ...}]}}}}}}

Attributes are keyed by their DICOM keyword (a private or unknown one by its tag, ``"00091010"``), with plain JSON
values; ``DICOMVRs`` names the VR where the dictionary cannot (private tags, ambiguous VRs). :func:`instance_dicom_json`
merges the four levels of one instance and writes each attribute the way PS3.18 F.2 spells it.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_dict

_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")
# Multi-valued strings arrive backslash-separated when not already lists; these VRs never hold a backslash value.
_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR", "UC"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
_STRING_NUMBER_VRS = frozenset({"IS", "DS"})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})


class MetadataError(ValueError):
    """The document is not HealthImaging image set metadata as documented."""


def load(blob: bytes, content_encoding: str | None = "gzip") -> dict[str, Any]:
    """The metadata document from GetImageSetMetadata's body (gzip unless ``content_encoding`` says otherwise)."""
    raw = gzip.decompress(blob) if (content_encoding or "").lower() == "gzip" or blob[:2] == b"\x1f\x8b" else blob
    doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("Study"), dict):
        raise MetadataError("image set metadata has no Study object")
    return doc


def instances(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(SeriesInstanceUID, SOPInstanceUID, instance object)`` of every instance in the image set."""
    for series_uid, series in (doc["Study"].get("Series") or {}).items():
        for sop_uid, inst in (series.get("Instances") or {}).items():
            yield series_uid, sop_uid, inst


def find_instance(doc: dict[str, Any], sop_uid: str) -> tuple[str, dict[str, Any]] | None:
    """``(SeriesInstanceUID, instance object)`` of one SOP instance, or None."""
    for series_uid, sop, inst in instances(doc):
        if sop == sop_uid:
            return series_uid, inst
    return None


def frame_ids(inst: dict[str, Any]) -> tuple[str, ...]:
    """The instance's image frame ids, frame 1 first (GetImageFrame's ``imageFrameId``)."""
    return tuple(str(f["ID"]) for f in inst.get("ImageFrames") or [])


def instance_dicom_json(doc: dict[str, Any], series_uid: str, sop_uid: str) -> dict[str, Any]:
    """The DICOM JSON of one instance: Patient, Study, Series and Instance attributes merged (the lowest level wins)."""
    series: dict[str, Any] = (doc["Study"].get("Series") or {}).get(series_uid) or {}
    inst: dict[str, Any] | None = (series.get("Instances") or {}).get(sop_uid)
    if inst is None:
        raise MetadataError(f"image set {doc.get('ImageSetID')} has no instance {sop_uid} in series {series_uid}")
    vrs = {**(doc.get("Patient", {}).get("DICOMVRs") or {}), **(doc["Study"].get("DICOMVRs") or {}),
           **(series.get("DICOMVRs") or {}), **(inst.get("DICOMVRs") or {})}
    merged: dict[str, Any] = {}
    for level in (doc.get("Patient") or {}, doc["Study"], series, inst):
        merged.update(level.get("DICOM") or {})
    out = _dataset(merged, vrs)
    # The study and series keys come from the document's structure, whatever the levels repeat.
    out.setdefault("0020000E", {"vr": "UI", "Value": [series_uid]})
    out.setdefault("00080018", {"vr": "UI", "Value": [sop_uid]})
    return dict(sorted(out.items()))


def _dataset(attrs: dict[str, Any], vrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        tag = _tag_of(name)
        if tag is None:
            continue  # neither a keyword nor a tag: nothing a DICOM JSON reader could use
        vr = _vr_of(name, tag, vrs)
        if vr is None or vr in _BINARY_VRS:
            continue  # bulk data and unknown private attributes are not served as metadata
        out[f"{tag:08X}"] = _element(vr, value, vrs)
    return out


def _tag_of(name: str) -> int | None:
    if name in keyword_dict:
        return int(keyword_dict[name])
    m = _TAG.match(name)
    return int(m.group(1) + m.group(2), 16) if m else None


def _vr_of(name: str, tag: int, vrs: dict[str, Any]) -> str | None:
    given = vrs.get(name) or vrs.get(f"{tag:08X}")
    if isinstance(given, str) and len(given) == 2:
        return given.upper()
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr.split(" or ")[0] if vr else None


def _element(vr: str, value: Any, vrs: dict[str, Any]) -> dict[str, Any]:
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if vr == "SQ":
        items = value if isinstance(value, list) else [value]
        return {"vr": vr, "Value": [_dataset(it, vrs) for it in items if isinstance(it, dict)]}
    values = value if isinstance(value, list) else _split(vr, value)
    if vr == "PN":
        return {"vr": vr, "Value": [v if isinstance(v, dict) else {"Alphabetic": str(v)} for v in values]}
    if vr in _NUMBER_VRS or vr in _STRING_NUMBER_VRS:
        return {"vr": vr, "Value": [_number(vr, v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def _split(vr: str, value: Any) -> list[Any]:
    if isinstance(value, str) and vr not in _TEXT_VRS and "\\" in value:
        return value.split("\\")
    return [value]


def _number(vr: str, v: Any) -> Any:
    if isinstance(v, int | float):
        return v
    text = str(v).strip()
    try:
        return int(text) if vr in ("IS", "US", "SS", "UL", "SL", "UV", "SV") else float(text)
    except ValueError:
        return text  # kept as received: a reader sees the odd value rather than a silently dropped one
