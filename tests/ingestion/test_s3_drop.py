"""S3 drop folder: objects put under imports/ travel S3 -> EventBridge -> the ingestion queue -> the pipeline. A good
object ends up indexed and is deleted; a corrupt one ends up in imports-rejected/ with a .reason.json."""

from __future__ import annotations

import hashlib
import json
import time

from tests.ingestion.stow_helpers import fresh


def test_drop_folder_good_and_bad(service, aws, rejected_queue) -> None:
    ds, data = fresh("693_UNCR.dcm")
    aws.s3.put_object(Bucket=aws.ingest, Key="imports/batch-1/good.dcm", Body=data)
    # A hospital may name its objects after the patient: the key stays out of the InstanceRejected event.
    aws.s3.put_object(Bucket=aws.ingest, Key="imports/DOE^JANE-19230517/bad.dcm", Body=data[:2000])
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
    assert {"imports-rejected/DOE^JANE-19230517/bad.dcm", "imports-rejected/DOE^JANE-19230517/bad.dcm.reason.json",
            "imports-rejected/batch-1/notes.txt", "imports-rejected/batch-1/notes.txt.reason.json"} <= rejected
    reason = json.loads(aws.get("imports-rejected/DOE^JANE-19230517/bad.dcm.reason.json", aws.ingest))
    assert reason["failure_reason_hex"] in ("0xA900", "0xC000") and len(reason["reason"]) > 20
    assert reason["source_key"] == "imports/DOE^JANE-19230517/bad.dcm"
    assert aws.get("imports-rejected/DOE^JANE-19230517/bad.dcm", aws.ingest) == data[:2000]
    events: list[dict] = []
    deadline = time.monotonic() + 20
    while len(events) < 2 and time.monotonic() < deadline:
        for m in aws.sqs.receive_message(QueueUrl=rejected_queue, MaxNumberOfMessages=10,
                                         WaitTimeSeconds=1).get("Messages", []):
            events.append(json.loads(m["Body"]))
    assert len(events) >= 2, events
    assert not any("DOE" in json.dumps(e) or "19230517" in json.dumps(e) for e in events), events
    keyed = {e["detail"].get("object_key_sha256") for e in events}
    assert hashlib.sha256(b"imports/DOE^JANE-19230517/bad.dcm").hexdigest() in keyed, keyed
    assert aws.get(item["original_key"]) == data
