"""Property tests (issue 15 §4) of the gateway's parsers of hostile input: the frame list and ``resolution``, the QIDO
query parser (and matching with what it builds), the Range and Accept parsers and media negotiation.

The bar: no 500 (only a 4xx :class:`GatewayError` with a reason, or a result), no hang (a per-example deadline), and
bounded results (never more than the input could name). Examples are bounded and the database is off, so a run is
reproducible from its seed and writes nothing into the checkout.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.streaming_gateway.domain import frame_response as fr
from services.streaming_gateway.domain import media, qido
from services.streaming_gateway.domain.errors import GatewayError
from services.streaming_gateway.domain.wildcard import Wildcard

FUZZ = settings(max_examples=300, deadline=timedelta(milliseconds=500), database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Text that leans towards what these parsers look for, plus anything at all (digits of other scripts included).
_PIECES = st.sampled_from(["1", "0", "9", ",", " ", "-", "=", ";", "*", "?", "\\", '"', "q", ".", "bytes", "²",
                           "\u0663", "_", "+", "e", "/", "*/*", "multipart/related", "type=", "transfer-syntax=",
                           "image/jphc", "application/octet-stream", "application/dicom", "1.2.840.10008.1.2.1"])
HOSTILE_TEXT = st.one_of(st.text(max_size=200), st.lists(_PIECES, max_size=60).map("".join))


def _is_client_error(exc: GatewayError) -> None:
    assert 400 <= exc.status < 500, exc
    assert str(exc), "a 4xx always says why"


@FUZZ
@given(raw=HOSTILE_TEXT, max_frames=st.integers(1, 50))
@example(raw=",".join(["1"] * 1000), max_frames=5)
@example(raw="\u00b2", max_frames=5)
@example(raw="1" * 5000, max_frames=5)
def test_frame_list(raw: str, max_frames: int) -> None:
    try:
        nums = fr.parse_frame_list(raw, max_frames=max_frames)
    except GatewayError as exc:
        _is_client_error(exc)
        return
    assert 1 <= len(nums) <= max_frames and len(set(nums)) == len(nums)
    assert all(n >= 1 for n in nums)
    assert [str(n) for n in nums] == list(dict.fromkeys(p.strip(" ").lstrip("0") for p in raw.split(",")))


@FUZZ
@given(nums=st.lists(st.integers(1, 30), min_size=1, max_size=200), sep=st.sampled_from([",", " ,", ", "]))
def test_frame_list_dedup_keeps_first_occurrence(nums: list[int], sep: str) -> None:
    got = fr.parse_frame_list(sep.join(str(n) for n in nums), max_frames=30)
    assert got == list(dict.fromkeys(nums))


@FUZZ
@given(raw=st.one_of(st.none(), HOSTILE_TEXT))
def test_resolution(raw: str | None) -> None:
    try:
        res = fr.parse_resolution(raw)
    except GatewayError as exc:
        _is_client_error(exc)
        return
    if raw is None:
        assert res is None
    else:
        assert res is not None and 0 <= res <= fr.MAX_RESOLUTION


_KEYS = st.sampled_from(sorted(qido.BY_KEYWORD) + sorted(qido.CONTROL_KEYS) + ["00100010", "0020000D", "Bogus",
                                                                                 "PixelSpacing", ""])


@FUZZ
@given(level=st.sampled_from(qido.LEVELS), pairs=st.lists(st.tuples(_KEYS, HOSTILE_TEXT), max_size=8),
       item_values=st.lists(st.text(max_size=80), min_size=1, max_size=4))
@example(level="STUDY", pairs=[("PatientName", "*A*A*A*A*A*A*A*A!")], item_values=["A" * 64])
@example(level="STUDY", pairs=[("fuzzymatching", "true"), ("PatientName", "*A" * 120)], item_values=["A^" * 40])
def test_qido_query(level: str, pairs: list[tuple[str, str]], item_values: list[str]) -> None:
    try:
        q = qido.parse_query(level, pairs, max_offset=10_000)
    except GatewayError as exc:
        _is_client_error(exc)
        return
    assert q.offset <= 10_000 and (q.limit is None or q.limit >= 0)
    assert len(q.matchers) <= len(pairs)
    # Whatever was built matches any index item quickly (the deadline is the "no hang" bar) and answers a bool.
    item: dict[str, Any] = {a.field: item_values[k % len(item_values)] for k, a in enumerate(qido.BY_KEYWORD.values())}
    item["modalities"] = item_values
    for m in q.matchers.values():
        assert m.matches(item.get(qido.BY_KEYWORD[m.keyword].field)) in (True, False)


@FUZZ
@given(header=st.one_of(st.none(), HOSTILE_TEXT, st.builds(lambda a, b: f"bytes={a}-{b}", HOSTILE_TEXT, HOSTILE_TEXT)),
       length=st.integers(1, 10**9))
@example(header="bytes=\u00b2-", length=100)
@example(header="bytes=" + "9" * 5000 + "-", length=100)
@example(header="bytes=-" + "9" * 5000, length=100)
def test_range(header: str | None, length: int) -> None:
    try:
        rng = media.parse_range(header, length)
    except GatewayError as exc:
        _is_client_error(exc)
        return
    if rng is not None:
        a, b = rng
        assert 0 <= a <= b < length


_MEDIA = st.lists(st.sampled_from([
    "*/*", "multipart/related", 'type="image/jphc"', "type=application/octet-stream", "transfer-syntax=*",
    "transfer-syntax=1.2.840.10008.1.2.4.202", "transfer-syntax=1.2.840.10008.1.2.1", "q=0.5", "q=1", "q=0",
    "q=nan", "q=inf", "q=1e9", "q=\u0661", "image/jphc", "application/dicom", "application/dicom+json", ";", ",", '"',
    "image/*", 'type="application/dicom"']), max_size=30).map(lambda xs: "".join(x if x in ";,\"" else x + ";"
                                                                                  for x in xs))


@FUZZ
@given(header=st.one_of(st.none(), HOSTILE_TEXT, _MEDIA), n_frames=st.integers(1, 5))
@example(header="image/jphc;q=nan, */*;q=inf", n_frames=1)
def test_accept_and_negotiation(header: str | None, n_frames: int) -> None:
    try:
        ranges = media.parse_accept(header)
    except GatewayError as exc:
        _is_client_error(exc)
        return
    if not ranges:  # every range the header names is refused (q=0): nothing is acceptable (RFC 9110 §12.4.2)
        assert header and "q=0" in header, header
    assert len(ranges) <= (len(header) + 1 if header else 1)
    assert all(0 < r.q <= 1 for r in ranges)
    assert [r.q for r in ranges] == sorted((r.q for r in ranges), reverse=True)
    for negotiate in (lambda h: media.negotiate_frames(h, n_frames), media.negotiate_instances):
        try:
            negotiate(header)
        except GatewayError as exc:
            _is_client_error(exc)


_GLOB = st.text(alphabet="aAb*?", max_size=8)
_VALUE = st.text(alphabet="aAbB", max_size=10)


@FUZZ
@given(pattern=_GLOB, value=_VALUE, ci=st.booleans(), prefix=st.booleans())
def test_wildcard_matches_like_the_regex_it_replaced(pattern: str, value: str, ci: bool, prefix: bool) -> None:
    rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if prefix and not pattern.endswith("*"):
        rx += ".*"
    flags = re.DOTALL | (re.IGNORECASE if ci else 0)
    assert Wildcard(pattern, case_insensitive=ci, prefix=prefix).fullmatch(value) is bool(
        re.fullmatch(rx, value, flags))


@pytest.mark.parametrize("n", [64, 256])
def test_wildcard_worst_cases_stay_fast(n: int) -> None:
    import time

    patterns = ["*A" * 100 + "!", "*A?" * 80 + "*!", "?" * 255 + "*", "*" + "A?" * 120 + "*B", "*AAAAAAAAAB*" * 20]
    t0 = time.perf_counter()
    for p in patterns:
        for ci in (False, True):
            Wildcard(p, case_insensitive=ci).fullmatch("A" * n)
    assert time.perf_counter() - t0 < 0.2
