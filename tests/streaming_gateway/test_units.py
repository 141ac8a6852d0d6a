"""Unit tests of the gateway's pure parts: Accept negotiation, ranges, QIDO parsing and matching, the LRU budget."""

from __future__ import annotations

import numpy as np
import pytest

from services.streaming_gateway.domain import media, qido
from services.streaming_gateway.domain.errors import BadRequest, NotAcceptable, RangeNotSatisfiable
from services.streaming_gateway.domain.frames import Frame, FrameCache
from shared.htj2k import encode


def test_frame_negotiation() -> None:
    jphc = media.negotiate_frames('multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202', 1)
    assert jphc.encoded and jphc.multipart and jphc.part_type == "image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202"
    cs = media.negotiate_frames("multipart/related; type=application/octet-stream; transfer-syntax=*", 1)
    assert not cs.encoded and cs.multipart and cs.part_type.endswith("1.2.840.10008.1.2.1")  # Cornerstone3D
    raw = media.negotiate_frames('multipart/related; type="application/octet-stream"', 1)
    assert not raw.encoded and raw.part_type.endswith("1.2.840.10008.1.2.1")
    assert media.negotiate_frames("image/jhc", 1).media_type == "image/jhc"
    assert not media.negotiate_frames(None, 3).encoded  # the standard's default: uncompressed, multipart
    # q-values choose; a type that cannot hold several frames is skipped for a frame list.
    pick = media.negotiate_frames('image/jphc;q=0.5, multipart/related; type="image/jphc";q=0.9', 2)
    assert pick.multipart
    with pytest.raises(NotAcceptable):
        media.negotiate_frames("image/jphc", 2)
    with pytest.raises(NotAcceptable):
        media.negotiate_frames('multipart/related; type="image/jls"', 1)


def test_accept_review_findings() -> None:
    """Found by a review (session 22): an invalid q-value failed the whole request with 400, where PS3.18 §8.7.7
    ignores the invalid value; and frames asked for as HTJ2K .201 or .203 were labelled .202 or refused."""
    assert [r.type for r in media.parse_accept("application/dicom+json, text/html;q=bogus")] == ["application/dicom+json"]
    assert [r.type for r in media.parse_accept("text/html;q=1.5")] == ["*/*"]  # nothing valid named: anything
    for ts in ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"):
        rep = media.negotiate_frames(f'multipart/related; type="image/jphc"; transfer-syntax={ts}', 1)
        assert rep.encoded and rep.part_type == f"image/jphc; transfer-syntax={ts}"
        assert media.negotiate_frames(f"image/jphc; transfer-syntax={ts}", 1).part_type.endswith(ts)
    assert media.negotiate_frames('multipart/related; type="image/jphc"', 1).part_type.endswith(".202")


def test_instance_negotiation() -> None:
    assert media.negotiate_instances('multipart/related; type="application/dicom"; transfer-syntax=*') == "*"
    assert media.negotiate_instances('multipart/related; type="application/dicom"') == media.EXPLICIT_VR_LE
    # */*, multipart/* or no Accept: the default media type, so the default syntax, not the stored one (a JPEG-LS
    # original went out as JPEG-LS to a client that may have no such codec; found by a review, session 22).
    for header in ("*/*", "multipart/*", None, 'multipart/related; type="*/*"'):
        assert media.negotiate_instances(header) == media.EXPLICIT_VR_LE, header
    with pytest.raises(NotAcceptable):
        media.negotiate_instances('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50')


def test_ranges() -> None:
    assert media.parse_range("bytes=0-63999", 100_000) == (0, 63999)
    assert media.parse_range("bytes=0-63999", 1000) == (0, 999)
    assert media.parse_range("bytes=-100", 1000) == (900, 999)
    assert media.parse_range("bytes=10-", 1000) == (10, 999)
    assert media.parse_range("bytes=0-1,5-6", 1000) is None  # several ranges: the whole body
    assert media.parse_range("items=0-1", 1000) is None
    with pytest.raises(RangeNotSatisfiable):
        media.parse_range("bytes=1000-", 1000)


def test_qido_parsing_and_matching() -> None:
    q = qido.parse_query("STUDY", [("PatientName", "doe^j*"), ("StudyDate", "20240101-"), ("00100020", "P1"),
                                   ("Bogus", "x"), ("limit", "5"), ("includefield", "00081030,StudyID")])
    assert q.limit == 5 and q.ignored == ["Bogus"] and {"StudyDescription", "StudyID"} <= q.include
    study = {"patient_name": "DOE^JANE", "study_date": "20240301", "patient_id": "P1"}
    assert qido.study_matches(q, study)
    assert not qido.study_matches(q, {**study, "study_date": "20231231"})
    fuzzy = qido.parse_query("STUDY", [("fuzzymatching", "true"), ("PatientName", "jan")])
    assert qido.study_matches(fuzzy, study)
    mods = qido.parse_query("STUDY", [("ModalitiesInStudy", "MR,CT")])
    assert qido.study_matches(mods, {"modalities": ["CT", "SR"]})
    assert not qido.study_matches(mods, {"modalities": ["CR"]})
    with pytest.raises(BadRequest, match="SeriesNumber"):
        qido.parse_query("SERIES", [("SeriesNumber", "one")])
    with pytest.raises(BadRequest, match="starts after it ends"):
        qido.parse_query("STUDY", [("StudyDate", "20240201-20240101")])


def test_universal_matching_and_trailing_name_components() -> None:
    """Found by a review (session 22): "*" did not match an empty value (PS3.4 C.2.2.2.4 makes it universal
    matching), and DOE^JOHN^^^ (trailing empty components, which may be left out: PS3.5 §6.2) matched nothing."""
    star = qido.parse_query("STUDY", [("AccessionNumber", "*"), ("PatientName", "**")])
    assert not star.matchers and {"AccessionNumber", "PatientName"} <= star.include
    assert qido.study_matches(star, {"accession_number": "", "patient_name": ""})
    for query in ("DOE^JOHN^^^", "doe^john^", "DOE^JOHN"):
        q = qido.parse_query("STUDY", [("PatientName", query)])
        assert qido.study_matches(q, {"patient_name": "DOE^JOHN"}), query
        assert qido.study_matches(q, {"patient_name": "DOE^JOHN^^"}), query
        assert not qido.study_matches(q, {"patient_name": "DOE^JOHNNY"}), query


def test_frame_cache_budget() -> None:
    frames = [Frame.of(encode(np.full((64, 64), k, np.uint16) + np.arange(64, dtype=np.uint16))) for k in range(20)]
    size = len(frames[0].data)
    cache = FrameCache(size * 3 + 1)
    for k, f in enumerate(frames):
        cache.put(f"k{k}", f)
        assert cache.bytes <= cache.budget
    assert len(cache) == 3 and cache.evictions == 17
    assert cache.get("k19") is not None and cache.get("k0") is None
    big = FrameCache(10)
    big.put("x", frames[0])  # larger than the whole budget: served, never cached
    assert len(big) == 0


def test_resolution_headers_stay_within_what_proxies_pass() -> None:
    """Per-frame resolution offsets ride in response headers; a 1,000-frame request made about 30 KB of them, which an
    AWS ALB refuses (16 KB per header, 32 KB in all: 502 to the client). Above the budget they are left out."""
    from services.streaming_gateway.domain.frame_response import RESOLUTION_HEADERS_MAX_BYTES, resolution_headers

    one = resolution_headers([(2_113, 8_467, 33_710, 117_090)])
    assert one == {"X-Resolution-Offsets": "2113,8467,33710,117090", "X-Resolution-Levels": "4"}
    series = resolution_headers([(2_113 + k, 8_467 + k, 33_710 + k, 117_090 + k) for k in range(300)])
    assert len(series["X-Resolution-Offsets"].split(";")) == 300  # a 300-slice series' offsets still fit
    many = [(9_113 + k, 38_467 + k, 133_710 + k, 517_090 + k, 1_900_000 + k) for k in range(1_000)]
    assert resolution_headers(many) == {}
    assert all(len(v) <= RESOLUTION_HEADERS_MAX_BYTES for v in series.values())
