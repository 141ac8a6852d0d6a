"""AWS HealthImaging responses as AWS documents them, built around real DICOM instances.

Each builder follows one documented shape (the AWS HealthImaging Developer Guide and API Reference):

- StartDICOMImportJob / GetDICOMImportJob: ``jobStatus`` SUBMITTED -> IN_PROGRESS -> COMPLETED | FAILED, with the job
  properties GetDICOMImportJob returns;
- the job output (Developer Guide, "Understanding import jobs"): under the job's ``outputS3Uri`` HealthImaging writes a
  folder named ``{datastoreId}-DicomImport-{jobId}/`` holding ``job-output-manifest.json`` (the ``jobSummary``),
  ``SUCCESS/success.ndjson`` (``{"inputFile", "importResponse": {"imageSetId", "isPrimary"}}`` per object) and
  ``FAILURE/failure.ndjson`` (``{"inputFile", "exception": {"exceptionType", "message"}}`` per object);
- GetImageSetMetadata: a gzip JSON document with ``SchemaVersion``, ``DatastoreID``, ``ImageSetID`` and the
  ``Patient``/``Study``/``Series``/``Instances`` levels, attributes by keyword (DS and IS as strings, often padded,
  multi-valued attributes as lists), ``StoredTransferSyntaxUID`` and ``ImageFrames`` with their ``ID``,
  ``PixelDataChecksumFromBaseToFullResolution``, ``MinPixelValue``, ``MaxPixelValue`` and ``FrameSizeInBytes``;
- GetImageFrame: the frame's HTJ2K codestream, which radloop encodes here with :func:`shared.htj2k.encode`;
- the EventBridge notification HealthImaging sends when an import job ends (source ``aws.medical-imaging``).
"""

from __future__ import annotations

import gzip
import json
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pydicom

from shared import htj2k

DATASTORE_ID = "12345678901234567890123456789012"
ROLE_ARN = "arn:aws:iam::123456789012:role/radloop-healthimaging-import"


def new_id() -> str:
    """A HealthImaging id: 32 lower-case hex digits (image sets, frames, jobs)."""
    return uuid.uuid4().hex


def _ds_str(v: Any) -> Any:
    if isinstance(v, pydicom.multival.MultiValue):
        return [f"{x} " if len(str(x)) % 2 else str(x) for x in v]
    return f"{v} " if len(str(v)) % 2 else str(v)  # DICOM pads odd-length strings; HealthImaging keeps the pad


def frame_codestream(ds: pydicom.Dataset) -> bytes:
    """Frame 1 as the HTJ2K codestream GetImageFrame returns (encoded by radloop's own encoder)."""
    return htj2k.encode(np.ascontiguousarray(ds.pixel_array))


def image_set_metadata(image_set_id: str, datasets: list[pydicom.Dataset], frame_ids: dict[str, list[str]],
                       frames: dict[str, bytes]) -> dict[str, Any]:
    """The GetImageSetMetadata document of one image set holding ``datasets`` (one study)."""
    first = datasets[0]
    series: dict[str, Any] = {}
    for ds in datasets:
        s = series.setdefault(str(ds.SeriesInstanceUID), {
            "DICOM": {"Modality": ds.Modality, "SeriesInstanceUID": str(ds.SeriesInstanceUID),
                      "SeriesNumber": int(ds.get("SeriesNumber") or 1), "BodyPartExamined": "CHEST"},
            "Instances": {}})
        pixels = ds.pixel_array
        inst = {
            "SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID),
            "InstanceNumber": _ds_str(ds.get("InstanceNumber", 1)), "Rows": int(ds.Rows), "Columns": int(ds.Columns),
            "BitsAllocated": int(ds.BitsAllocated), "BitsStored": int(ds.BitsStored), "HighBit": int(ds.HighBit),
            "PixelRepresentation": int(ds.PixelRepresentation), "SamplesPerPixel": int(ds.SamplesPerPixel),
            "PhotometricInterpretation": str(ds.PhotometricInterpretation),
            "RescaleIntercept": _ds_str(ds.get("RescaleIntercept", 0)),
            "RescaleSlope": _ds_str(ds.get("RescaleSlope", 1)),
            "PixelSpacing": _ds_str(ds.get("PixelSpacing", pydicom.multival.MultiValue(str, ["1", "1"]))),
            "ImageType": list(ds.get("ImageType", ["ORIGINAL", "PRIMARY"])),
        }
        for name in ("WindowCenter", "WindowWidth"):  # the VOI LUT attributes, when the instance has them
            if name in ds:
                inst[name] = _ds_str(ds.data_element(name).value)
        sop = str(ds.SOPInstanceUID)
        s["Instances"][sop] = {
            "DICOM": inst, "DICOMVRs": {}, "StoredTransferSyntaxUID": htj2k.HTJ2K_LOSSLESS_RPCL,
            "ChecksumType": "DECOMPRESSED",
            "ImageFrames": [{
                "ID": fid,
                "PixelDataChecksumFromBaseToFullResolution": [
                    {"Width": int(ds.Columns), "Height": int(ds.Rows), "Checksum": zlib.crc32(pixels.tobytes())}],
                "MinPixelValue": int(pixels.min()), "MaxPixelValue": int(pixels.max()),
                "FrameSizeInBytes": len(frames[fid]),
            } for fid in frame_ids[sop]],
        }
    return {
        "SchemaVersion": "1.1", "DatastoreID": DATASTORE_ID, "ImageSetID": image_set_id,
        "Patient": {"DICOM": {"PatientBirthDate": None, "PatientSex": str(first.get("PatientSex", "")),
                              "PatientID": str(first.PatientID), "PatientName": str(first.PatientName)}},
        "Study": {"DICOM": {"StudyTime": str(first.get("StudyTime", "")), "AccessionNumber": "",
                            "StudyID": str(first.get("StudyID", "")), "StudyInstanceUID": str(first.StudyInstanceUID),
                            "StudyDate": str(first.get("StudyDate", "")), "StudyDescription": "CT CHEST"},
                  "Series": series},
    }


def gzip_json(doc: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(doc).encode())


def job_properties(job_id: str, status: str, *, input_uri: str, output_uri: str) -> dict[str, Any]:
    """GetDICOMImportJob's ``jobProperties``."""
    props: dict[str, Any] = {
        "jobId": job_id, "jobName": "radloop-import", "jobStatus": status, "datastoreId": DATASTORE_ID,
        "dataAccessRoleArn": ROLE_ARN, "submittedAt": datetime(2026, 12, 5, 11, 0, tzinfo=UTC),
        "inputS3Uri": input_uri, "outputS3Uri": output_uri,
    }
    if status in ("COMPLETED", "FAILED"):
        props["endedAt"] = datetime(2026, 12, 5, 11, 4, tzinfo=UTC)
    if status == "FAILED":
        props["message"] = "Access denied to the input S3 location"
    return props


def job_output(job_id: str, *, input_uri: str, output_uri: str, bucket: str, succeeded: dict[str, str],
               failed: dict[str, tuple[str, str]]) -> dict[str, bytes]:
    """The objects an import job writes: ``{key: body}`` for ``succeeded`` (input key -> image set id) and ``failed``
    (input key -> (exceptionType, message))."""
    out_key = output_uri.removeprefix(f"s3://{bucket}/") + f"{DATASTORE_ID}-DicomImport-{job_id}/"
    image_sets: dict[str, int] = {}
    for isid in succeeded.values():
        image_sets[isid] = image_sets.get(isid, 0) + 1
    summary = {"jobSummary": {
        "jobId": job_id, "datastoreId": DATASTORE_ID, "inputS3Uri": input_uri,
        "outputS3Uri": f"s3://{bucket}/{out_key}", "successOutputS3Uri": f"s3://{bucket}/{out_key}SUCCESS/",
        "failureOutputS3Uri": f"s3://{bucket}/{out_key}FAILURE/",
        "numberOfScannedFiles": len(succeeded) + len(failed), "numberOfImportedFiles": len(succeeded),
        "numberOfFilesWithCustomerError": len(failed), "numberOfFilesWithServerError": 0,
        "numberOfGeneratedImageSets": len(image_sets),
        "imageSetsSummary": [{"imageSetId": k, "numberOfMatchedSOPInstances": n} for k, n in image_sets.items()],
    }}
    success = "".join(json.dumps({"inputFile": key, "importResponse": {"imageSetId": isid, "isPrimary": True}}) + "\n"
                      for key, isid in succeeded.items())
    failure = "".join(json.dumps({"inputFile": key, "exception": {"exceptionType": t, "message": m}}) + "\n"
                      for key, (t, m) in failed.items())
    return {f"{out_key}job-output-manifest.json": json.dumps(summary).encode(),
            f"{out_key}SUCCESS/success.ndjson": success.encode(),
            f"{out_key}FAILURE/failure.ndjson": failure.encode()}


def import_job_event(job_id: str, status: str = "COMPLETED") -> dict[str, Any]:
    """The EventBridge envelope of HealthImaging's import-job notification, as it arrives in an SQS body."""
    return {
        "version": "0", "id": str(uuid.uuid4()),
        "detail-type": "Import Job Completed" if status == "COMPLETED" else "Import Job Failed",
        "source": "aws.medical-imaging", "account": "123456789012", "time": "2026-12-05T11:04:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {"imagingVersion": "1.0", "datastoreId": DATASTORE_ID, "jobId": job_id,
                   "jobName": "radloop-import", "jobStatus": status,
                   "inputS3Uri": "s3://bucket/healthimaging/import/x/",
                   "outputS3Uri": "s3://bucket/healthimaging/output/x/1/"},
    }
