"""The image store's pure parts: HealthImaging metadata as DICOM JSON, the settings, the import-job event, the index
record of an imported instance, and the botocore model guarding every HealthImaging request (no AWS, no processes)."""

from __future__ import annotations

import json

import pytest
from aiobotocore.session import get_session
from aiobotocore.stub import AioStubber
from botocore.exceptions import ParamValidationError
from pydantic import ValidationError
from pydicom.dataset import Dataset

from services.ingestion.domain.imported import imported_record, stored_event_fields
from services.ingestion.settings import IngestionSettings
from shared.events import ImportJobCompleted, ImportJobFailed, InstanceStored, parse_detail, parse_envelope
from shared.image_store import ImportedInstance, ahi_metadata
from shared.image_store.settings import ImageStoreSettings
from tests.image_store import ahi_examples as ex
from tests.ingestion.stow_helpers import fresh


@pytest.fixture(scope="module")
def ct() -> tuple[Dataset, dict, str, str]:
    ds, _ = fresh("693_UNCR.dcm", PatientName="DOE^JANE", PatientID="MRN-000123")
    fid = ex.new_id()
    doc = ex.image_set_metadata(ex.new_id(), [ds], {str(ds.SOPInstanceUID): [fid]}, {fid: b"x" * 10})
    return ds, doc, str(ds.SeriesInstanceUID), fid


def test_metadata_document_reads_back_as_the_instance_dicom_json(ct) -> None:
    ds, doc, series, fid = ct
    blob = ex.gzip_json(doc)
    loaded = ahi_metadata.load(blob, "gzip")
    meta = ahi_metadata.instance_dicom_json(loaded, series, str(ds.SOPInstanceUID))
    back = Dataset.from_json(meta)
    # Patient, study, series and instance levels merged, with the standard's VRs and value types.
    assert back.PatientID == "MRN-000123" and str(back.PatientName) == "DOE^JANE"
    assert meta["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "DOE^JANE"}]}
    assert meta["00100030"] == {"vr": "DA"}  # PatientBirthDate: null in HealthImaging's document, empty here
    assert back.StudyInstanceUID == ds.StudyInstanceUID and back.SeriesInstanceUID == ds.SeriesInstanceUID
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.Modality == ds.Modality
    assert meta["00280010"] == {"vr": "US", "Value": [int(ds.Rows)]}
    assert float(back.RescaleIntercept) == float(ds.RescaleIntercept)  # "-1024 " (padded DS) became a number
    assert meta["00281053"]["vr"] == "DS" and isinstance(meta["00281053"]["Value"][0], float)
    assert [float(v) for v in back.PixelSpacing] == [float(v) for v in ds.PixelSpacing]
    assert list(back.ImageType) == list(ds.ImageType)
    assert "7FE00010" not in meta  # no bulk data
    assert ahi_metadata.frame_ids(ahi_metadata.find_instance(loaded, str(ds.SOPInstanceUID))[1]) == (fid,)


def test_an_instance_missing_from_the_image_set_is_an_error(ct) -> None:
    _, doc, series, _ = ct
    with pytest.raises(ahi_metadata.MetadataError, match="has no instance"):
        ahi_metadata.instance_dicom_json(doc, series, "1.2.3.4")
    assert ahi_metadata.find_instance(doc, "1.2.3.4") is None
    with pytest.raises(ahi_metadata.MetadataError):
        ahi_metadata.load(json.dumps({"Patient": {}}).encode(), None)


def test_settings_default_to_radloop_and_require_the_datastore_and_role_for_healthimaging() -> None:
    assert IngestionSettings().image_store == "radloop"
    with pytest.raises(ValidationError, match="RADLOOP_HEALTHIMAGING_DATASTORE_ID"):
        ImageStoreSettings(image_store="healthimaging")
    with pytest.raises(ValidationError, match="RADLOOP_HEALTHIMAGING_IMPORT_ROLE_ARN"):
        ImageStoreSettings(image_store="healthimaging", healthimaging_datastore_id=ex.DATASTORE_ID)
    with pytest.raises(ValidationError, match="must be an S3 key prefix ending in '/'"):
        ImageStoreSettings(healthimaging_import_prefix="healthimaging/import")
    s = IngestionSettings(image_store="healthimaging", healthimaging_datastore_id=ex.DATASTORE_ID,
                          healthimaging_import_role_arn=ex.ROLE_ARN)
    assert s.import_bucket == s.topology.bucket("ingestion")  # the default: the ingestion bucket


def test_healthimaging_import_job_events_parse() -> None:
    for status, cls in (("COMPLETED", ImportJobCompleted), ("FAILED", ImportJobFailed)):
        env = parse_envelope(json.dumps(ex.import_job_event("abc123", status)))
        event = parse_detail(env.detail_type, env.detail)
        assert isinstance(event, cls) and event.jobId == "abc123" and event.datastoreId == ex.DATASTORE_ID


def _imported(ds: Dataset, doc: dict, series: str, fid: str) -> ImportedInstance:
    attrs = {"sop_uid": str(ds.SOPInstanceUID), "study_uid": str(ds.StudyInstanceUID), "series_uid": series,
             "content_sha256": "ab" * 32, "staged_key": f"healthimaging/import/b/{ds.SOPInstanceUID}.dcm",
             "sop_class_uid": str(ds.SOPClassUID), "modality": "CT", "body_part": None, "view_position": None,
             "number_of_frames": 1, "rows": 512, "columns": 512, "original_key": "", "frames_prefix": "",
             "metadata_key": "", "size_bytes": 1000, "htj2k_bytes": 500, "patient_pseudo_id": "p" * 32,
             "source": "stow", "deidentified": False, "transfer_syntax_uid": "1.2.840.10008.1.2.1"}
    return ImportedInstance(str(ds.StudyInstanceUID), series, str(ds.SOPInstanceUID),
                            ahi_metadata.instance_dicom_json(doc, series, str(ds.SOPInstanceUID)),
                            doc["ImageSetID"], (fid,), "1.2.840.10008.1.2.4.202", attrs)


def test_imported_instance_is_indexed_like_a_stored_one_and_announced_without_phi(ct) -> None:
    ds, doc, series, fid = ct
    inst = _imported(ds, doc, series, fid)
    rec = imported_record(inst, inline_json_max=300_000)
    assert rec.patient_id == "MRN-000123" and rec.study["patient_name"] == "DOE^JANE"  # the index answers QIDO
    assert rec.instance["image_set_id"] == doc["ImageSetID"] and rec.instance["frame_ids"] == [fid]
    assert rec.instance["number_of_frames"] == 1 and rec.instance["rows"] == int(ds.Rows)
    assert rec.instance["original_key"].startswith("healthimaging/import/")
    assert json.loads(rec.instance["dicom_json"])["00100020"]["Value"] == ["MRN-000123"]
    assert "dicom_json" not in imported_record(inst, inline_json_max=10).instance  # too large: left out
    event = InstanceStored(event_id="e" * 32, study_uid=inst.study_uid, series_uid=series, sop_uid=inst.sop_uid,
                           **stored_event_fields(inst))
    detail = event.to_detail()
    assert event.image_set_id == doc["ImageSetID"] and event.frame_ids == (fid,)
    assert "DOE" not in detail and "MRN-000123" not in detail


def test_instance_stored_refuses_a_malformed_image_set_id() -> None:
    base = {"study_uid": "1.2", "series_uid": "1.3", "sop_uid": "1.4", "sop_class_uid": "1.5", "modality": "CT",
            "number_of_frames": 1, "rows": 1, "columns": 1, "original_key": "k", "frames_prefix": "f",
            "metadata_key": "m", "content_sha256": "a" * 64, "size_bytes": 1, "htj2k_bytes": 1,
            "patient_pseudo_id": "p", "source": "stow"}
    assert InstanceStored(**base).image_set_id is None  # the default store's events are unchanged
    with pytest.raises(ValidationError):
        InstanceStored(**base, image_set_id="../../etc")


@pytest.mark.asyncio(loop_scope="session")
async def test_the_stubbed_client_validates_requests_and_responses_against_the_published_model() -> None:
    """The guard the integration test relies on: a request AWS would refuse fails before any response is returned,
    and a response AWS would never send cannot even be queued."""
    start = {"jobName": "x", "dataAccessRoleArn": ex.ROLE_ARN, "datastoreId": ex.DATASTORE_ID,
             "inputS3Uri": "s3://b/i/", "outputS3Uri": "s3://b/o/"}
    async with get_session().create_client("medical-imaging", region_name="us-east-1",
                                           aws_access_key_id="x", aws_secret_access_key="x") as ahi:
        with AioStubber(ahi) as stub:
            with pytest.raises(ParamValidationError, match="jobId"):  # botocore checks types, not enum values
                stub.add_response("start_dicom_import_job", {"datastoreId": ex.DATASTORE_ID, "jobId": 42,
                                                             "jobStatus": "SUBMITTED", "submittedAt": 0})
            stub.add_response("start_dicom_import_job", {"datastoreId": ex.DATASTORE_ID, "jobId": "j1",
                                                         "jobStatus": "SUBMITTED", "submittedAt": 0})
            with pytest.raises(ParamValidationError, match="dataAccessRoleArn"):
                await ahi.start_dicom_import_job(**{k: v for k, v in start.items() if k != "dataAccessRoleArn"})
            with pytest.raises(ParamValidationError, match="jobName"):
                await ahi.start_dicom_import_job(**{**start, "clientToken": "t", "jobName": 42})
            got = await ahi.start_dicom_import_job(**start, clientToken="t")
            assert got["jobStatus"] == "SUBMITTED"
            stub.assert_no_pending_responses()


@pytest.mark.asyncio(loop_scope="session")
async def test_ingestion_routes_healthimaging_job_events_to_its_imports() -> None:
    """The documented envelope, parsed as the consumer parses it, reaches ``Imports.job_changed`` by its detail-type."""
    from types import SimpleNamespace

    from services.ingestion.bootstrap import SPEC

    calls: list[tuple[str, str]] = []

    async def job_changed(datastore_id: str, job_id: str) -> dict[str, str]:
        calls.append((datastore_id, job_id))
        return {"job_id": job_id}

    deps = SimpleNamespace(pipeline=SimpleNamespace(imports=SimpleNamespace(job_changed=job_changed)))
    handlers = SPEC.bind_handlers(deps)
    for status in ("COMPLETED", "FAILED"):
        env = parse_envelope(json.dumps(ex.import_job_event("job" + status.lower(), status)))
        assert await handlers[env.detail_type](parse_detail(env.detail_type, env.detail), None) == {
            "job_id": "job" + status.lower()}
    assert calls == [(ex.DATASTORE_ID, "jobcompleted"), (ex.DATASTORE_ID, "jobfailed")]
