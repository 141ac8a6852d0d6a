"""WADO-RS through dicomweb-client and httpx: instances (transfer syntaxes), metadata, frames, rendered images."""

from __future__ import annotations

import io
from email.parser import BytesParser
from email.policy import HTTP

import httpx
import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from shared.htj2k import decode
from tests.streaming_gateway.conftest import Corpus, auth
from tests.streaming_gateway.store import GatewayProcess

HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"


@pytest.fixture(scope="module")
def client(corpus: Corpus, gateway: GatewayProcess) -> DICOMwebClient:
    return DICOMwebClient(url=f"{gateway.url}/dicomweb", headers=auth(corpus))


def parts(resp: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + resp.headers["content-type"].encode() + b"\r\n\r\n" + resp.content
    )
    assert msg.is_multipart(), resp.headers["content-type"]
    return [(p["Content-Type"], p.get_payload(decode=True)) for p in msg.iter_parts()]


def located_parts(resp: httpx.Response) -> list[tuple[str, str, bytes]]:
    """(Content-Type, Content-Location, body) of each part of a multipart/related response."""
    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + resp.headers["content-type"].encode() + b"\r\n\r\n" + resp.content)
    return [(p["Content-Type"], p["Content-Location"], p.get_payload(decode=True)) for p in msg.iter_parts()]


def frame_url(gw: GatewayProcess, study: str, series: str, sop: str, frames: str) -> str:
    return f"{gw.url}/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frames}"


def test_retrieve_instances_and_transfer_syntaxes(client: DICOMwebClient, corpus: Corpus,
                                                  gateway: GatewayProcess) -> None:
    sop = corpus.ct_sops[0]
    # transfer-syntax=* returns the stored bytes unchanged.
    url = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/{sop}"
    r = httpx.get(url, headers={**auth(corpus), "Accept": 'multipart/related; type="application/dicom"; '
                                                          "transfer-syntax=*"})
    assert r.status_code == 200
    assert parts(r)[0][1] == corpus.originals[sop]
    # dicomweb-client (asks for *), and HTJ2K transcoding from the stored frames.
    ds = client.retrieve_instance(corpus.ct_study, corpus.ct_series, sop)
    assert ds.SOPInstanceUID == sop and np.array_equal(ds.pixel_array, corpus.ct_pixels[0])
    # No transfer-syntax parameter means Explicit VR Little Endian (PS3.18 8.7.3.5.2).
    r = httpx.get(url, headers={**auth(corpus), "Accept": 'multipart/related; type="application/dicom"'})
    assert "1.2.840.10008.1.2.1" in parts(r)[0][0] and parts(r)[0][1] == corpus.originals[sop]
    r = httpx.get(url, headers={**auth(corpus), "Accept": 'multipart/related; type="application/dicom"; '
                                                          f"transfer-syntax={HTJ2K_RPCL}"})
    assert r.status_code == 200
    ctype, body = parts(r)[0]
    assert HTJ2K_RPCL in ctype
    ht = pydicom.dcmread(io.BytesIO(body))
    assert ht.file_meta.TransferSyntaxUID == HTJ2K_RPCL
    assert np.array_equal(ht.pixel_array, corpus.ct_pixels[0])
    # Implicit VR Little Endian of the multi-frame MR.
    r = httpx.get(f"{gateway.url}/dicomweb/studies/{corpus.mr_study}/series/{corpus.mr_series}/instances/"
                  f"{corpus.mr_sop}",
                  headers={**auth(corpus), "Accept": 'multipart/related; type="application/dicom"; '
                                                     "transfer-syntax=1.2.840.10008.1.2"})
    mr = pydicom.dcmread(io.BytesIO(parts(r)[0][1]))
    assert mr.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" and np.array_equal(mr.pixel_array, corpus.mr_frames)
    # A syntax we cannot produce: 406 with the reason.
    r = httpx.get(url, headers={**auth(corpus), "Accept": 'multipart/related; type="application/dicom"; '
                                                          "transfer-syntax=1.2.840.10008.1.2.4.50"})
    assert r.status_code == 406 and "1.2.840.10008.1.2.4.50" in r.json()["detail"]
    # Whole series and whole study, streamed.
    series = client.retrieve_series(corpus.ct_study, corpus.ct_series)
    assert sorted(d.SOPInstanceUID for d in series) == sorted(corpus.ct_sops)
    study = client.retrieve_study(corpus.cr_study, media_types=(("application/dicom", "*"),))
    assert [d.SOPInstanceUID for d in study] == [corpus.cr_sop]


def test_metadata_levels(client: DICOMwebClient, corpus: Corpus, gateway: GatewayProcess) -> None:
    inst = client.retrieve_instance_metadata(corpus.ct_study, corpus.ct_series, corpus.ct_sops[1])
    assert inst["00080018"]["Value"] == [corpus.ct_sops[1]] and "7FE00010" not in inst
    series = client.retrieve_series_metadata(corpus.ct_study, corpus.ct_series)
    assert sorted(m["00080018"]["Value"][0] for m in series) == sorted(corpus.ct_sops)
    study = client.retrieve_study_metadata(corpus.mr_study)
    assert len(study) == 1 and study[0]["00280008"]["Value"] == [10]
    # gzip when asked, and a validator for conditional requests.
    url = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/metadata"
    r = httpx.get(url, headers={**auth(corpus), "Accept-Encoding": "gzip"})
    assert r.headers["content-encoding"] == "gzip" and len(r.json()) == 6
    r2 = httpx.get(url, headers={**auth(corpus), "If-None-Match": r.headers["etag"]})
    assert r2.status_code == 304


def test_frames_in_each_media_type_bit_exact(client: DICOMwebClient, corpus: Corpus,
                                             gateway: GatewayProcess) -> None:
    ct, series, sop = corpus.ct_study, corpus.ct_series, corpus.ct_sops[3]
    expected = corpus.ct_pixels[3]
    # Decoded pixels (dicomweb-client's default: multipart octet-stream, Explicit VR Little Endian).
    (raw,) = client.retrieve_instance_frames(ct, series, sop, frame_numbers=[1])
    assert np.array_equal(np.frombuffer(raw, "<i2").reshape(512, 512), expected)
    # Multi-frame MR, several frames at once, decoded.
    frames = client.retrieve_instance_frames(corpus.mr_study, corpus.mr_series, corpus.mr_sop, frame_numbers=[2, 7])
    for raw, k in zip(frames, [2, 7], strict=True):
        assert np.array_equal(np.frombuffer(raw, "<u2").reshape(64, 64), corpus.mr_frames[k - 1])
    url = frame_url(gateway, ct, series, sop, "1")
    # Stored HTJ2K codestream, multipart, with the transfer syntax on the part (Cornerstone3D needs it there).
    for accept in ['multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202',
                   'multipart/related; type="image/jphc"', "multipart/related; type=image/jhc; transfer-syntax=*"]:
        r = httpx.get(url, headers={**auth(corpus), "Accept": accept})
        assert r.status_code == 200, accept
        ((ctype, cs),) = parts(r)
        assert HTJ2K_RPCL in ctype and ctype.split(";")[0] in ("image/jphc", "image/jhc")
        assert np.array_equal(decode(cs), expected)
    # Single-part codestream.
    r = httpx.get(url, headers={**auth(corpus), "Accept": "image/jphc"})
    assert r.headers["content-type"] == "image/jphc" and np.array_equal(decode(r.content), expected)
    # Cornerstone3D's unquoted octet-stream form with transfer-syntax=*, and the explicit Explicit VR Little Endian:
    # decoded pixels, the transfer syntax on the part's own header.
    for accept in ("multipart/related; type=application/octet-stream; transfer-syntax=*",
                   'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1'):
        r = httpx.get(url, headers={**auth(corpus), "Accept": accept})
        ((ctype, raw),) = parts(r)
        assert ctype.startswith("application/octet-stream") and "1.2.840.10008.1.2.1" in ctype
        assert np.array_equal(np.frombuffer(raw, "<i2").reshape(512, 512), expected)
    # Multi-frame codestreams in one multipart body.
    r = httpx.get(frame_url(gateway, corpus.mr_study, corpus.mr_series, corpus.mr_sop, "1,10"),
                  headers={**auth(corpus), "Accept": 'multipart/related; type="image/jphc"'})
    got = [decode(cs) for _, cs in parts(r)]
    assert np.array_equal(got[0], corpus.mr_frames[0]) and np.array_equal(got[1], corpus.mr_frames[9])


def test_one_decode_per_frame_for_decoded_frames_and_renderings(corpus: Corpus, gateway: GatewayProcess) -> None:
    """Pixels decoded for an application/octet-stream frame request are windowed for a rendered image without
    decoding the codestream again, and a rendering leaves its pixels for the next frame request (issue 20: rendered
    first requests were 1.1-1.6x Orthanc's time, 60% of it the decode). Counted by the decoded cache's lookups: a
    request that had to decode would be a miss."""
    stats_url = f"{gateway.url}/streaming/stats"

    def decoded_stats() -> tuple[int, int]:
        d = httpx.get(stats_url, headers=auth(corpus)).json()["decoded_cache"]
        return d["hits"], d["misses"]

    octet = {**auth(corpus), "Accept": 'multipart/related; type="application/octet-stream"'}
    # A frame fetched as decoded pixels, then rendered: the rendering is a hit, and its pixels are right.
    k = 4
    sop = corpus.ct_sops[k]
    base = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/{sop}"
    r = httpx.get(f"{base}/frames/1", headers=octet)
    assert r.status_code == 200 and np.array_equal(np.frombuffer(parts(r)[0][1], "<i2").reshape(512, 512),
                                                   corpus.ct_pixels[k])
    hits, misses = decoded_stats()
    r = httpx.get(f"{base}/rendered", params={"window": "-1000,100", "quality": "77"},
                  headers={**auth(corpus), "Accept": "image/png"})
    assert r.status_code == 200 and r.headers["x-cache"] == "miss"  # rendered now, from the decoded pixels
    assert decoded_stats() == (hits + 1, misses)
    png = np.asarray(Image.open(io.BytesIO(r.content))).astype(float)
    hu = corpus.ct_pixels[k].astype(float) - 1024
    assert png.shape == (512, 512) and png[hu < -1050].max() == 0 and png[hu > -950].min() == 255
    # A frame rendered first: its pixels serve the decoded frame request that follows.
    k = 5
    sop = corpus.ct_sops[k]
    base = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/{sop}"
    assert httpx.get(f"{base}/rendered", params={"window": "-999,101"}, headers=auth(corpus)).status_code == 200
    hits, misses = decoded_stats()
    r = httpx.get(f"{base}/frames/1", headers=octet)
    assert decoded_stats() == (hits + 1, misses)
    assert np.array_equal(np.frombuffer(parts(r)[0][1], "<i2").reshape(512, 512), corpus.ct_pixels[k])


def test_rendered_and_thumbnail(corpus: Corpus, gateway: GatewayProcess, client: DICOMwebClient) -> None:
    base = f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/{corpus.ct_sops[0]}"
    # dicomweb-client's rendered retrieval: JPEG at full size with the instance's VOI window (40/100).
    jpg = client.retrieve_instance_rendered(corpus.ct_study, corpus.ct_series, corpus.ct_sops[0])
    img = Image.open(io.BytesIO(jpg))
    assert img.format == "JPEG" and img.size == (512, 512)
    # An explicit window, PNG (lossless, so the window can be checked exactly) and a viewport.
    r = httpx.get(f"{base}/rendered", params={"window": "0,2,linear-exact", "viewport": "256,128"},
                  headers={**auth(corpus), "Accept": "image/png"})
    png = np.asarray(Image.open(io.BytesIO(r.content)))
    assert r.headers["content-type"] == "image/png" and png.shape == (128, 128)
    r = httpx.get(f"{base}/frames/1/rendered", params={"window": "-1000,100"},
                  headers={**auth(corpus), "Accept": "image/png"})
    hu = corpus.ct_pixels[0].astype(float) - 1024
    png = np.asarray(Image.open(io.BytesIO(r.content))).astype(float)
    lo, hi = hu < -1050, hu > -950
    assert png[lo].max() == 0 and png[hi].min() == 255  # outside the window: black below, white above
    # MONOCHROME1: the low end of the ramp renders white.
    cr = (f"{gateway.url}/dicomweb/studies/{corpus.cr_study}/series/{corpus.cr_series}/instances/"
          f"{corpus.cr_sop}/rendered")
    ramp = np.asarray(Image.open(io.BytesIO(httpx.get(cr, headers={**auth(corpus), "Accept": "image/png"}).content)))
    assert ramp.shape == (160, 200) and ramp[:, 0].mean() > 250 and ramp[:, -1].mean() < 5
    # Thumbnails from the lowest resolution: at most 64 px.
    for path in (f"{base}/thumbnail", f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/thumbnail",
                 f"{gateway.url}/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/thumbnail"):
        r = httpx.get(path, headers=auth(corpus))
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", path
        assert max(Image.open(io.BytesIO(r.content)).size) <= 64
    for params in ({"window": "abc"}, {"viewport": "0,10"}, {"quality": "101"}):
        assert httpx.get(f"{base}/rendered", params=params, headers=auth(corpus)).status_code == 400
    # Rendered once per codestream and parameters: the same request is served from the rendered cache, byte for byte;
    # other parameters are another entry; a client holding the ETag gets 304 without a render.
    view = {"window": "40,400", "viewport": "300,300"}
    first = httpx.get(f"{base}/rendered", params=view, headers=auth(corpus))
    again = httpx.get(f"{base}/rendered", params=view, headers=auth(corpus))
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
    assert again.content == first.content and again.headers["etag"] == first.headers["etag"]
    other = httpx.get(f"{base}/rendered", params={**view, "window": "40,80"}, headers=auth(corpus))
    assert other.headers["x-cache"] == "miss" and other.headers["etag"] != first.headers["etag"]
    stats = httpx.get(f"{gateway.url}/streaming/stats", headers=auth(corpus)).json()["rendered_cache"]
    cached = httpx.get(f"{base}/rendered", params=view, headers={**auth(corpus), "If-None-Match": first.headers["etag"]})
    assert cached.status_code == 304 and not cached.content and "x-cache" not in cached.headers
    after = httpx.get(f"{gateway.url}/streaming/stats", headers=auth(corpus)).json()["rendered_cache"]
    assert after["hits"] == stats["hits"] and after["misses"] == stats["misses"], "a 304 neither renders nor looks up"
    assert 0 < after["bytes"] <= after["budget_bytes"]
    assert httpx.get(f"{base}/rendered", headers={**auth(corpus), "Accept": "image/gif"}).status_code == 406
