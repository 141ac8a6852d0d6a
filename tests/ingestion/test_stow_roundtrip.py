"""STOW-RS over real HTTP with dicomweb-client; stored HTJ2K frames decode bit-exact to the source pixels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from shared import htj2k
from shared.dicom.pixels import iter_frames
from shared.events import pseudonymise

# (file, why it is here). MR_small_jpeg_ls_lossless and MR_small_RLE share a SOP Instance UID (the idempotency
# tests use that as a real conflict), so here both get a fresh SOP Instance UID (their pixel data is untouched).
FILES = [
    ("693_UNCR.dcm", "CT 512x512 int16"),
    ("RG1_UNCR.dcm", "chest CR 1955x1841, MONOCHROME1"),
    ("MR2_J2KR.dcm", "JPEG 2000 lossless"),
    ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS lossless, signed"),
    ("MR_small_RLE.dcm", "RLE lossless"),
    ("emri_small.dcm", "multi-frame (10)"),
    ("US1_UNCR.dcm", "RGB ultrasound"),
    ("JPEG-LL.dcm", "JPEG lossless"),
]


def load(name: str) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    if name in ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"):
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def client(service, token: str) -> DICOMwebClient:
    return DICOMwebClient(url=f"{service.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})


def test_stow_roundtrip_real_files_bit_exact(service, pacs_token, aws, ing_settings) -> None:
    datasets = [load(n) for n, _ in FILES]
    aws.drain_events(wait_s=1.0)
    resp = client(service, pacs_token).store_instances(datasets=datasets)
    refs = {item.ReferencedSOPInstanceUID for item in resp.ReferencedSOPSequence}
    assert refs == {str(ds.SOPInstanceUID) for ds in datasets}
    assert "FailedSOPSequence" not in resp
    for ds in datasets:
        study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        item = aws.instance(study, series, sop)
        assert item is not None, f"{sop} not indexed"
        assert item["source"] == "stow"
        assert item["transfer_syntax_uid"] == str(ds.file_meta.TransferSyntaxUID)
        assert item["patient_pseudo_id"] == pseudonymise(str(ds.get("PatientID", "")), ing_settings.pseudonym_key)
        source_frames = list(iter_frames(ds))
        assert item["number_of_frames"] == len(source_frames)
        offsets = json.loads(item["frame_offsets"])
        for n, expected in enumerate(source_frames, 1):
            cs = aws.get(f"{item['frames_prefix']}/{n}.jph")
            assert offsets[n - 1][-1] == len(cs)
            got = htj2k.decode(cs)
            assert got.dtype == expected.dtype and np.array_equal(got, expected), f"frame {n} of {sop} differs"
        # the original is stored byte for byte as sent, and the metadata has no pixel data
        original = aws.get(item["original_key"])
        assert pydicom.dcmread(io.BytesIO(original)).SOPInstanceUID == sop
        meta = json.loads(aws.get(item["metadata_key"]))
        assert "7FE00010" not in meta and meta["00080018"]["Value"] == [sop]
        assert json.loads(item["dicom_json"]) == meta
    # the study/series items carry the counts
    ct = datasets[0]
    study_item = next(i for i in aws.items() if i["pk"] == f"STUDY#{ct.StudyInstanceUID}" and i["sk"] == "STUDY")
    assert study_item["num_instances"] == 1 and study_item["num_series"] == 1 and study_item["modalities"] == ["CT"]
    events = aws.drain_events(wait_s=20.0, until=lambda e: refs <= {x["detail"]["sop_uid"] for x in e})
    stored = [e for e in events if e["detail-type"] == "InstanceStored" and e["detail"]["sop_uid"] in refs]
    assert sorted(e["detail"]["sop_uid"] for e in stored) == sorted(refs)
    body = json.dumps(stored)
    for ds in datasets:  # no PHI in events
        for kw in ("PatientName", "PatientID"):
            v = str(ds.get(kw, "") or "")
            if len(v) > 3:
                assert v not in body


def test_stow_to_study_url_rejects_other_study(service, pacs_token) -> None:
    ds = load("SC_rgb.dcm")
    c = client(service, pacs_token)
    with pytest.raises(Exception) as info:  # noqa: PT011 - dicomweb-client raises requests' HTTPError
        c.store_instances(datasets=[ds], study_instance_uid="1.2.3.4")
    assert "409" in str(info.value)
    resp = c.store_instances(datasets=[ds], study_instance_uid=str(ds.StudyInstanceUID))
    assert resp.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_roles(service, ing_settings) -> None:
    import httpx

    from shared.auth import mint_token

    r = httpx.post(f"{service.url}/dicomweb/studies", content=b"x",
                   headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert r.status_code == 401
    r = httpx.post(f"{service.url}/dicomweb/studies", content=b"x",
                   headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
                            "Authorization": f"Bearer {mint_token(ing_settings, 'viewer')}"})
    assert r.status_code == 403
    _ = Path


def test_stow_responses_name_the_class_of_a_conflict_and_no_study_where_nothing_was_stored(service, pacs_token) -> None:
    """PS3.18 Table 10.5.3-2 (found by a review, session 22): a failure item for a conflicting payload names the SOP
    Class (it named only the instance), and a response whose instances were all refused has no Retrieve URL (it named
    the URL's study, where nothing was stored)."""
    import io

    import pydicom

    from tests.ingestion.stow_helpers import failed_items, fresh, stow

    ds, data = fresh("SC_rgb.dcm")
    assert stow(service.url, pacs_token, [data]).status_code == 200
    other = pydicom.dcmread(io.BytesIO(data))
    other.PixelData = bytes(len(other.PixelData))
    buf = io.BytesIO()
    other.save_as(buf, enforce_file_format=True)
    resp = stow(service.url, pacs_token, [buf.getvalue()])
    assert resp.status_code == 409
    (item,) = failed_items(resp)
    assert item["00081197"]["Value"] == [0x0111] and item["00081150"]["Value"] == [str(ds.SOPClassUID)]
    assert "00081190" not in resp.json()
    wrong = stow(service.url, pacs_token, [fresh("SC_rgb.dcm")[1]], study="1.2.3.4")
    assert wrong.status_code == 409 and "00081190" not in wrong.json()
    right = stow(service.url, pacs_token, [fresh("SC_rgb.dcm", StudyInstanceUID="1.2.3.5")[1]], study="1.2.3.5")
    assert right.status_code == 200 and right.json()["00081190"]["Value"][0].endswith("/studies/1.2.3.5")
