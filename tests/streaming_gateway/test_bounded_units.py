"""Issue 15 §3, the gateway's pure parts: linear-time wildcards, the frame-list parser, exact part sizes, a streamed
body whose memory stays bounded, the search budget, and the origin of RetrieveURLs."""

from __future__ import annotations

import asyncio
import re
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest

from services.streaming_gateway.domain import frame_response as fr
from services.streaming_gateway.domain import media, qido
from services.streaming_gateway.domain.errors import BadRequest, TooLarge
from services.streaming_gateway.domain.frames import Frame
from services.streaming_gateway.domain.search import Budget, Searcher
from services.streaming_gateway.domain.wildcard import Wildcard
from shared.forwarded import external_origin, parse_networks
from shared.htj2k import decode, encode
from shared.query.errors import QueryUnavailable

HOSTILE = "*A*A*A*A*A*A*A*A!"


def test_hostile_wildcard_takes_milliseconds() -> None:
    """The issue's pattern against a 64-character name took 60 s as a backtracking regex."""
    q = qido.parse_query("STUDY", [("PatientName", HOSTILE)])
    study = {"patient_name": "A" * 64}
    t0 = time.perf_counter()
    for _ in range(100):
        assert not qido.study_matches(q, study)
    per_match = (time.perf_counter() - t0) / 100
    assert per_match < 0.005, f"{per_match * 1000:.1f} ms per match"
    # The same shape with fuzzy matching and on a longer value, and a pattern of many "?" runs.
    fuzzy = qido.parse_query("STUDY", [("fuzzymatching", "true"), ("PatientName", "*A" * 100 + "!")])
    t0 = time.perf_counter()
    assert not qido.study_matches(fuzzy, {"patient_name": "A^" * 150})
    assert not Wildcard("?*" * 120 + "!").fullmatch("a" * 250)
    assert time.perf_counter() - t0 < 0.05


def test_wildcard_semantics_unchanged() -> None:
    # PatientName: case-insensitive; "?" is exactly one character; "*" any run, also empty.
    pn = lambda v: qido.parse_query("STUDY", [("PatientName", v)])  # noqa: E731
    doe = {"patient_name": "DOE^JANE"}
    for value, expected in [("doe^j*", True), ("DOE^JANE", True), ("doe^jane", True), ("?OE^JANE", True),
                            ("??OE^JANE", False), ("D*E", True), ("D*E*E", True), ("D*X*", False), ("*", True),
                            ("*^*", True), ("DOE", False), ("*JAN", False), ("*JAN?", True), ("DOE^JANE?", False),
                            ("d?e^*n?", True)]:
        assert qido.study_matches(pn(value), doe) is expected, value
    # Other VRs stay case-sensitive.
    desc = qido.parse_query("STUDY", [("StudyDescription", "ct*")])
    assert not qido.study_matches(desc, {"study_description": "CT chest"})
    assert qido.study_matches(qido.parse_query("STUDY", [("StudyDescription", "CT*")]), {"study_description": "CT chest"})
    # Fuzzy: a prefix of any name component.
    fuzzy = qido.parse_query("STUDY", [("fuzzymatching", "true"), ("PatientName", "jan")])
    assert qido.study_matches(fuzzy, doe) and not qido.study_matches(fuzzy, {"patient_name": "DOE^JOHN"})
    # Time: a prefix match.
    tm = qido.parse_query("STUDY", [("StudyTime", "1015")])
    assert qido.study_matches(tm, {"study_time": "101500"}) and not qido.study_matches(tm, {"study_time": "111500"})


@pytest.mark.parametrize("pattern", ["a*b?c", "*", "?", "**a**", "a?*?b", "*ab*ab*", "abc", "", "?*?", "*a?"])
def test_wildcard_agrees_with_a_regex_on_short_values(pattern: str) -> None:
    rx = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)
    alphabet = "abc"
    values = [""] + [a for a in alphabet] + [a + b for a in alphabet for b in alphabet]
    values += [a + b + c for a in alphabet for b in alphabet for c in alphabet]
    values += ["abcab", "aabbcc", "cabab", "ababab", "abcabc", "bacab"]
    w = Wildcard(pattern)
    for v in values:
        assert w.fullmatch(v) is bool(rx.fullmatch(v)), (pattern, v)


def test_frame_list_parser() -> None:
    assert fr.parse_frame_list("1", max_frames=5) == [1]
    assert fr.parse_frame_list(",".join(["1"] * 1000), max_frames=5) == [1]
    assert fr.parse_frame_list("3,1,3,2,1", max_frames=3) == [3, 1, 2]
    assert fr.parse_frame_list(" 2 ,4", max_frames=3) == [2, 4]
    for bad in ("0", "\u00b2", "1,\u0663", "", "1,,2", "-1", "+1", "1.0", "1e3", "x", "1_000", "1" * 19):
        with pytest.raises(BadRequest, match="frame number"):
            fr.parse_frame_list(bad, max_frames=5)
    with pytest.raises(BadRequest, match="more than 3 distinct"):
        fr.parse_frame_list("1,2,3,4", max_frames=3)
    with pytest.raises(BadRequest, match="entries"):
        fr.parse_frame_list(",".join(["1"] * (fr.MAX_ENTRIES + 1)), max_frames=3)
    assert fr.parse_frame_list(",".join(["2"] * fr.MAX_ENTRIES), max_frames=3) == [2]
    assert fr.parse_resolution(None) is None and fr.parse_resolution("0") == 0 and fr.parse_resolution("3") == 3
    for bad in ("\u00b2", "-1", "+1", "1.5", "", "99"):
        with pytest.raises(BadRequest, match="resolution"):
            fr.parse_resolution(bad)


@pytest.mark.parametrize("shape, dtype", [((512, 512), np.int16), ((64, 64), np.uint16), ((160, 200), np.uint16),
                                          ((97, 131), np.uint8), ((80, 120, 3), np.uint8), ((33, 300), np.int8)])
def test_decoded_size_is_exact_at_every_resolution(shape: tuple[int, ...], dtype: type) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    px = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    f = Frame.of(encode(px))
    for res in [None, *range(len(f.offsets))]:
        skip = fr.skip_levels(f, res)
        assert fr.decoded_size(f.data, skip) == decode(f.data, skip_levels=skip).nbytes, (shape, res)
        keep, size = fr.encoded_payload(f, res)
        assert len(fr.encoded_bytes(f, res)) == size
        if res is not None and res < len(f.offsets) - 1:  # a prefix closed by EOC: a complete codestream
            assert fr.encoded_bytes(f, res).endswith(fr.EOC) and keep == f.offsets[res]
            assert decode(fr.encoded_bytes(f, res), skip_levels=skip).shape == decode(f.data, skip_levels=skip).shape
    assert fr.decoded_size(b"not a codestream", 0) is None


def test_body_matches_the_buffered_multipart_and_ranges() -> None:
    datas = [bytes([k]) * (100 + 37 * k) for k in range(6)]

    def payload(d: bytes) -> fr.Payload:
        async def produce() -> bytes:
            await asyncio.sleep(0)
            return d

        return fr.Payload(len(d), produce)

    body = fr.Body.multipart([("application/octet-stream", payload(d)) for d in datas], "b-1")
    expected = media.multipart_body([("application/octet-stream", d) for d in datas], "b-1")
    assert body.length == len(expected)

    async def go() -> None:
        assert await body.read() == expected
        for a, b in [(0, 0), (5, 400), (len(expected) - 3, len(expected) - 1), (120, 121), (0, len(expected) - 1)]:
            assert b"".join([c async for c in body.stream(a, b, window=2)]) == expected[a : b + 1], (a, b)
        wrong = fr.Body.single(fr.Payload(5, payload(b"abc").produce))
        with pytest.raises(fr.PayloadSizeError):
            await wrong.read()

    asyncio.run(go())


def test_streamed_body_memory_is_bounded_by_its_window() -> None:
    """200 parts of 1 MiB (a 200 MiB body) stream with a peak of a few parts, and only overlapping parts are made."""
    made: list[int] = []
    part = 1 << 20

    def payload(k: int) -> fr.Payload:
        async def produce() -> bytes:
            made.append(k)
            await asyncio.sleep(0)
            return bytes([k % 251]) * part

        return fr.Payload(part, produce)

    body = fr.Body.multipart([("application/octet-stream", payload(k)) for k in range(200)], "b")

    async def drain(a: int, b: int) -> int:
        n = 0
        async for chunk in body.stream(a, b, window=2):
            n += len(chunk)
        return n

    tracemalloc.start()
    try:
        assert asyncio.run(drain(0, body.length - 1)) == body.length
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert body.length > 200 * part and peak < 6 * part, f"peak {peak / part:.1f} MiB"
    made.clear()
    assert asyncio.run(drain(part * 10, part * 12)) == 2 * part + 1
    assert 1 <= len(made) <= 4 and all(8 <= k <= 13 for k in made), made  # only the parts in the range were made


def test_search_budget() -> None:
    b = Budget(3, 60)
    b.spend(3)
    with pytest.raises(TooLarge, match="RADLOOP_QIDO_MAX_EXAMINED"):
        b.spend()
    late = Budget(1000, 0.01)
    time.sleep(0.02)
    with pytest.raises(TooLarge, match="RADLOOP_QIDO_DEADLINE_S") as e:
        late.spend()
    assert e.value.status == 413
    # A search stuck awaiting slow index pages ends at the deadline too: too broad (413) once it has examined
    # items, the index unavailable (503, retry later) when nothing came at all (narrowing it would not help).
    searcher = Searcher(None, max_results=10, max_examined=10, deadline_s=0.05)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    busy = searcher.budget()
    busy.spend(1)
    with pytest.raises(TooLarge, match="did not complete within"):
        asyncio.run(searcher._bounded(asyncio.sleep(5), busy))
    with pytest.raises(QueryUnavailable, match="did not answer within") as down:
        asyncio.run(searcher._bounded(asyncio.sleep(5), searcher.budget()))
    assert down.value.status == 503 and down.value.headers["Retry-After"] == "5"
    assert time.perf_counter() - t0 < 1
    with pytest.raises(BadRequest, match="maximum 10"):
        qido.parse_query("STUDY", [("offset", "11")], max_offset=10)
    assert qido.parse_query("STUDY", [("offset", "10")], max_offset=10).offset == 10


def test_external_origin() -> None:
    trusted = parse_networks("127.0.0.1, 10.0.0.0/8")
    base: dict[str, Any] = {"trusted": trusted, "public_base_url": "", "own_scheme": "http", "own_host": "gw:8082",
            "server": "127.0.0.1:8082", "forwarded": []}
    forged: dict[str, Any] = {"forwarded_host": ["evil.example"], "forwarded_proto": ["https"]}
    assert external_origin(peer="203.0.113.9", **forged, **base) == "http://gw:8082"
    assert external_origin(peer="203.0.113.9", **forged, **{**base, "public_base_url": "https://pacs.org/r"}) == \
        "https://pacs.org/r"
    assert external_origin(peer="10.1.2.3", **forged, **base) == "https://evil.example"  # a trusted proxy may
    # The last value is the trusted proxy's own (what the client sent comes first).
    assert external_origin(peer="127.0.0.1", forwarded_host=["client.example", "a.example, proxy.example"],
                           forwarded_proto=[], **base) == "http://proxy.example"
    # RFC 7239 Forwarded, last element; quoted values.
    assert external_origin(peer="127.0.0.1", forwarded_host=[], forwarded_proto=[],
                           **{**base, "forwarded": ['host=x.example, for=1.2.3.4;host="y.example:444";proto=https']}) \
        == "https://y.example:444"
    # Malformed hosts and schemes are never used; a malformed Host falls back to the socket address.
    for host in ("evil.example/x", "a b", "x@y", "", "[::1", "h:99999999"):
        got = external_origin(peer="127.0.0.1", forwarded_host=[host], forwarded_proto=["javascript"], **base)
        assert got == "http://gw:8082", (host, got)
    assert external_origin(peer=None, forwarded_host=[], forwarded_proto=[], **{**base, "own_host": "a/b"}) == \
        "http://127.0.0.1:8082"
    with pytest.raises(ValueError, match="not an IP"):
        parse_networks("127.0.0.1,localhost")


def test_forwarding_settings_are_validated() -> None:
    from pydantic import ValidationError

    from services.streaming_gateway.settings import GatewaySettings

    s = GatewaySettings(environment="local", trusted_proxies="127.0.0.1, 10.0.0.0/8", public_base_url="https://p.org/")
    assert s.public_base_url == "https://p.org" and len(s.trusted_proxy_networks) == 2
    for bad in ({"trusted_proxies": "localhost"}, {"public_base_url": "javascript:alert(1)"},
                {"public_base_url": "https://user@p.org"}, {"public_base_url": "https://p.org/?x=1"}):
        with pytest.raises(ValidationError):
            GatewaySettings(environment="local", **bad)
