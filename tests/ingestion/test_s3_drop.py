"""S3 drop folder: objects put under imports/ travel S3 -> EventBridge -> the ingestion queue -> the pipeline. A good
object ends up indexed and is deleted; a corrupt one ends up in imports-rejected/ with a .reason.json."""

from __future__ import annotations

import json
import time

from tests.ingestion.stow_helpers import fresh


def test_drop_folder_good_and_bad(service, aws) -> None:
    ds, data = fresh("693_UNCR.dcm")
    aws.s3.put_object(Bucket=aws.ingest, Key="imports/batch-1/good.dcm", Body=data)
    aws.s3.put_object(Bucket=aws.ingest, Key="imports/batch-1/bad.dcm", Body=data[:2000])
    aws.s3.put_object(Bucket=aws.ingest, Key="imports/batch-1/notes.txt", Body=b"not a DICOM file")
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    deadline = time.monotonic() + 45
    item, pending = None, ["x"]
    while time.monotonic() < deadline:
        item = aws.instance(study, series, sop)
        pending = aws.keys(aws.ingest, prefix="imports/")
        if item is not None and not pending:
            break
        time.sleep(0.5)
    assert item is not None and item["source"] == "s3", service.log()[-2000:]
    assert pending == [], f"objects left in imports/: {pending}"
    rejected = set(aws.keys(aws.ingest, prefix="imports-rejected/"))
    assert {"imports-rejected/batch-1/bad.dcm", "imports-rejected/batch-1/bad.dcm.reason.json",
            "imports-rejected/batch-1/notes.txt", "imports-rejected/batch-1/notes.txt.reason.json"} <= rejected
    reason = json.loads(aws.get("imports-rejected/batch-1/bad.dcm.reason.json", aws.ingest))
    assert reason["failure_reason_hex"] in ("0xA900", "0xC000") and len(reason["reason"]) > 20
    assert reason["source_key"] == "imports/batch-1/bad.dcm"
    assert aws.get("imports-rejected/batch-1/bad.dcm", aws.ingest) == data[:2000]
    assert aws.get(item["original_key"]) == data
