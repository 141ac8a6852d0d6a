"""Property tests (issue 15 §4) of ingestion's parsers of hostile input: :func:`shared.dicom.parse.parse_safely` and
the STOW-RS multipart reader :func:`services.ingestion.api.multipart.iter_parts`.

The bar, for any input: a refusal of the documented kind (:class:`DicomRejection` with a DICOM failure reason and a
sentence; :class:`MultipartError` / :class:`BodyTooLargeError`) or a correct result, never another exception (which
would be a 500 or a crashed association); no hang (a per-example deadline); bounded memory (a traced peak per example
far below what an amplification would take).

The DICOM inputs are random bytes, random bytes behind a valid preamble and ``DICM`` prefix, and real files
(pydicom's test data and a generated CR) mutated the ways attackers do: bytes flipped, cut short, spliced, and element
lengths rewritten to huge or odd values (the classic way to make a parser allocate or loop). The multipart inputs are
random boundaries and bodies, split into random chunks as a network delivers them.
"""

from __future__ import annotations

import asyncio
import struct
import tracemalloc
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from functools import lru_cache
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from radloop.smoke import generate_instance
from services.ingestion.api.multipart import BodyTooLargeError, MultipartError, Part, iter_parts, parse_media_type
from shared.dicom.errors import DicomRejection
from shared.dicom.parse import ParsedInstance, ParseLimits, parse_safely
from shared.uids import validate_uid
from tests.ingestion.corpus import deflate_bomb, element_boundaries, real_file

pytestmark = pytest.mark.unit

T = TypeVar("T")
FUZZ = settings(max_examples=150, deadline=timedelta(seconds=2), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Small limits, so a bound that does not hold shows as a large allocation quickly (the defaults are 1 GiB).
LIMITS = ParseLimits(max_bytes=4 << 20, max_inflated_bytes=2 << 20, max_pixel_bytes=8 << 20, max_frames=64)
# Peak traced allocation allowed per parse: a few copies of the largest input plus pydicom's own objects. An element
# length or frame count taken at its word would allocate gigabytes.
MAX_PEAK_BYTES = 48 << 20


@lru_cache(maxsize=1)
def seeds() -> tuple[bytes, ...]:
    """Real Part 10 files of several shapes: CR (generated), CT, MR, RGB secondary capture, a deflated file."""
    names = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "image_dfl.dcm")
    return (generate_instance(32)[0], *(real_file(n) for n in names))


def _bounded(fn: Callable[[], T]) -> tuple[T | None, BaseException | None, int]:
    """Run ``fn`` under tracemalloc: (result, exception, peak traced bytes)."""
    tracemalloc.start()
    try:
        return fn(), None, tracemalloc.get_traced_memory()[1]
    except BaseException as exc:  # judged by the caller
        return None, exc, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _judge_parse(data: bytes) -> ParsedInstance | None:
    parsed, exc, peak = _bounded(lambda: parse_safely(data, LIMITS))
    assert peak < MAX_PEAK_BYTES, f"parsing {len(data)} bytes peaked at {peak} bytes"
    if exc is not None:
        assert isinstance(exc, DicomRejection), f"{type(exc).__name__}: {exc}"
        assert exc.failure_reason > 0 and len(str(exc.reason)) > 10 and exc.kind, exc
        return None
    assert parsed is not None
    # What passed is what storage keys are built from: valid UIDs, bounded frames.
    for uid in (parsed.study_uid, parsed.series_uid, parsed.sop_uid):
        validate_uid(uid)
    assert 1 <= parsed.number_of_frames <= LIMITS.max_frames
    return parsed


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_refused(data: bytes) -> None:
    assert _judge_parse(data) is None  # nothing random is a valid instance


@FUZZ
@given(body=st.binary(max_size=4096))
@example(body=b"\x02\x00\x00\x00UL\x04\x00\xff\xff\xff\xff")
def test_random_bytes_behind_the_dicm_prefix_are_refused(body: bytes) -> None:
    assert _judge_parse(b"\0" * 128 + b"DICM" + body) is None


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A real file, mutated 1-4 times: flipped bytes, a cut, a splice, or an element length rewritten."""
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "cut", "splice", "length", "length"]))
        if how == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] = draw(st.integers(0, 255))
        elif how == "cut" and len(data) > 1:
            data = data[: draw(st.integers(0, len(data) - 1))]
        elif how == "splice":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif how == "length":
            try:
                elements = element_boundaries(bytes(data))
            except struct.error:  # an earlier cut left a partial element header: no boundaries to rewrite
                elements = []
            if not elements:
                continue
            offset, _tag, vr = draw(st.sampled_from(elements))
            new = draw(st.sampled_from([0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF])
                       | st.integers(0, 0xFFFFFFFF))
            long_vr = vr in {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
            if long_vr and offset + 12 <= len(data):
                data[offset + 8:offset + 12] = struct.pack("<I", new)
            elif offset + 8 <= len(data):
                data[offset + 6:offset + 8] = struct.pack("<H", new & 0xFFFF)
    return bytes(data)


@settings(FUZZ, max_examples=250)
@given(data=mutated())
def test_mutated_real_files_are_refused_or_parsed_within_bounds(data: bytes) -> None:
    _judge_parse(data)


def test_the_unmutated_seeds_parse() -> None:
    """The seeds are valid, so the mutations start from files the parser accepts (a refusal is the mutation's)."""
    for data in seeds():
        assert _judge_parse(data) is not None


@settings(FUZZ, max_examples=10)
@given(inflated=st.integers(LIMITS.max_inflated_bytes + 1, 4 * LIMITS.max_inflated_bytes))
def test_deflate_bombs_are_refused_within_bounds(inflated: int) -> None:
    bomb = deflate_bomb(inflated)
    assert len(bomb) < inflated // 100  # it is a bomb: tiny on the wire
    assert _judge_parse(bomb) is None


# -- the STOW-RS multipart reader -------------------------------------------------------------------------------------

BOUNDARY_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?"
BOUNDARIES = st.text(BOUNDARY_CHARS, min_size=1, max_size=70)
MAX_BODY, MAX_PART = 64 << 10, 16 << 10


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    pos = 0
    for c in sorted(set(cuts)):
        if pos < c < len(data):
            yield data[pos:c]
            pos = c
    yield data[pos:]


def _read(data: bytes, boundary: str, cuts: list[int]) -> tuple[list[Part] | None, BaseException | None, int]:
    async def collect() -> list[Part]:
        return [p async for p in iter_parts(_chunks(data, cuts), boundary, max_body=MAX_BODY, max_part=MAX_PART)]

    return _bounded(lambda: asyncio.run(collect()))


def _encode(boundary: str, parts: list[tuple[dict[str, str], bytes]], preamble: bytes, epilogue: bytes) -> bytes:
    out = bytearray(preamble)
    for headers, body in parts:
        out += f"--{boundary}\r\n".encode()
        out += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode()
        out += b"\r\n" + body + b"\r\n"
    out += f"--{boundary}--".encode() + epilogue
    return bytes(out)


@FUZZ
@given(boundary=BOUNDARIES,
       parts=st.lists(st.tuples(st.dictionaries(st.sampled_from(["content-type", "content-location", "x-extra"]),
                                                st.text("abcdefghij/;=\"- ", max_size=40), max_size=2),
                                st.binary(max_size=600)), max_size=8),
       preamble=st.binary(max_size=50).filter(lambda b: b"--" not in b),
       epilogue=st.binary(max_size=50), cuts=st.lists(st.integers(0, 6000), max_size=12))
def test_well_formed_bodies_round_trip_whatever_the_chunking(boundary: str, parts: list[tuple[dict[str, str], bytes]],
                                                            preamble: bytes, epilogue: bytes, cuts: list[int]) -> None:
    delim = f"\r\n--{boundary}".encode()
    # A body holding its own delimiter is not well formed (the sender chooses a boundary absent from the bodies).
    if any(delim in b"\r\n" + body + b"\r\n" for _, body in parts) or not parts:
        return
    data = _encode(boundary, [(h, b) for h, b in parts], preamble, epilogue)
    got, exc, peak = _read(data, boundary, cuts)
    assert exc is None, f"{type(exc).__name__}: {exc}"
    assert got is not None
    assert [p.body for p in got] == [b for _, b in parts]
    assert [p.headers for p in got] == [{k.lower(): v.strip() for k, v in h.items()} for h, _ in parts]
    assert peak < 8 * len(data) + (2 << 20)


@FUZZ
@given(boundary=BOUNDARIES, data=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=8),
       stutter=st.sampled_from([b"", b"--", b"\r\n--", b"\r\n\r\n"]))
def test_random_bodies_are_refused_or_split_within_bounds(boundary: str, data: bytes, cuts: list[int],
                                                          stutter: bytes) -> None:
    # Sprinkle the delimiter into random bytes, so the reader's framing paths (not only "no boundary") are reached.
    delim = stutter + f"--{boundary}".encode()
    body = delim + data.replace(b"\x00", delim) + (delim + b"--" if data[:1] == b"\x01" else b"")
    got, exc, peak = _read(body, boundary, cuts)
    if exc is not None:
        assert isinstance(exc, MultipartError | BodyTooLargeError), f"{type(exc).__name__}: {exc}"
        assert str(exc)
    else:
        assert got is not None
        # every part is a distinct slice of the body: their count is bounded by what the body can frame
        assert len(got) <= len(body) // (len(boundary) + 4) + 1
        assert sum(len(p.body) for p in got) <= len(body)
    assert peak < 8 * len(body) + (2 << 20)


@settings(FUZZ, max_examples=40)
@given(boundary=BOUNDARIES, part=st.integers(MAX_PART + 8193, 2 * MAX_PART + 9000), chunk=st.integers(1000, 9000))
def test_an_oversized_part_is_refused_while_streaming(boundary: str, part: int, chunk: int) -> None:
    """A part larger than the cap is refused before the reader holds much more than the cap (no whole-body buffer)."""
    data = f"--{boundary}\r\n\r\n".encode() + b"x" * part + f"\r\n--{boundary}--".encode()
    got, exc, peak = _read(data, boundary, list(range(chunk, len(data), chunk)))
    assert isinstance(exc, BodyTooLargeError), (got and len(got), exc)
    assert peak < 8 * (MAX_PART + 8192 + chunk) + (1 << 20)


@settings(FUZZ, max_examples=40)
@given(extra=st.integers(1, 5000), chunk=st.integers(512, 8192))
def test_a_body_over_the_cap_is_refused(extra: int, chunk: int) -> None:
    data = b"--b\r\n\r\nx\r\n--b--" + b"e" * (MAX_BODY + extra)  # the epilogue still counts against the cap
    _, exc, _ = _read(data, "b", list(range(chunk, len(data), chunk)))
    assert isinstance(exc, BodyTooLargeError)


@FUZZ
@given(value=st.text(max_size=300))
@example(value='multipart/related; type="application/dicom"; boundary="a;b"')
def test_media_type_parser_never_fails(value: str) -> None:
    mtype, params = parse_media_type(value)
    assert mtype == mtype.lower() and all(k == k.lower() for k in params)
    assert len(params) <= value.count(";")
