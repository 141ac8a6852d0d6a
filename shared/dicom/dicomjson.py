"""DICOM JSON (PS3.18 F.2) of an instance: every attribute but the pixel data (served as frames).

Binary values (overlay data, LUT data, ICC profiles, private blobs) up to :data:`INLINE_MAX` bytes are written as
``InlineBinary`` (base64). They were left out above 1 KB until session 22, so a viewer got a LUT descriptor with no
LUT and no overlays (found by a review; PS3.18 §10.4.3.3.2 wants every attribute). Larger ones are still left out:
radloop serves no bulkdata resource to point a ``BulkDataURI`` at (docs/streaming.md, "Not done").
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydicom.dataset import Dataset

#: Pixel data elements are never part of the metadata; frames are served separately.
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
#: Binary values up to this many bytes are written inline (base64); larger ones are left out.
INLINE_MAX = 64 << 10
BULK_THRESHOLD = INLINE_MAX
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
    """The dataset as a DICOM JSON object: pixel data omitted, binary values up to :data:`INLINE_MAX` inline."""
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
