"""Which images the pneumonia model is meant for. Everything else is ``not_applicable`` with a reason."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

BODY_PART_TAG = "00180015"
MODALITY_TAG = "00080060"


def _json_value(meta: Mapping[str, Any] | None, tag: str) -> str | None:
    if not meta:
        return None
    el = meta.get(tag) or {}
    vals = el.get("Value") or []
    return str(vals[0]).strip() if vals and vals[0] is not None else None


def not_applicable_reason(
    modality: str | None,
    body_part: str | None,
    *,
    modalities: Sequence[str],
    body_parts: Sequence[str],
    meta: Mapping[str, Any] | None = None,
) -> str | None:
    """None when the model applies; otherwise a sentence saying why it does not.

    The body part comes from the event, or from BodyPartExamined (0018,0015) in the stored DICOM JSON. An image with no
    body part at all is not applicable: scoring a radiograph of unknown anatomy would be scoring it silently.
    """
    mod = (modality or _json_value(meta, MODALITY_TAG) or "").upper()
    if mod not in {m.upper() for m in modalities}:
        return (f"modality {mod or '(missing)'!r} is not one the model is validated for; "
                f"expected one of {', '.join(modalities)}")
    part = (body_part or _json_value(meta, BODY_PART_TAG) or "").upper()
    if not part:
        return (f"BodyPartExamined is missing, so the image cannot be confirmed to be a chest radiograph; "
                f"the model is validated for {', '.join(body_parts)} only")
    if part not in {b.upper() for b in body_parts}:
        return f"body part {part!r} is not one the model is validated for; expected one of {', '.join(body_parts)}"
    return None
