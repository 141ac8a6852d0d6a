"""Issue 15 §3, the gateway's part, against real gateway processes over HTTP: bounded WADO frame responses, ASCII-only
numbers, QIDO offset cap and search budget, and RetrieveURLs that only a trusted proxy can steer.

``limited`` is a second gateway process on the same deployment with small limits, so each limit is reached with the
small test corpus, and with ``RADLOOP_TRUSTED_PROXIES`` not naming loopback, so the test client is an untrusted peer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from radloop.local.proxy import create_proxy
from tests.streaming_gateway.conftest import Corpus, auth
from tests.streaming_gateway.store import GatewayProcess, run_gateway
from tests.streaming_gateway.test_wado import frame_url, located_parts, parts

OCTET = "multipart/related; type=application/octet-stream; transfer-syntax=*"
JPHC = 'multipart/related; type="image/jphc"'
LIMITS = {
    "RADLOOP_WADO_MAX_FRAMES": "10",
    "RADLOOP_WADO_MAX_RESPONSE_BYTES": "66000",  # the CR's decoded frame (64,000 bytes) fits, the MR's 10 do not
    "RADLOOP_WADO_BUFFER_BYTES": "4096",  # anything larger streams part by part
    "RADLOOP_QIDO_MAX_OFFSET": "5",
    "RADLOOP_QIDO_MAX_EXAMINED": "2",
    "RADLOOP_TRUSTED_PROXIES": "10.9.9.9/32",  # not loopback: the test client is an untrusted peer here
}


@pytest.fixture(scope="module")
def limited(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(corpus.settings, tmp_path_factory.mktemp("gw-limited"), RADLOOP_PREFETCH_ENABLED="false",
                     **LIMITS) as gp:
        yield gp


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def test_repeated_frame_list_is_one_part_and_memory_stays_bounded(corpus: Corpus, limited: GatewayProcess) -> None:
    """``frames/1,1,1,…`` (1,000 times) on the CR: one part, and the gateway's peak memory does not grow by the
    64 MB the old code built (1,000 copies of a 64,000-byte decoded frame)."""
    url = frame_url(limited, corpus.cr_study, corpus.cr_series, corpus.cr_sop, "1")
    one = httpx.get(url, headers={**auth(corpus), "Accept": OCTET}, timeout=30)  # warm: decoder, caches, code paths
    assert one.status_code == 200, one.text
    before = _peak_rss(limited.proc.pid)
    r = httpx.get(frame_url(limited, corpus.cr_study, corpus.cr_series, corpus.cr_sop, ",".join(["1"] * 1000)),
                  headers={**auth(corpus), "Accept": OCTET}, timeout=60)
    grown = _peak_rss(limited.proc.pid) - before
    assert r.status_code == 200, r.text
    assert grown < 24 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.1f} MiB for one 64 KB frame"
    ((ctype, raw),) = parts(r)  # de-duplicated: exactly one part
    assert np.array_equal(np.frombuffer(raw, "<u2").reshape(160, 200), corpus.cr_pixels)
    assert r.content == one.content  # the same representation as asking for frame 1 once (same ETag, same bytes)
    # Repeats keep the first occurrence's order.
    r = httpx.get(frame_url(limited, corpus.mr_study, corpus.mr_series, corpus.mr_sop, "3,1,3,1,3"),
                  headers={**auth(corpus), "Accept": OCTET})
    got = [np.frombuffer(p, "<u2").reshape(64, 64) for _, p in parts(r)]
    assert len(got) == 2 and np.array_equal(got[0], corpus.mr_frames[2]) and np.array_equal(got[1], corpus.mr_frames[0])


def test_frame_count_and_response_bytes_are_capped(corpus: Corpus, limited: GatewayProcess) -> None:
    mr = (corpus.mr_study, corpus.mr_series, corpus.mr_sop)
    all_frames = ",".join(str(k) for k in range(1, 11))
    r = httpx.get(frame_url(limited, *mr, all_frames + ",11"), headers={**auth(corpus), "Accept": OCTET})
    assert r.status_code == 400 and "more than 10 distinct frames" in r.json()["detail"], r.text
    # 10 decoded 64x64x2 frames are 81,920 bytes > 66,000: 413 before anything is sent, with the setting named.
    r = httpx.get(frame_url(limited, *mr, all_frames), headers={**auth(corpus), "Accept": OCTET})
    assert r.status_code == 413, r.text
    assert "RADLOOP_WADO_MAX_RESPONSE_BYTES" in r.json()["detail"] and "fewer frames" in r.json()["detail"]
    # A lower resolution of the same frames fits.
    r = httpx.get(frame_url(limited, *mr, all_frames), params={"resolution": "0"},
                  headers={**auth(corpus), "Accept": OCTET})
    assert r.status_code == 200 and len(parts(r)) == 10


def test_streamed_frames_are_byte_identical_and_honour_ranges(corpus: Corpus, limited: GatewayProcess,
                                                             gateway: GatewayProcess) -> None:
    """Above ``wado_buffer_bytes`` the body streams part by part; it is the very body the buffered path builds."""
    mr = (corpus.mr_study, corpus.mr_series, corpus.mr_sop)
    h = {**auth(corpus), "Accept": JPHC}
    streamed = httpx.get(frame_url(limited, *mr, "5,1,4,2,3"), headers=h)
    buffered = httpx.get(frame_url(gateway, *mr, "5,1,4,2,3"), headers=h)
    assert streamed.status_code == buffered.status_code == 200
    assert len(streamed.content) > 4096 and "total;dur" not in streamed.headers["server-timing"]  # it streamed
    assert "total;dur" in buffered.headers["server-timing"]
    assert streamed.content == buffered.content and streamed.headers["etag"] == buffered.headers["etag"]
    assert int(streamed.headers["content-length"]) == len(streamed.content)
    full = streamed.content
    for spec, (a, b) in (("bytes=100-9000", (100, 9000)), ("bytes=-700", (len(full) - 700, len(full) - 1)),
                         ("bytes=5000-", (5000, len(full) - 1))):
        r = httpx.get(frame_url(limited, *mr, "5,1,4,2,3"), headers={**h, "Range": spec})
        assert r.status_code == 206, (spec, r.text)
        assert r.content == full[a : b + 1] and r.headers["content-range"] == f"bytes {a}-{b}/{len(full)}", spec


@pytest.mark.parametrize("path, params, headers, word", [
    ("frames/\u00b2", {}, {}, "frame number"),
    ("frames/1,\u0663", {}, {}, "frame number"),  # ARABIC-INDIC DIGIT THREE: int() accepts it, the URL rule does not
    ("frames/1", {"resolution": "\u00b2"}, {}, "resolution"),
    ("frames/1", {"resolution": "+1"}, {}, "resolution"),
    # Header values travel as latin-1: "²" is byte B2; "1_0" is what int() reads as 10.
    ("frames/1", {}, {"Range": "bytes=\u00b2-".encode("latin-1")}, "Range"),
    ("frames/1", {}, {"Range": b"bytes=0-1_0"}, "Range"),
    ("frames/1", {}, {"Range": b"bytes=+5-9"}, "Range"),
    ("rendered", {"viewport": "\u00b2,64"}, {}, "viewport"),
    ("rendered", {"quality": "\u0669\u0660"}, {}, "quality"),
    ("frames/\u00b2/rendered", {}, {}, "frame number"),
])
def test_numbers_in_urls_are_ascii_digits_only(corpus: Corpus, gateway: GatewayProcess, path: str,
                                               params: dict[str, str], headers: dict[str, str | bytes], word: str) -> None:
    base = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/{corpus.ct_sops[0]}"
    sent: Any = {**auth(corpus), **headers}  # str and (latin-1) bytes values
    r = httpx.get(f"{base}/{path}", params=params, headers=sent)
    assert r.status_code == 400, (path, params, headers, r.status_code, r.text)
    assert word in r.json()["detail"]


@pytest.mark.parametrize("params, word", [({"limit": "\u0663"}, "limit"), ({"offset": "\u00b2"}, "offset"),
                                          ({"limit": "1" * 5000}, "limit"), ({"SeriesNumber": "\u0661"}, "SeriesNumber")])
def test_qido_numbers_are_ascii_digits_only(corpus: Corpus, gateway: GatewayProcess, params: dict[str, str],
                                            word: str) -> None:
    r = httpx.get(f"{gateway.url}/dicomweb/series", params=params, headers=auth(corpus))
    assert r.status_code == 400 and word in r.json()["detail"], (params, r.text)


def test_qido_offset_cap_and_search_budget(corpus: Corpus, limited: GatewayProcess) -> None:
    h = auth(corpus)
    r = httpx.get(f"{limited.url}/dicomweb/studies", params={"StudyInstanceUID": corpus.ct_study, "offset": "5"},
                  headers=h)
    assert r.status_code == 200 and r.json() == []
    r = httpx.get(f"{limited.url}/dicomweb/studies", params={"StudyInstanceUID": corpus.ct_study, "offset": "6"},
                  headers=h)
    assert r.status_code == 400 and "offset" in r.json()["detail"] and "maximum 5" in r.json()["detail"]
    # No key uses an index: every study is examined; more than 2 is over this gateway's budget.
    r = httpx.get(f"{limited.url}/dicomweb/studies", params={"PatientName": "*NO*SUCH*NAME*"}, headers=h)
    assert r.status_code == 413, r.text
    assert "RADLOOP_QIDO_MAX_EXAMINED" in r.json()["detail"] and "narrow" in r.json()["detail"]
    # A search by UID examines one item and is answered.
    r = httpx.get(f"{limited.url}/dicomweb/studies", params={"StudyInstanceUID": corpus.ct_study}, headers=h)
    assert r.status_code == 200 and len(r.json()) == 1


def _retrieve_url(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    (study,) = r.json()
    return str(study["00081190"]["Value"][0])


def test_forwarded_headers_only_from_trusted_proxies(corpus: Corpus, limited: GatewayProcess,
                                                     gateway: GatewayProcess) -> None:
    q = {"StudyInstanceUID": corpus.ct_study}
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
              "Forwarded": 'for=1.2.3.4;host="evil2.example";proto=https'}
    # An untrusted peer (the limited gateway trusts only 10.9.9.9): its own Host, never the forged one.
    got = _retrieve_url(httpx.get(f"{limited.url}/dicomweb/studies", params=q, headers={**auth(corpus), **forged}))
    assert got == f"http://127.0.0.1:{limited.port}/dicomweb/studies/{corpus.ct_study}", got
    # The trusted proxy (loopback on the default gateway) sets the host and scheme...
    got = _retrieve_url(httpx.get(f"{gateway.url}/dicomweb/studies", params=q, headers={
        **auth(corpus), "X-Forwarded-Host": "pacs.example.org:8443", "X-Forwarded-Proto": "https"}))
    assert got == f"https://pacs.example.org:8443/dicomweb/studies/{corpus.ct_study}"
    # ...but not a malformed host (it would end the URL's authority).
    got = _retrieve_url(httpx.get(f"{gateway.url}/dicomweb/studies", params=q, headers={
        **auth(corpus), "X-Forwarded-Host": "evil.example/x?y=", "X-Forwarded-Proto": "javascript"}))
    assert got.startswith(f"http://127.0.0.1:{gateway.port}/dicomweb/"), got

    # Through the entry proxy a client's own X-Forwarded-Host travels along; the value the proxy appended wins.
    async def through_proxy() -> str:
        proxy = create_proxy({"streaming_gateway": gateway.port})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://entry.test") as c:
            r = await c.get("/dicomweb/studies", params=q, headers={**auth(corpus), "X-Forwarded-Host": "evil.example"})
            return _retrieve_url(r)

    assert asyncio.run(through_proxy()) == f"http://entry.test/dicomweb/studies/{corpus.ct_study}"


def test_series_pixel_data_is_capped_like_frames(corpus: Corpus, limited: GatewayProcess,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    """A whole series in one response is bounded by the same two limits as a frames request: the frame count and the
    response bytes, each with the setting named in the reason."""
    with run_gateway(corpus.settings, tmp_path_factory.mktemp("gw-five"), RADLOOP_PREFETCH_ENABLED="false",
                     RADLOOP_WADO_MAX_FRAMES="5") as five:
        mr = f"{five.url}/dicomweb/studies/{corpus.mr_study}/series/{corpus.mr_series}/pixeldata"
        r = httpx.get(mr, params={"resolution": "0"}, headers={**auth(corpus), "Accept": OCTET})
        assert r.status_code == 413 and "has 10 frames" in r.json()["detail"], r.text
        assert "RADLOOP_WADO_MAX_FRAMES" in r.json()["detail"] and "?offset=" in r.json()["detail"]
        # The answer says what fits, so a client can ask again in parts (the viewer does).
        assert r.headers["X-Max-Frames"] == "5" and r.headers["X-Series-Frames"] == "10"
        chunks = [httpx.get(mr, params={"resolution": "0", **q}, headers={**auth(corpus), "Accept": JPHC})
                  for q in ({"offset": "0", "limit": "5"}, {"offset": "5", "limit": "5"}, {"offset": "8"})]
        assert [c.status_code for c in chunks] == [200, 200, 200], [c.text[:200] for c in chunks]
        assert all(c.headers["X-Series-Frames"] == "10" for c in chunks)
        got = [located_parts(c) for c in chunks]
        assert [len(g) for g in got] == [5, 5, 2]
        assert httpx.get(mr, params={"offset": "0", "limit": "6"}, headers={**auth(corpus), "Accept": JPHC}
                         ).status_code == 413
        for q, status in (({"offset": "10"}, 404), ({"limit": "0"}, 400), ({"offset": "-1"}, 400),
                          ({"limit": "x"}, 400), ({"offset": "1e3"}, 400), ({"limit": "9" * 20}, 400)):
            r = httpx.get(mr, params=q, headers={**auth(corpus), "Accept": JPHC})
            assert r.status_code == status and r.json()["detail"], (q, r.status_code, r.text)
    url = f"{limited.url}/dicomweb/studies/{corpus.mr_study}/series/{corpus.mr_series}/pixeldata"
    r = httpx.get(url, headers={**auth(corpus), "Accept": OCTET})
    assert r.status_code == 413, r.text
    assert "RADLOOP_WADO_MAX_RESPONSE_BYTES" in r.json()["detail"]
    r = httpx.get(url, params={"resolution": "0"}, headers={**auth(corpus), "Accept": OCTET})
    assert r.status_code == 200 and len(parts(r)) == 10
    # The parts asked for in pieces are the whole series' parts, in its order, byte for byte.
    whole = located_parts(httpx.get(url, params={"resolution": "0"}, headers={**auth(corpus), "Accept": JPHC}))
    assert got[0] + got[1] == whole and got[2] == whole[8:]
    assert len({loc for _, loc, _ in whole}) == 10
    ct = f"{limited.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/pixeldata"
    assert httpx.get(ct, params={"resolution": "0"}, headers={**auth(corpus), "Accept": JPHC}).status_code == 200
