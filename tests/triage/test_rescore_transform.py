"""A large re-scoring pass runs as one batch transform job (issue #18): the unread images' originals go through
``python -m training.serve transform`` (the docker-free runner, a real child process against the moto server), and
each result becomes a re-score, exactly once per unread image, whichever of two triage tasks applies it. The probability
is the one triage gives the same image itself (the same preprocessing, from the original instead of the HTJ2K frame).
What the job could not score (an original that is gone) is re-scored image by image in the next pass. With the
SageMaker runner, the embedded endpoint accepts CreateModel and CreateTransformJob (the request shapes are checked by
botocore against the service model) but writes no results: every image falls back to the tasks, still once each.

Real parts: the moto server, a trained ResNet-18, instances stored as HTJ2K with their P10 originals, the bus with a
capture queue, the transform subprocess."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from services.triage.adapters.transform import RECORD_PREFIX
from services.triage.service import Triage
from services.triage.settings import TriageSettings
from shared import event_names as ev
from shared import storage
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.events import ModelApproved
from shared.publisher import EventPublisher
from tests.support.triage_data import Case, make_case, trained_model_tar
from tests.support.triage_verification_procs import capture_queue, captured, install_champion, store_instance

session_loop = pytest.mark.asyncio(loop_scope="session")


def original_p10(case: Case) -> bytes:
    """The instance as a PACS would have sent it: the stored pixels, uncompressed, with its DICOM attributes."""
    ds = Dataset.from_json(case.meta)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelData = case.pixels.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _settings(clients: AwsClients, **kw: object) -> TriageSettings:
    return TriageSettings(**{**clients.settings.model_dump(), "triage_rescore_per_s": 100.0,
                             "triage_heatmaps": "none", "triage_precision": "fp32", "triage_transform_min": 3,
                             "triage_transform_poll_s": 0.2, "triage_transform_lease_s": 5.0, **kw})


async def _store(clients: AwsClients, triage: Triage, n: int, salt: str, *, originals: bool = True) -> list[Case]:
    s3 = await clients.s3()
    cases = []
    for i in range(n):
        case = make_case(i, 7, size=128, uid_salt=salt)
        stored = await store_instance(clients, case.pixels, case.meta, case.study_uid, case.series_uid, case.sop_uid)
        if originals:
            await s3.put_object(Bucket=clients.settings.topology.bucket("images"),
                                Key=storage.original_key(case.study_uid, case.series_uid, case.sop_uid),
                                Body=original_p10(case))
        assert (await triage.on_instance_stored(stored))["model_version"] == 1
        cases.append(case)
    return cases


def _approval(uri: str, version: int) -> ModelApproved:
    return ModelApproved(version=version, model_package_arn=f"arn:test/{version}", model_artifact_uri=uri,
                         threshold=0.5, approved_by="test", reason="test")


async def _record(clients: AwsClients, version: int) -> dict:
    ddb = await clients.dynamodb()
    resp = await ddb.get_item(TableName=clients.settings.topology.table("state"),
                              Key={"key": {"S": f"{RECORD_PREFIX}{version}"}}, ConsistentRead=True)
    return {k: next(iter(v.values())) for k, v in resp.get("Item", {}).items()}


@session_loop
async def test_two_tasks_one_job_each_unread_image_rescored_once_with_triages_probability(
        clients: AwsClients) -> None:
    await bootstrap_topology(clients)
    qname = await capture_queue(clients, [ev.INSTANCE_SCORED], name="transform")
    model, _ = trained_model_tar()
    await install_champion(clients, model, 1, 0.5)
    tasks = [Triage(clients, _settings(clients), EventPublisher(clients, "triage")) for _ in range(2)]
    for t in tasks:
        await t.holder.ensure_loaded()
        t.batcher.start()
    try:
        cases = await _store(clients, tasks[0], 5, "transform")
        gone = cases[4]  # its original is lost: the job cannot score it, the next pass does
        s3 = await clients.s3()
        await s3.delete_object(Bucket=clients.settings.topology.bucket("images"),
                               Key=storage.original_key(gone.study_uid, gone.series_uid, gone.sop_uid))
        read = cases[0]  # read before the approval: no champion re-scores it
        await tasks[0].scores.mark_read(read.sop_uid)  # what ImageVerified does
        first = {d["sop_uid"]: d for d in (e["detail"] for e in await captured(clients, qname, wait_s=1.0))}

        uri = await install_champion(clients, model, 2, 0.5)  # v2: the same weights, so the same probabilities
        await asyncio.gather(*(t.on_model_approved(_approval(uri, 2)) for t in tasks))
        await asyncio.wait_for(asyncio.gather(*(t._rescore_task for t in tasks if t._rescore_task)), timeout=240)
        events = [e["detail"] for e in await captured(clients, qname, wait_s=3.0)]
        record = await _record(clients, 2)
        listing = await s3.list_objects_v2(Bucket=clients.settings.topology.bucket("images"), Prefix="transforms/")
    finally:
        for t in tasks:
            await t.cancel_backlog()
            await t.batcher.stop()

    unread = [c.sop_uid for c in cases[1:]]
    assert sorted(d["sop_uid"] for d in events) == sorted(unread), "each unread image re-scored exactly once"
    assert all(d["model_version"] == 2 for d in events)
    for d in events:  # the job's probability is triage's own for the same image (fp32, same weights)
        assert d["probability"] == pytest.approx(first[d["sop_uid"]]["probability"], abs=1e-5)
        assert d["event_id"] != first[d["sop_uid"]]["event_id"]
    assert sum(t.rescored for t in tasks) == 4
    # one job for the two tasks; it scored the three whose originals are there, and said so
    manifests = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith("/manifest.json")]
    assert len(manifests) == 1, manifests
    results = [o["Key"] for o in listing.get("Contents", []) if o["Key"].endswith(".out")]
    assert len(results) == 3
    assert record["status"] == "done" and record["outcome"] == "Failed"  # one object failed: the job says so
    assert json.loads(record["detail"])["rescored"] == 3


@session_loop
async def test_sagemaker_runner_requests_are_valid_and_the_tasks_score_what_it_did_not(clients: AwsClients) -> None:
    await bootstrap_topology(clients)
    qname = await capture_queue(clients, [ev.INSTANCE_SCORED], name="sm")
    model, _ = trained_model_tar()
    await install_champion(clients, model, 1, 0.5)
    settings = _settings(clients, triage_transform_executor="sagemaker",
                         triage_transform_image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/radloop-training:1",
                         triage_transform_role_arn="arn:aws:iam::123456789012:role/radloop-pipeline")
    triage = Triage(clients, settings, EventPublisher(clients, "triage"))
    await triage.holder.ensure_loaded()
    triage.batcher.start()
    try:
        cases = await _store(clients, triage, 3, "sagemaker")
        await captured(clients, qname, wait_s=1.0)
        uri = await install_champion(clients, model, 2, 0.5)
        await triage.on_model_approved(_approval(uri, 2))
        assert triage._rescore_task is not None
        await asyncio.wait_for(triage._rescore_task, timeout=120)
        events = [e["detail"] for e in await captured(clients, qname, wait_s=3.0)]
        record = await _record(clients, 2)
        sm = await clients.sagemaker()
        job = await sm.describe_transform_job(TransformJobName=record["job_name"])
    finally:
        await triage.cancel_backlog()
        await triage.batcher.stop()
    assert job["TransformInput"]["DataSource"]["S3DataSource"]["S3DataType"] == "ManifestFile"
    assert job["TransformInput"]["ContentType"] == "application/dicom"
    assert record["status"] == "done" and record["outcome"] == "Completed"
    assert sorted(d["sop_uid"] for d in events) == sorted(c.sop_uid for c in cases)  # by the task, once each
    assert all(d["model_version"] == 2 for d in events)


def test_settings_refuse_a_sagemaker_runner_without_image_or_role() -> None:
    with pytest.raises(ValueError, match="RADLOOP_TRIAGE_TRANSFORM_IMAGE_URI and RADLOOP_TRIAGE_TRANSFORM_ROLE_ARN"):
        TriageSettings(triage_transform_executor="sagemaker")
    TriageSettings(triage_transform_executor="sagemaker", triage_transform_min=0)  # re-scoring in the tasks only
    with pytest.raises(ValueError, match="must exceed two polls"):
        TriageSettings(triage_transform_poll_s=60, triage_transform_lease_s=100)
