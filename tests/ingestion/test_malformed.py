"""The malformed-input corpus: every case is refused with a 4xx and a reason, nothing is stored, the service stays
up, its memory stays bounded, and an InstanceRejected event without PHI is published per refusal."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlparse

import httpx
import pytest

from tests.ingestion.corpus import cases
from tests.ingestion.stow_helpers import failed_items, multipart, stow

KNOWN_REASONS = {0xA700, 0xA900, 0xC000, 0x0122}


def test_corpus_every_case_refused_nothing_stored(service, pacs_token, aws, rejected_queue) -> None:
    corpus = cases(bomb_bytes=64 << 20)
    assert len(corpus) > 90
    keys_before, items_before = set(aws.keys()), len(aws.items())
    with httpx.Client(timeout=60) as c:
        for name, data in corpus:
            body, ctype = multipart([data])
            r = c.post(f"{service.url}/dicomweb/studies", content=body,
                       headers={"Content-Type": ctype, "Authorization": f"Bearer {pacs_token}"})
            assert r.status_code == 409, f"{name}: {r.status_code} {r.text[:300]}"
            (item,) = failed_items(r)
            assert item["00081197"]["Value"][0] in KNOWN_REASONS, name
            reason = item["00000902"]["Value"][0]
            assert len(reason) > 15 and reason.endswith("."), f"{name}: {reason!r}"
    # the whole corpus in one request, too: one failure per part
    r = stow(service.url, pacs_token, [d for _, d in corpus])
    assert r.status_code == 409 and len(failed_items(r)) == len(corpus)
    assert set(aws.keys()) == keys_before, "a refused instance left objects in S3"
    assert len(aws.items()) == items_before, "a refused instance left index items"
    assert httpx.get(f"{service.url}/healthz").status_code == 200 and service.alive()
    peak_mib = service.peak_rss_kib() / 1024
    assert peak_mib < 2048, f"peak memory of the service and its workers {peak_mib:.0f} MiB"
    # InstanceRejected events, with no PHI (the corpus's synthetic files carry PatientID CANARY-PID)
    got: list[str] = []
    deadline = time.monotonic() + 20
    while len(got) < 2 * len(corpus) and time.monotonic() < deadline:
        for m in aws.sqs.receive_message(QueueUrl=rejected_queue, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=1).get("Messages", []):
            got.append(m["Body"])
            aws.sqs.delete_message(QueueUrl=rejected_queue, ReceiptHandle=m["ReceiptHandle"])
    assert len(got) >= 2 * len(corpus) - 5  # EventBridge delivery on moto is at least once, rarely slow
    assert not any("CANARY" in b for b in got)


def test_http_level_cases(service, pacs_token) -> None:
    auth = {"Authorization": f"Bearer {pacs_token}"}
    url = f"{service.url}/dicomweb/studies"
    _, ctype = multipart([])
    r = httpx.post(url, content=b"", headers={**auth, "Content-Type": ctype})
    assert r.status_code == 400 and "boundary" in r.json()["detail"]
    r = httpx.post(url, content=b"DICM" * 10, headers={**auth, "Content-Type": "application/dicom"})
    assert r.status_code == 415 and "multipart/related" in r.json()["detail"]
    r = httpx.post(url, content=b"{}", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 415
    wrong_type = 'multipart/related; type="application/dicom+json"; boundary=x'
    r = httpx.post(url, content=b"x", headers={**auth, "Content-Type": wrong_type})
    assert r.status_code == 415
    body, ctype = multipart([b"abc"])
    r = httpx.post(url, content=body[: len(body) // 2 + 20], headers={**auth, "Content-Type": ctype})
    assert r.status_code == 400 and "closing" in r.json()["detail"]
    body, ctype = multipart([])
    r = httpx.post(url, content=body, headers={**auth, "Content-Type": ctype})
    assert r.status_code == 400 and "no parts" in r.json()["detail"]
    assert service.alive()


def test_body_over_cap_is_413(service, pacs_token) -> None:
    # declared too large: refused from the headers alone
    u = urlparse(service.url)
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall((f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {pacs_token}\r\n"
                   'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
                   "Content-Length: 99999999999\r\n\r\n").encode())
        assert b" 413 " in s.recv(4096).split(b"\r\n")[0]
    # streamed (chunked, no length) past the cap (the test service's cap is 64 MiB)

    def chunks():
        yield b"--b\r\nContent-Type: application/dicom\r\n\r\n"
        block = bytes(1 << 20)
        for _ in range(70):
            yield block

    r = httpx.post(f"{service.url}/dicomweb/studies", content=chunks(), timeout=60,
                   headers={"Authorization": f"Bearer {pacs_token}",
                            "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]
    assert service.alive()


@pytest.mark.parametrize("kind", ["htj2k", "jpeg"])
def test_a_frame_whose_codestream_declares_another_size_is_refused_before_decoding(kind: str) -> None:
    """A decompression bomb (found by a review): a 16 x 16 image whose encapsulated frame declares 12,000 x 12,000
    pixels in its own header (HTJ2K SIZ, JPEG SOF). The decoder allocates what the codestream declares (2 GB for a
    473 KB frame of 20,000 x 20,000), so the safe parse refuses it from the header, before any decoding; a frame
    whose header agrees is parsed as before."""
    from shared.dicom import codestream
    from shared.dicom.errors import CANNOT_UNDERSTAND, DicomRejection
    from shared.dicom.parse import parse_safely
    from tests.ingestion.corpus import pixel_bomb

    with pytest.raises(DicomRejection) as err:
        parse_safely(pixel_bomb(kind))
    assert err.value.failure_reason == CANNOT_UNDERSTAND and err.value.kind == "frame-header-mismatch", err.value
    assert "12000 x 12000" in err.value.reason and "16 x 16" in err.value.reason
    agreeing = parse_safely(pixel_bomb(kind, side=16))
    assert (agreeing.rows, agreeing.columns) == (16, 16)
    with pytest.raises(codestream.HeaderError, match="SOC"):
        codestream.frame_header(b"\xff\xd8" + bytes(60), "1.2.840.10008.1.2.4.90")
    with pytest.raises(codestream.HeaderError, match="SOF"):
        codestream.frame_header(b"\xff\xd8\xff\xe0\x00\x04ab", "1.2.840.10008.1.2.4.50")
