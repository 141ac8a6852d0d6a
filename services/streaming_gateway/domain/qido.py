"""QIDO-RS (PS3.18 §10.6) query parsing, matching and DICOM JSON results: :mod:`shared.query.matching`, the one
implementation the gateway and a C-FIND SCP share; re-exported here under the gateway's name."""

from shared.query.matching import (
    BY_KEYWORD,
    BY_TAG,
    CONTROL_KEYS,
    LEVELS,
    MATCHABLE,
    Attr,
    Matcher,
    Query,
    instance_matches,
    instance_result,
    parse_query,
    resolve_key,
    series_matches,
    series_result,
    sort_json,
    study_matches,
    study_result,
    tag_of,
    vr_of,
)

__all__ = [
    "BY_KEYWORD", "BY_TAG", "CONTROL_KEYS", "LEVELS", "MATCHABLE", "Attr", "Matcher", "Query", "instance_matches",
    "instance_result", "parse_query", "resolve_key", "series_matches", "series_result", "sort_json", "study_matches",
    "study_result", "tag_of", "vr_of",
]
