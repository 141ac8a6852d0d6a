"""Idempotency: a resend is acknowledged without a second copy or event, ten parallel duplicates leave one index
record and one event, and a different payload under a stored SOP Instance UID is refused with 0x0111."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom.data import get_testdata_file

from tests.ingestion.stow_helpers import detail, failed_items, fresh, referenced, stow


def _instance_items(aws, sop: str) -> list[dict]:
    return [i for i in aws.items() if i.get("sop_uid") == sop]


def _stored_events(aws, sop: str) -> list[dict]:
    events = aws.drain_events(wait_s=4.0, until=lambda e: any(detail(x).get("sop_uid") == sop for x in e))
    return [e for e in events if e["detail-type"] == "InstanceStored" and detail(e)["sop_uid"] == sop]


def test_resend_is_acknowledged_once(service, pacs_token, aws) -> None:
    aws.drain_events(wait_s=1.0)
    ds, data = fresh("693_UNCR.dcm")
    sop = str(ds.SOPInstanceUID)
    r1 = stow(service.url, pacs_token, [data])
    assert r1.status_code == 200 and referenced(r1) == [sop]
    keys_after_first = set(aws.keys(prefix=f"dicom/{ds.StudyInstanceUID}/"))
    r2 = stow(service.url, pacs_token, [data])
    assert r2.status_code == 200 and referenced(r2) == [sop]
    assert set(aws.keys(prefix=f"dicom/{ds.StudyInstanceUID}/")) == keys_after_first
    assert len(_instance_items(aws, sop)) == 1
    assert len(_stored_events(aws, sop)) == 1
    study = next(i for i in aws.items() if i["pk"] == f"STUDY#{ds.StudyInstanceUID}" and i["sk"] == "STUDY")
    assert study["num_instances"] == 1


def test_ten_parallel_duplicates_one_record_one_event(service, pacs_token, aws) -> None:
    aws.drain_events(wait_s=1.0)
    ds, data = fresh("SC_rgb.dcm")
    sop = str(ds.SOPInstanceUID)
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: stow(service.url, pacs_token, [data]), range(10)))
    reasons = [i.get("00000902", {}).get("Value") for r in responses if r.status_code != 200 for i in failed_items(r)]
    assert [r.status_code for r in responses] == [200] * 10, reasons
    assert all(referenced(r) == [sop] for r in responses)
    assert len(_instance_items(aws, sop)) == 1
    assert len(_stored_events(aws, sop)) == 1
    study = next(i for i in aws.items() if i["pk"] == f"STUDY#{ds.StudyInstanceUID}" and i["sk"] == "STUDY")
    assert study["num_instances"] == 1 and study["num_series"] == 1


def test_conflicting_payload_is_refused(service, pacs_token, aws) -> None:
    # Two real files that share a SOP Instance UID with different content (RLE and JPEG-LS encodings).
    rle = Path(get_testdata_file("MR_small_RLE.dcm")).read_bytes()
    jls = Path(get_testdata_file("MR_small_jpeg_ls_lossless.dcm")).read_bytes()
    assert stow(service.url, pacs_token, [rle]).status_code == 200
    r = stow(service.url, pacs_token, [jls])
    assert r.status_code == 409
    (item,) = failed_items(r)
    assert item["00081197"]["Value"] == [0x0111]
    assert "different content" in item["00000902"]["Value"][0]


def test_partial_success_is_202(service, pacs_token) -> None:
    _, good = fresh("SC_rgb.dcm")
    r = stow(service.url, pacs_token, [good, b"not dicom at all" * 20])
    assert r.status_code == 202
    assert len(referenced(r)) == 1 and len(failed_items(r)) == 1


def test_storage_outage_is_503_retry_later(aws_endpoint, tmp_path, pacs_token) -> None:
    """When nothing was stored only because storage is unavailable, the sender is told to retry (503 +
    Retry-After, 0xA700 per instance), not that its instances conflict (409)."""
    import boto3

    from tests.ingestion.conftest import new_deployment
    from tests.support.ingestion_service import ingestion_service

    settings = new_deployment(aws_endpoint, tmp_path / "var")
    with ingestion_service(settings, tmp_path) as svc:
        boto3.client("dynamodb", endpoint_url=aws_endpoint, region_name="us-east-1").delete_table(
            TableName=settings.topology.table("idempotency"))  # the claim store is gone: a real outage
        _, data = fresh("SC_rgb.dcm")
        r = stow(svc.url, pacs_token, [data])
        assert r.status_code == 503, r.text[:300]
        assert r.headers["Retry-After"] == "5"
        (item,) = failed_items(r)
        assert item["00081197"]["Value"] == [0xA700]
        assert "retry" in item["00000902"]["Value"][0]
        assert svc.alive()
