"""Progressive retrieval (Range, ?resolution=k) and caching (ETag/304, byte budget, series prefetch)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import imagecodecs
import numpy as np
import pytest
from pydicom.uid import generate_uid

from shared.aws import AwsClients
from shared.htj2k import decode, decode_prefix
from tests.streaming_gateway.conftest import Corpus, auth
from tests.streaming_gateway.store import GatewayProcess, load_testdata, make_dicom, run_gateway, store_instance
from tests.streaming_gateway.test_wado import frame_url, located_parts, parts


def test_range_prefix_decodes_lower_resolution(corpus: Corpus, gateway: GatewayProcess) -> None:
    sop = corpus.ct_sops[1]
    url = frame_url(gateway, corpus.ct_study, corpus.ct_series, sop, "1")
    full = corpus.ct_pixels[1]
    offsets = corpus.offsets[sop][0]
    # Cornerstone3D's first fetch: the first 64,000 bytes of the single-part codestream.
    r = httpx.get(url, headers={**auth(corpus), "Accept": "image/jphc", "Range": "bytes=0-63999"})
    assert r.status_code == 206 and len(r.content) == 64000
    assert r.headers["content-range"] == f"bytes 0-63999/{offsets[-1]}"
    assert r.headers["x-resolution-offsets"] == ",".join(map(str, offsets))
    levels = len(offsets) - 1
    best = max(k for k, o in enumerate(offsets) if o <= 64000)  # the resolution the prefix fully holds
    img = decode_prefix(r.content[: offsets[best]], total_levels=levels, resolution=best)
    assert np.array_equal(img, decode(corpus_full_codestream(corpus, gateway, sop), skip_levels=levels - best))
    assert img.shape == (512 >> (levels - best),) * 2
    partial = np.asarray(imagecodecs.htj2k_decode(r.content, resilient=True))  # any cut decodes, tolerantly
    assert partial.ndim == 2
    # The same Range over the multipart form (Cornerstone3D's request) is a byte range of that body.
    mp = httpx.get(url, headers={**auth(corpus), "Accept": 'multipart/related; type="image/jphc"',
                                 "Range": "bytes=0-63999"})
    assert mp.status_code == 206 and mp.content.startswith(b"--radloop-") and len(mp.content) == 64000
    # ?resolution=k: exactly the prefix of resolution k (plus EOC), which decodes to that resolution.
    for k in range(levels + 1):
        rk = httpx.get(url, params={"resolution": k}, headers={**auth(corpus), "Accept": "image/jphc"})
        body = rk.content
        expected_len = offsets[k] + (2 if k < levels else 0)
        assert len(body) == expected_len, k
        img = decode(body, skip_levels=levels - k)
        assert img.shape == ((512 + (1 << (levels - k)) - 1) >> (levels - k),) * 2
        if k == levels:
            assert np.array_equal(img, full)
    # Decoded pixels at a reduced resolution.
    r = httpx.get(url, params={"resolution": 0}, headers={**auth(corpus), "Accept": "application/octet-stream"})
    side = 512 >> levels
    assert len(r.content) == side * side * 2
    # Errors: a resolution that does not exist, a range past the end.
    assert httpx.get(url, params={"resolution": levels + 1}, headers=auth(corpus)).status_code == 400
    assert httpx.get(url, params={"resolution": "x"}, headers=auth(corpus)).status_code == 400
    r = httpx.get(url, headers={**auth(corpus), "Accept": "image/jphc", "Range": "bytes=999999-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{offsets[-1]}"


def corpus_full_codestream(corpus: Corpus, gateway: GatewayProcess, sop: str) -> bytes:
    r = httpx.get(frame_url(gateway, corpus.ct_study, corpus.ct_series, sop, "1"),
                  headers={**auth(corpus), "Accept": "image/jphc"})
    return r.content


def test_etag_and_304(corpus: Corpus, gateway: GatewayProcess) -> None:
    url = frame_url(gateway, corpus.ct_study, corpus.ct_series, corpus.ct_sops[2], "1")
    h = {**auth(corpus), "Accept": 'multipart/related; type="image/jphc"'}
    r = httpx.get(url, headers=h)
    etag = r.headers["etag"]
    assert etag.startswith('"') and not etag.startswith('W/')
    assert "immutable" in r.headers["cache-control"] and "private" in r.headers["cache-control"]
    again = httpx.get(url, headers={**h, "If-None-Match": etag})
    assert again.status_code == 304 and not again.content and again.headers["etag"] == etag
    # Another representation has another validator, and a bad validator gets the body.
    other = httpx.get(url, headers={**auth(corpus), "Accept": "image/jphc"})
    assert other.headers["etag"] != etag
    assert httpx.get(url, headers={**h, "If-None-Match": '"nope"'}).status_code == 200
    assert r.content == httpx.get(url, headers=h).content  # deterministic bytes (so ranges are consistent)


def stats(gw: GatewayProcess, corpus: Corpus) -> dict:
    return httpx.get(f"{gw.url}/streaming/stats", headers=auth(corpus)).json()


def test_series_prefetch_serves_from_cache(corpus: Corpus, gateway: GatewayProcess) -> None:
    ct = load_testdata("CT_small.dcm")
    study, series = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(5)]

    async def store() -> None:
        async with AwsClients(corpus.settings) as c:
            for k, sop in enumerate(sops):
                await store_instance(c, make_dicom(ct, study=study, series=series, sop=sop,
                                                   patient_name="ROE^RICHARD", patient_id="PID-P",
                                                   study_date="20220202", accession="ACC-P", modality="CT",
                                                   instance_number=k + 1, series_number=2))

    asyncio.run(store())
    h = {**auth(corpus), "Accept": 'multipart/related; type="image/jphc"'}
    first = httpx.get(frame_url(gateway, study, series, sops[0], "1"), headers=h)
    assert first.status_code == 200
    deadline = time.monotonic() + 10
    while stats(gateway, corpus)["prefetch"]["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.05)
    before = stats(gateway, corpus)["s3_reads"]
    for sop in sops[1:]:
        r = httpx.get(frame_url(gateway, study, series, sop, "1"), headers=h)
        assert r.status_code == 200 and r.headers["x-cache"] == "hit"
    assert stats(gateway, corpus)["s3_reads"] == before


@pytest.fixture(scope="module")
def small_cache_gateway(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(corpus.settings, tmp_path_factory.mktemp("gw2"), RADLOOP_FRAME_CACHE_BYTES="300000") as gp:
        yield gp


def test_cache_stays_within_budget(corpus: Corpus, small_cache_gateway: GatewayProcess) -> None:
    gw = small_cache_gateway
    h = {**auth(corpus), "Accept": 'multipart/related; type="image/jphc"'}
    scanned = 0
    for _ in range(2):  # two passes over ~700 KB of frames through a 300 KB cache
        for sop in corpus.ct_sops:
            r = httpx.get(frame_url(gw, corpus.ct_study, corpus.ct_series, sop, "1"), headers=h)
            assert r.status_code == 200
            scanned += len(parts(r)[0][1])
    s = stats(gw, corpus)["cache"]
    assert scanned > 2 * s["budget_bytes"]
    assert s["budget_bytes"] == 300000
    assert 0 < s["bytes"] <= 300000 and s["max_bytes_seen"] <= 300000
    assert s["evictions"] > 0 and s["frames"] <= 2


def test_series_pixel_data_sends_every_frame_prefix_in_one_response(corpus: Corpus, gateway: GatewayProcess) -> None:
    """The Series Pixel Data resource (PS3.18 §10.4.1.1.6): every frame of the series, in instance order, each part
    named by its frame URL; with ?resolution=k, each frame's level-k prefix, byte for byte what the frame URL sends
    (the viewer's whole-series low-resolution pass in one request)."""
    base = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}"
    h = {**auth(corpus), "Accept": 'multipart/related; type="image/jphc"'}
    r = httpx.get(f"{base}/pixeldata", params={"resolution": 0}, headers=h)
    assert r.status_code == 200, r.text
    got = located_parts(r)
    path = base.removeprefix(gateway.url)
    assert [loc for _, loc, _ in got] == [f"{path}/instances/{sop}/frames/1" for sop in corpus.ct_sops]
    for (ctype, _, body), sop in zip(got, corpus.ct_sops, strict=True):
        one = httpx.get(frame_url(gateway, corpus.ct_study, corpus.ct_series, sop, "1"), params={"resolution": 0},
                        headers={**auth(corpus), "Accept": "image/jphc"})
        assert ctype.startswith("image/jphc") and body == one.content
        assert len(body) == corpus.offsets[sop][0][0] + 2  # the level-0 prefix and an EOC marker
    assert len(r.headers["x-resolution-offsets"].split(";")) == len(corpus.ct_sops)
    # Without ?resolution: the whole codestreams, which decode to the stored pixels.
    full = located_parts(httpx.get(f"{base}/pixeldata", headers=h))
    assert [np.array_equal(decode(b), px) for (_, _, b), px in zip(full, corpus.ct_pixels, strict=True)] == [True] * 6
    # A multi-frame instance: one part per frame, in frame order.
    mr = located_parts(httpx.get(
        f"{gateway.url}/dicomweb/studies/{corpus.mr_study}/series/{corpus.mr_series}/pixeldata",
        headers={**auth(corpus), "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}))
    assert [loc.rsplit("/", 1)[1] for _, loc, _ in mr] == [str(k) for k in range(1, 11)]
    assert np.array_equal(np.frombuffer(mr[2][2], "<u2").reshape(64, 64), corpus.mr_frames[2])
    # Errors: a single-part type (406), an unknown series (404), a bad resolution (400), no token (401).
    assert httpx.get(f"{base}/pixeldata", headers={**auth(corpus), "Accept": "image/jphc"}).status_code == 406
    missing = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{generate_uid()}/pixeldata"
    assert httpx.get(missing, headers=h).status_code == 404
    assert httpx.get(f"{base}/pixeldata", params={"resolution": "x"}, headers=h).status_code == 400
    assert httpx.get(f"{base}/pixeldata", headers={"Accept": h["Accept"]}).status_code == 401
