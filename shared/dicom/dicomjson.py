"""DICOM JSON (PS3.18 F.2) of an instance without bulk data."""

from __future__ import annotations

import json
import math
from typing import Any

from pydicom.dataset import Dataset

#: Pixel data elements are never part of the metadata; frames are served separately.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
#: Binary values above this many bytes are bulk data and are left out (PS3.18 F.2.7 allows a BulkDataURI instead).
BULK_THRESHOLD = 1024
_BINARY_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}


def _strip_bulk(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        if int(elem.tag) in _PIXEL_TAGS:
            continue
        if elem.VR == "SQ":
            new = elem.__class__(elem.tag, "SQ", [_strip_bulk(item) for item in elem.value])
            out.add(new)
            continue
        if elem.VR in _BINARY_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            continue
        out.add(elem)
    return out


def to_dicom_json(ds: Dataset) -> dict[str, Any]:
    """The dataset as a DICOM JSON object, with pixel data and other bulk binary values omitted."""
    stripped = _strip_bulk(ds)
    try:
        return stripped.to_json_dict(bulk_data_threshold=BULK_THRESHOLD)
    except Exception:  # a value pydicom cannot render; keep what can be rendered rather than fail the instance
        return stripped.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, suppress_invalid_tags=True)


def dumps(obj: dict[str, Any]) -> str:
    """Compact JSON text of a DICOM JSON object, always valid JSON: a value JSON has no number for (an FD of NaN, a
    DS of 1e999, read as infinity) is written as ``null``, an empty value (PS3.18 F.2.5). ``json.dumps`` wrote
    ``NaN`` and ``Infinity``, which no JSON parser reads, so a viewer could not load the series' metadata at all
    (found by a review)."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
