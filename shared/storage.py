"""The storage layout: every S3 key radloop writes is spelled here and nowhere else.

Keys are built from validated UIDs only (see :mod:`shared.uids`), so no caller-supplied string can escape its
prefix.
"""

from __future__ import annotations

from shared.uids import validate_uid

HTJ2K_EXT = "jph"


def parse_s3_uri(uri: str, *, what: str = "S3 URI", key_required: bool = True) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); a ValueError names the bad URI. ``key_required=False`` also accepts a
    bucket-level prefix (``s3://bucket/``: key "")."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"{what} {uri!r} is not of the form s3://bucket/key")
    bucket, key = uri[5:].split("/", 1)
    if not bucket or (key_required and not key):
        raise ValueError(f"{what} {uri!r} is not of the form s3://bucket/key")
    return bucket, key


def _uids(study: str, series: str, sop: str | None = None) -> tuple[str, ...]:
    out: tuple[str, ...] = (validate_uid(study, what="StudyInstanceUID"), validate_uid(series, what="SeriesInstanceUID"))
    if sop is not None:
        out += (validate_uid(sop, what="SOPInstanceUID"),)
    return out


def original_key(study: str, series: str, sop: str) -> str:
    """The instance exactly as received: ``dicom/{study}/{series}/{sop}.dcm``."""
    s, se, i = _uids(study, series, sop)
    return f"dicom/{s}/{se}/{i}.dcm"


def frames_prefix(study: str, series: str, sop: str) -> str:
    s, se, i = _uids(study, series, sop)
    return f"frames/{s}/{se}/{i}"


def frame_key(study: str, series: str, sop: str, frame: int) -> str:
    """One frame as an HTJ2K Lossless RPCL codestream: ``frames/{study}/{series}/{sop}/{n}.jph`` (n from 1)."""
    if frame < 1:
        raise ValueError(f"frame numbers start at 1, got {frame}")
    return f"{frames_prefix(study, series, sop)}/{frame}.{HTJ2K_EXT}"


def metadata_key(study: str, series: str, sop: str) -> str:
    """DICOM JSON (PS3.18 F.2) of one instance, without bulk data."""
    s, se, i = _uids(study, series, sop)
    return f"metadata/{s}/{se}/{i}.json"


def series_metadata_key(study: str, series: str) -> str:
    s, se = _uids(study, series)
    return f"metadata/{s}/{se}/series.json"


def heatmap_key(study: str, series: str, sop: str, model_version: int) -> str:
    s, se, i = _uids(study, series, sop)
    return f"heatmaps/{s}/{se}/{i}/v{int(model_version)}.png"


def dataset_manifest_key(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"dataset hash {sha256!r} must be 64 lower-case hex digits")
    return f"datasets/{sha256}/manifest.json"


def model_prefix(run_id: str) -> str:
    if not run_id.replace("-", "").isalnum():
        raise ValueError(f"run id {run_id!r} must be letters, digits and dashes")
    return f"models/{run_id}"


#: In the ml bucket: the prefix the pipeline's Evaluate step reads as "the champion" when there is none (SageMaker
#: refuses an empty input prefix, so it holds one marker object, :data:`NO_CHAMPION_MARKER`).
NO_CHAMPION_PREFIX = "models/no-champion/"
NO_CHAMPION_MARKER = NO_CHAMPION_PREFIX + "NONE"

IMPORTS_PREFIX = "imports/"
IMPORTS_REJECTED_PREFIX = "imports-rejected/"
#: Where the interop service drops the objects it derives from stored instances (AI results, reads: docs/interop.md).
#: Ingestion does not de-identify them again: they are built from instances already stored (and de-identified
#: when that is on), and a second pass would remap their Study Instance UID away from their source's study. Only the
#: interop service may write here (infra/radloop_infra/needs.py).
INTEROP_DROP_PREFIX = IMPORTS_PREFIX + "interop/"
