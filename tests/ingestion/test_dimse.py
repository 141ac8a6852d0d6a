"""DIMSE: DCMTK storescu/dcmsend/echoscu and pynetdicom push to the SCP inside the service; instances appear in the
index; failures carry a status and a reason; unknown calling AE titles are refused; per-AE de-identification."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, SecondaryCaptureImageStorage, Verification

from shared.dicom.deid import remap_uid
from tests.ingestion.stow_helpers import fresh


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_echoscu(service) -> None:
    r = _run(["echoscu", "-aet", "ECHOSCU", "-aec", "RADLOOP", "127.0.0.1", str(service.dimse_port)])
    assert r.returncode == 0, r.stderr


def test_storescu_and_dcmsend(service, aws, tmp_path) -> None:
    ct, ct_bytes = fresh("693_UNCR.dcm")
    j2k, j2k_bytes = fresh("MR2_J2KR.dcm")
    r = _run(["storescu", "-aet", "STORESCU", "-aec", "RADLOOP", "127.0.0.1", str(service.dimse_port),
              str(_write(tmp_path, "ct.dcm", ct_bytes))])
    assert r.returncode == 0, r.stdout + r.stderr
    # a JPEG 2000 file goes as it is (-xv proposes JPEG 2000 lossless)
    r = _run(["storescu", "-xv", "-aet", "STORESCU", "-aec", "RADLOOP", "127.0.0.1", str(service.dimse_port),
              str(_write(tmp_path, "j2k.dcm", j2k_bytes))])
    assert r.returncode == 0, r.stdout + r.stderr
    mr, mr_bytes = fresh("MR_small_RLE.dcm")
    r = _run(["dcmsend", "-aet", "DCMSEND", "-aec", "RADLOOP", "127.0.0.1", str(service.dimse_port),
              str(_write(tmp_path, "mr.dcm", mr_bytes))])
    assert r.returncode == 0, r.stdout + r.stderr
    for ds in (ct, j2k, mr):
        item = aws.instance(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
        assert item is not None and item["source"] == "dimse"
        assert aws.get(item["original_key"])  # durable before the 0x0000


def test_pynetdicom_store_success_and_failures(service, aws) -> None:
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", service.dimse_port, ae_title="RADLOOP")
    assert assoc.is_established
    try:
        good, _ = fresh("SC_rgb.dcm")
        assert assoc.send_c_store(good).Status == 0x0000
        assert assoc.send_c_store(good).Status == 0x0000  # a resend is acknowledged (no second copy)
        short, _ = fresh("SC_rgb.dcm")
        short.PixelData = short.PixelData[:100]
        status = assoc.send_c_store(short)
        assert status.Status == 0xA900 and "Pixel Data holds 100 bytes" in status.ErrorComment
        nomod, _ = fresh("SC_rgb.dcm")
        del nomod.Modality
        status = assoc.send_c_store(nomod)
        assert status.Status == 0xA900 and "Modality" in status.ErrorComment
        # conflicting payload under a stored SOP Instance UID
        conflict = pydicom.dcmread(io.BytesIO(_bytes(good)))
        conflict.PixelData = bytes(len(conflict.PixelData))
        status = assoc.send_c_store(conflict)
        assert status.Status == 0x0111
    finally:
        assoc.release()
    items = [i for i in aws.items() if i.get("sop_uid") == str(good.SOPInstanceUID)]
    assert len(items) == 1
    assert service.alive()


def _bytes(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_unknown_calling_ae_is_refused(service) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", service.dimse_port, ae_title="RADLOOP")
    assert not assoc.is_established and assoc.is_rejected
    ae = AE(ae_title="PYNETDICOM")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", service.dimse_port, ae_title="WRONGCALLED")
    assert not assoc.is_established


def test_deidentifying_calling_ae(service, aws) -> None:
    """The test service de-identifies what DEIDSCU sends; BurnedInAnnotation other than NO is quarantined."""
    ae = AE(ae_title="DEIDSCU")
    ae.add_requested_context(MRImageStorage)
    ae.add_requested_context(SecondaryCaptureImageStorage)
    from pynetdicom.sop_class import EnhancedMRImageStorage

    ae.add_requested_context(EnhancedMRImageStorage)
    assoc = ae.associate("127.0.0.1", service.dimse_port, ae_title="RADLOOP")
    assert assoc.is_established
    try:
        ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
        ds.PatientName, ds.PatientID = "CANARY^DEID", "CANARY-DEID-ID"
        assert assoc.send_c_store(ds).Status == 0x0000
        burned, _ = fresh("SC_rgb.dcm", BurnedInAnnotation="YES")
        status = assoc.send_c_store(burned)
        assert status.Status == 0xC000 and status.ErrorComment.startswith("Quarantined")
    finally:
        assoc.release()
    from services.ingestion.settings import IngestionSettings

    key = IngestionSettings().deid_key  # the test service runs with the local default key
    sop = remap_uid(str(ds.SOPInstanceUID), key)
    items = [i for i in aws.items() if i.get("sop_uid") == sop]
    assert len(items) == 1
    assert "CANARY" not in aws.get(items[0]["original_key"]).decode("latin-1")
    assert "CANARY" not in items[0]["dicom_json"]
    q = aws.keys(aws.ingest, prefix="quarantine/")
    assert any(k.endswith(".reason.json") for k in q)
    assert not [i for i in aws.items() if i.get("sop_uid") in (str(burned.SOPInstanceUID),
                                                                 remap_uid(str(burned.SOPInstanceUID), key))]


def test_the_same_instance_over_dimse_and_then_as_a_file_over_stow_is_one_instance(service, aws, pacs_token,
                                                                                   tmp_path) -> None:
    """A modality sends an image over DIMSE (the receiver writes the file meta), and the same image is sent again
    as the original file over STOW-RS, and once more as a file whose meta another tool rewrote: each is acknowledged
    and one instance is stored (before: the STOW-RS resends were refused 0x0111, "already stored with different
    content", because the received bytes differ in the file meta). Other pixels under the UID are still a conflict."""
    from pydicom.uid import generate_uid

    from tests.ingestion.stow_helpers import failed_items, stow

    ct, ct_bytes = fresh("693_UNCR.dcm")
    r = _run(["storescu", "-aet", "STORESCU", "-aec", "RADLOOP", "127.0.0.1", str(service.dimse_port),
              str(_write(tmp_path, "ct.dcm", ct_bytes))])
    assert r.returncode == 0, r.stdout + r.stderr
    resp = stow(service.url, pacs_token, [ct_bytes])
    assert resp.status_code == 200 and failed_items(resp) == [], resp.text
    rewritten = pydicom.dcmread(io.BytesIO(ct_bytes))
    rewritten.file_meta.ImplementationClassUID = generate_uid()
    rewritten.file_meta.ImplementationVersionName = "OTHER_TOOL_1"
    assert _bytes(rewritten) != ct_bytes
    resp = stow(service.url, pacs_token, [_bytes(rewritten)])
    assert resp.status_code == 200 and failed_items(resp) == [], resp.text
    items = [i for i in aws.items() if i.get("sop_uid") == str(ct.SOPInstanceUID)]
    assert len(items) == 1 and items[0]["source"] == "dimse"
    other = pydicom.dcmread(io.BytesIO(ct_bytes))
    other.PixelData = bytes(len(other.PixelData))
    resp = stow(service.url, pacs_token, [_bytes(other)])
    assert resp.status_code == 409 and [f["00081197"]["Value"][0] for f in failed_items(resp)] == [0x0111]
