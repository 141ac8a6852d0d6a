"""The learning loop with ``image_store=healthimaging``: a verified read of an image that HealthImaging holds reaches
the training manifest with its data store, image set and frame ids, and the preprocess step reads that frame and its
metadata from HealthImaging (GetImageFrame, GetImageSetMetadata), giving the model exactly the input triage serves.

Before this, every manifest record named the images bucket's ``frames/`` and ``metadata/`` keys, which do not exist
with HealthImaging: the preprocess step failed with NoSuchKey and the loop stopped at its first run.

HealthImaging is a real boto3 ``medical-imaging`` client under botocore's Stubber, which checks every request against
AWS's published API model (nothing offline implements the service); the orchestrator's label projection is the real
one on the session's moto server.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import boto3
import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from services.pipeline_orchestrator.adapters.store import OrchestratorStore
from services.pipeline_orchestrator.domain.snapshot import build_snapshot
from services.verification.domain.cases import apply_read, apply_stored
from shared import datasets, storage
from shared.aws import AwsClients
from shared.events import ImageVerified, InstanceStored
from shared.preprocessing import params_from_dataset, preprocess
from tests.image_store import ahi_examples as ex
from training.preprocess import FrameReader, _fetch, read_manifest
from training.synthetic import case_spec, render, to_dataset


def _stored(ds, image_set_id: str, frame_id: str) -> InstanceStored:
    """``InstanceStored`` as ingestion publishes it after a HealthImaging import (services/ingestion/imports.py)."""
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    return InstanceStored(
        study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid=str(ds.SOPClassUID), modality="CR",
        number_of_frames=1, rows=int(ds.Rows), columns=int(ds.Columns),
        original_key=f"healthimaging/import/b1/{sop}.dcm", frames_prefix="", metadata_key="",
        content_sha256="0" * 64, size_bytes=1, htj2k_bytes=1, patient_pseudo_id="pseudo-7", source="stow",
        image_set_id=image_set_id, frame_ids=(frame_id,), datastore_id=ex.DATASTORE_ID,
        occurred_at=datetime(2026, 12, 6, tzinfo=UTC))


def _streaming(data: bytes) -> StreamingBody:
    return StreamingBody(io.BytesIO(data), len(data))


def _stubbed_medical_imaging() -> tuple[object, Stubber]:
    client = boto3.client("medical-imaging", region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    return client, Stubber(client)


def test_a_default_store_record_serializes_as_before() -> None:
    """The new fields are left out when absent, so a manifest of radloop's store keeps its bytes and its sha256."""
    rec = datasets.ManifestRecord(sop_uid="1.2.3", study_uid="1.2", series_uid="1.2.4", bucket="b",
                                  frame_key="frames/1.2/1.2.4/1.2.3/1.jph", metadata_key="metadata/1.2/1.2.4/1.2.3.json",
                                  label="pneumonia", target=1, label_version=1, reader="r", patient_pseudo_id="p",
                                  split="train")
    line = json.loads(datasets.serialize([rec]))
    assert set(line) == {"sop_uid", "study_uid", "series_uid", "bucket", "frame_key", "metadata_key", "label",
                         "target", "label_version", "reader", "patient_pseudo_id", "split"}
    assert datasets.frame_location({"image_set_id": ex.new_id()}) == {}  # all three or none


@pytest.mark.asyncio(loop_scope="session")
async def test_a_read_of_a_healthimaging_image_is_trained_on_from_healthimaging(clients: AwsClients, tmp_path) -> None:
    rd = render(case_spec(5, seed=9, size=96, prevalence=0.5))
    ds = to_dataset(rd)
    image_set_id, frame_id = ex.new_id(), ex.new_id()
    codestream = ex.frame_codestream(ds)
    sop = str(ds.SOPInstanceUID)

    # Verification: the case remembers where frame 1 is, and the final read's ImageVerified carries it.
    case = apply_stored(None, _stored(ds, image_set_id, frame_id), mode="single")
    out = apply_read(case, "dr-a", "pneumonia", 0.9, None, now=0)
    (verified,) = [e for e in out.events if isinstance(e, ImageVerified)]
    assert (verified.datastore_id, verified.image_set_id, verified.frame_id) == (ex.DATASTORE_ID, image_set_id,
                                                                                 frame_id)
    assert verified.frame_key == storage.frame_key(verified.study_uid, verified.series_uid, sop, 1)

    # The orchestrator's projection (DynamoDB, moto) keeps it; the snapshot's manifest names it.
    store = OrchestratorStore(clients)
    assert await store.project_label(verified)
    (item,) = [i for i in await store.all_labels() if i["sop_uid"] == sop]
    snap = build_snapshot([item])
    (tmp_path / "manifest.json").write_bytes(snap.data)
    (rec,), sha = read_manifest(tmp_path)
    assert sha == snap.sha256
    assert (rec.datastore_id, rec.image_set_id, rec.frame_id) == (ex.DATASTORE_ID, image_set_id, frame_id)

    # Preprocess: GetImageSetMetadata (gzip, once per image set) and GetImageFrame, checked against the API model;
    # no S3 call (the reader has no S3 client and would make one only for a default-store record).
    client, stub = _stubbed_medical_imaging()
    doc = ex.image_set_metadata(image_set_id, [ds], {sop: [frame_id]}, {frame_id: codestream})
    stub.add_response("get_image_set_metadata", {"imageSetMetadataBlob": _streaming(ex.gzip_json(doc)),
                                                 "contentType": "application/json", "contentEncoding": "gzip"},
                      expected_params={"datastoreId": ex.DATASTORE_ID, "imageSetId": image_set_id})
    for _ in range(2):
        stub.add_response("get_image_frame", {"imageFrameBlob": _streaming(codestream),
                                              "contentType": "application/octet-stream"},
                          expected_params={"datastoreId": ex.DATASTORE_ID, "imageSetId": image_set_id,
                                           "imageFrameInformation": {"imageFrameId": frame_id}})
    reader = FrameReader(medical_imaging=client)
    with stub:
        trained = _fetch(reader, rec, 64)
        again = _fetch(reader, rec, 64)  # the image set's document is cached: one more GetImageFrame only
        stub.assert_no_pending_responses()
    served = preprocess(ds.pixel_array, params_from_dataset(ds), size=64)
    assert trained.dtype == np.float32 and np.array_equal(trained, served) and np.array_equal(again, served)
