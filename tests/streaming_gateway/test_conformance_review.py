"""PS3.18 conformance defects found by a review (session 22), each through the real gateway process on the moto
server: all-series and all-instances searches carry the study's attributes (§10.6.3.3.2, .3.3); the ``accept``
query parameter is honoured (§8.3.3.1); a rendered viewport's source region crops and flips (§8.3.5.1.3); rendered
answers vary by Accept; an invalid q-value is ignored, not a 400 (§8.7.7); HEAD is answered (RFC 9110 §9.1)."""

from __future__ import annotations

import io

import httpx
import numpy as np
from PIL import Image

from tests.streaming_gateway.conftest import Corpus, auth
from tests.streaming_gateway.store import GatewayProcess

PATIENT_NAME, PATIENT_ID, STUDY_DATE, ACCESSION = "00100010", "00100020", "00080020", "00080050"


def _get(gw: GatewayProcess, corpus: Corpus, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{gw.url}/dicomweb{path}", headers={**auth(corpus), **headers}, timeout=30)


def test_searches_of_all_series_and_all_instances_carry_the_study_attributes(corpus: Corpus,
                                                                              gateway: GatewayProcess) -> None:
    (se,) = _get(gateway, corpus, f"/series?SeriesInstanceUID={corpus.ct_series}").json()
    assert se[PATIENT_NAME]["Value"] == [{"Alphabetic": "DOE^JANE"}] and se[PATIENT_ID]["Value"] == ["PID-A"]
    assert se[STUDY_DATE]["Value"] == ["20240115"] and se[ACCESSION]["Value"] == ["ACC-1"]
    (it,) = _get(gateway, corpus, f"/instances?SOPInstanceUID={corpus.ct_sops[0]}").json()
    assert it[PATIENT_ID]["Value"] == ["PID-A"] and it[STUDY_DATE]["Value"] == ["20240115"]
    # Under /studies/{study} the study is known to the client: only what it matched on or asked for.
    (under,) = _get(gateway, corpus, f"/studies/{corpus.ct_study}/series").json()
    assert PATIENT_NAME not in under and PATIENT_ID not in under
    insts = _get(gateway, corpus, f"/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances").json()
    assert len(insts) == len(corpus.ct_sops) and all(PATIENT_ID not in i for i in insts)
    # The same series' instances searched from the top carry them (the cached answer is per form of search).
    top = _get(gateway, corpus, f"/instances?StudyInstanceUID={corpus.ct_study}"
                                f"&SeriesInstanceUID={corpus.ct_series}").json()
    assert len(top) == len(corpus.ct_sops) and all(i[PATIENT_ID]["Value"] == ["PID-A"] for i in top)


def test_the_accept_query_parameter_chooses_the_media_type(corpus: Corpus, gateway: GatewayProcess) -> None:
    base = f"/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/{corpus.ct_sops[0]}"
    png = _get(gateway, corpus, f"{base}/rendered?accept=image/png",
               Accept="image/avif,image/webp,image/*,*/*;q=0.8")  # what a browser sends for a link
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    frames = _get(gateway, corpus, f'{base}/frames/1?accept=multipart/related;type="image/jphc"', Accept="*/*")
    assert frames.status_code == 200 and 'type="image/jphc"' in frames.headers["content-type"]
    search = _get(gateway, corpus, f"/studies?StudyInstanceUID={corpus.ct_study}&accept=application/dicom%2Bjson"
                                   "&charset=utf-8")
    assert search.status_code == 200 and "warning" not in search.headers and len(search.json()) == 1
    refused = _get(gateway, corpus, f"/studies?StudyInstanceUID={corpus.ct_study}&accept=text/html")
    assert refused.status_code == 406


def test_a_viewport_source_region_crops_and_flips(corpus: Corpus, gateway: GatewayProcess) -> None:
    base = f"/studies/{corpus.cr_study}/series/{corpus.cr_series}/instances/{corpus.cr_sop}/rendered"
    png = {"Accept": "image/png"}

    def image(viewport: str) -> np.ndarray:
        r = _get(gateway, corpus, f"{base}?viewport={viewport}&window=2000,4000", **png)
        assert r.status_code == 200, r.text
        assert "Accept" in r.headers.get("vary", "")  # the answer depends on Accept: caches must key on it
        return np.asarray(Image.open(io.BytesIO(r.content)))

    whole = image("200,160")  # the CR ramp is 200 x 160, dark to bright left to right (MONOCHROME1: inverted)
    left = image("100,160,0,0,100,160")
    right = image("100,160,100,0,100,160")
    assert left.shape == right.shape == (160, 100)
    assert np.array_equal(left, whole[:, :100]) and np.array_equal(right, whole[:, 100:])
    flipped = image("100,160,100,0,-100,160")  # the left half, mirrored
    assert np.array_equal(flipped, left[:, ::-1])
    outside = _get(gateway, corpus, f"{base}?viewport=64,64,5000,5000,10,10", **png)
    assert outside.status_code == 400 and "outside the image" in outside.text
    assert _get(gateway, corpus, f"{base}?viewport=64,64,1,2", **png).status_code == 400


def test_an_invalid_q_value_is_ignored_not_a_bad_request(corpus: Corpus, gateway: GatewayProcess) -> None:
    r = _get(gateway, corpus, f"/studies?StudyInstanceUID={corpus.ct_study}",
             Accept="application/dicom+json, text/html;q=bogus")
    assert r.status_code == 200 and len(r.json()) == 1


def test_head_is_get_without_the_body(corpus: Corpus, gateway: GatewayProcess) -> None:
    """RFC 9110 §9.1 (found by a review, session 22): HEAD was 405 on every DICOMweb resource."""
    base = f"/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/{corpus.ct_sops[0]}"
    for path, accept in ((f"/studies?StudyInstanceUID={corpus.ct_study}", "application/dicom+json"),
                         (f"{base}/metadata", "application/dicom+json"),
                         (f"{base}/frames/1", 'multipart/related; type="image/jphc"')):
        got = _get(gateway, corpus, path, Accept=accept)
        head = httpx.head(f"{gateway.url}/dicomweb{path}", headers={**auth(corpus), "Accept": accept}, timeout=30)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == got.headers["content-type"]
        assert head.headers.get("etag") == got.headers.get("etag")
        assert int(head.headers["content-length"]) == len(got.content)
    assert httpx.head(f"{gateway.url}/dicomweb{base}/frames/999", headers=auth(corpus)).status_code == 404
