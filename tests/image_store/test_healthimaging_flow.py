"""The whole ``image_store=healthimaging`` path, ingest -> import job -> index -> WADO-RS and triage, against a real
``medical-imaging`` client whose every request botocore validates against AWS's published API model
(:class:`aiobotocore.stub.AioStubber`), with responses shaped as AWS documents them (tests/image_store/ahi_examples.py).

S3, DynamoDB and EventBridge are the session's moto server: the staged P10 objects, the batch records, the job output
manifests (written where HealthImaging writes them), the index and the outbox are all real. Only HealthImaging's own
API is stubbed, because nothing offline implements it. Nothing here has run against a live AWS account.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
import pytest_asyncio
from aiobotocore.response import AioStreamingBody
from aiobotocore.stub import AioStubber
from botocore.stub import ANY

from services.ingestion.bootstrap import SPEC as INGESTION
from services.ingestion.bootstrap import IngestionDeps
from services.ingestion.domain.pool import CpuPool
from services.ingestion.service import IngestPipeline
from services.ingestion.settings import IngestionSettings
from services.interop.adapters.archive import Archive
from services.interop.service import Results
from services.interop.settings import InteropSettings
from services.streaming_gateway.bootstrap import SPEC as GATEWAY
from services.streaming_gateway.settings import GatewaySettings
from services.triage.adapters.images import Images
from shared import htj2k
from shared.audit import AuditLog
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.consumer import SqsConsumer
from shared.events import Event, InstanceRejected, InstanceScored, InstanceStored
from shared.idempotency import IdempotencyStore
from shared.image_store.factory import open_image_store
from shared.image_store.healthimaging import HealthImagingStore
from shared.index_writer import get_instance
from shared.publisher import EventPublisher
from shared.service import Runtime, build_app
from tests.image_store import ahi_examples as ex
from tests.ingestion.stow_helpers import fresh

pytestmark = pytest.mark.asyncio(loop_scope="session")

HI = {"image_store": "healthimaging", "healthimaging_datastore_id": ex.DATASTORE_ID,
      "healthimaging_import_role_arn": ex.ROLE_ARN, "healthimaging_batch_window_s": 3600.0}


class _Content:
    """What aiohttp's ``ClientResponse.content`` offers aiobotocore's streaming body: ``read(n)`` and ``at_eof()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        out, self._data = (self._data, b"") if n < 0 else (self._data[:n], self._data[n:])
        return out

    def at_eof(self) -> bool:
        return not self._data


class _Raw:
    url = "https://medical-imaging.us-east-1.amazonaws.com"

    def __init__(self, data: bytes) -> None:
        self.content = _Content(data)

    def close(self) -> None:
        pass


def streaming(data: bytes) -> AioStreamingBody:
    """A streaming blob as aiobotocore returns one (HealthImaging's frame and metadata payloads)."""
    return AioStreamingBody(_Raw(data), len(data))


class RecordingPublisher(EventPublisher):
    """The real publisher (to the moto bus), remembering what it published."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.events: list[Event] = []

    async def publish_many(self, events: Any) -> None:
        await super().publish_many(events)
        self.events.extend(events)


@pytest_asyncio.fixture(loop_scope="session")
async def ahi(adeployment, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, AioStubber]]:
    """One real aiobotocore ``medical-imaging`` client with a stubber; every AwsClients of this test hands it out."""
    settings = IngestionSettings().model_copy(update={"aws_endpoint_url": adeployment.aws_endpoint_url,
                                                      "prefix": adeployment.prefix})
    async with AwsClients(settings) as own:
        client = await own.get("medical-imaging")
        real_get = AwsClients.get

        async def get(self: AwsClients, service: str) -> Any:
            return client if service == "medical-imaging" else await real_get(self, service)

        monkeypatch.setattr(AwsClients, "get", get)
        with AioStubber(client) as stub:
            yield client, stub
            stub.assert_no_pending_responses()


def _pipeline(adeployment, clients: AwsClients, **update: Any) -> tuple[IngestPipeline, RecordingPublisher, CpuPool]:
    settings = IngestionSettings().model_copy(update={"aws_endpoint_url": adeployment.aws_endpoint_url,
                                                      "prefix": adeployment.prefix, **HI, **update})
    publisher = RecordingPublisher(clients, "ingestion")
    rt = Runtime("ingestion", settings, clients, publisher, IdempotencyStore(clients), AuditLog(clients, "ingestion"))
    pool = CpuPool(1, "thread")
    return IngestPipeline(rt, pool), publisher, pool


async def _put_job_output(clients: AwsClients, bucket: str, objects: dict[str, bytes]) -> None:
    """What HealthImaging writes to the job's output location when the job ends."""
    s3 = await clients.s3()
    for key, body in objects.items():
        await s3.put_object(Bucket=bucket, Key=key, Body=body)


async def _wait_for(pred: Any, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _gateway(adeployment) -> AsyncIterator[httpx.AsyncClient]:
    settings = GatewaySettings().model_copy(update={"aws_endpoint_url": adeployment.aws_endpoint_url,
                                                    "prefix": adeployment.prefix, **HI})
    app = build_app(GATEWAY, settings)
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",
            headers={"Authorization": f"Bearer {mint_token(settings, 'viewer')}"}) as http:
        yield http


async def test_ingest_import_index_and_retrieve_through_healthimaging(adeployment, clients: AwsClients, ahi) -> None:
    client, stub = ahi
    pipeline, publisher, pool = _pipeline(adeployment, clients)
    store = pipeline.store
    assert isinstance(store, HealthImagingStore)
    bucket = adeployment.topology.bucket("ingestion")
    good, good_bytes = fresh("693_UNCR.dcm", PatientName="DOE^JANE", PatientID="MRN-4711")
    bad, bad_bytes = fresh("693_UNCR.dcm", PatientName="ROE^RICHARD", PatientID="MRN-4712")
    study, series, sop = str(good.StudyInstanceUID), str(good.SeriesInstanceUID), str(good.SOPInstanceUID)
    pipeline.outbox.start()
    try:
        # 1. Received: staged under the import prefix, durable, acknowledged; not indexed, not announced yet.
        r1 = await pipeline.ingest(good_bytes, source="stow")
        r2 = await pipeline.ingest(bad_bytes, source="stow")
        assert (r1.status, r2.status) == ("stored", "stored")
        assert (await pipeline.ingest(good_bytes, source="stow")).status == "duplicate"  # staged = stored
        ddb = await clients.dynamodb()
        table = adeployment.topology.table("instances")
        assert await get_instance(ddb, table, study, series, sop) is None
        s3 = await clients.s3()
        staged = sorted(o["Key"] for o in (await s3.list_objects_v2(
            Bucket=bucket, Prefix="healthimaging/import/")).get("Contents", []))
        assert len(staged) == 2 and all(k.endswith(".dcm") for k in staged)
        batch = staged[0].split("/")[2]
        assert staged == sorted(f"healthimaging/import/{batch}/{u}.dcm" for u in (sop, str(bad.SOPInstanceUID)))
        good_key = f"healthimaging/import/{batch}/{sop}.dcm"
        bad_key = f"healthimaging/import/{batch}/{bad.SOPInstanceUID}.dcm"
        staged_body = await s3.get_object(Bucket=bucket, Key=good_key)
        async with staged_body["Body"] as b:
            assert await b.read() == good_bytes  # the instance as received (no de-identification configured)
        assert not [e for e in publisher.events if isinstance(e, InstanceStored)]

        # 2. One StartDICOMImportJob for the batch folder (the batch id is the client token).
        job_id = ex.new_id()
        input_uri = f"s3://{bucket}/healthimaging/import/{batch}/"
        output_uri = f"s3://{bucket}/healthimaging/output/{batch}/1/"
        stub.add_response("start_dicom_import_job", {
            "datastoreId": ex.DATASTORE_ID, "jobId": job_id, "jobStatus": "SUBMITTED",
            "submittedAt": ex.job_properties(job_id, "SUBMITTED", input_uri=input_uri,
                                             output_uri=output_uri)["submittedAt"]},
            expected_params={"jobName": ANY, "dataAccessRoleArn": ex.ROLE_ARN, "clientToken": f"{batch}-1",
                             "datastoreId": ex.DATASTORE_ID, "inputS3Uri": input_uri, "outputS3Uri": output_uri})
        assert await store.submit_due(force=True) == 1
        assert await store.submit_due(force=True) == 0  # submitted once

        # 3. Polling while the job runs finds nothing to do.
        stub.add_response("get_dicom_import_job", {"jobProperties": ex.job_properties(
            job_id, "IN_PROGRESS", input_uri=input_uri, output_uri=output_uri)},
            expected_params={"datastoreId": ex.DATASTORE_ID, "jobId": job_id})
        assert await pipeline.imports.tick(poll=True) == 0

        # 4. The job ends: HealthImaging writes its output (one instance imported, one refused) and sends its event.
        image_set_id, frame_id = ex.new_id(), ex.new_id()
        codestream = ex.frame_codestream(good)
        doc = ex.image_set_metadata(image_set_id, [good], {sop: [frame_id]}, {frame_id: codestream})
        await _put_job_output(clients, bucket, ex.job_output(
            job_id, input_uri=input_uri, output_uri=output_uri, bucket=bucket, succeeded={good_key: image_set_id},
            failed={bad_key: ("ValidationException", "DICOM attribute PatientName 'ROE^RICHARD' is not valid")}))
        stub.add_response("get_dicom_import_job", {"jobProperties": ex.job_properties(
            job_id, "COMPLETED", input_uri=input_uri, output_uri=output_uri)},
            expected_params={"datastoreId": ex.DATASTORE_ID, "jobId": job_id})
        stub.add_response("get_image_set_metadata", {
            "imageSetMetadataBlob": streaming(ex.gzip_json(doc)), "contentType": "application/json",
            "contentEncoding": "gzip"}, expected_params={"datastoreId": ex.DATASTORE_ID, "imageSetId": image_set_id})
        # HealthImaging's event, as EventBridge delivers it to ingestion's queue, twice (delivery is at least once),
        # handled by the real consumer and the service's handler map.
        sqs = await clients.sqs()
        queue_url = (await sqs.get_queue_url(QueueName=adeployment.topology.queue_for("ingestion").name))["QueueUrl"]
        envelope = json.dumps(ex.import_job_event(job_id))
        for _ in range(2):
            await sqs.send_message(QueueUrl=queue_url, MessageBody=envelope)
        deps = IngestionDeps(rt=pipeline.rt, pool=pool, pipeline=pipeline)
        consumer = SqsConsumer(clients, "ingestion", INGESTION.bind_handlers(deps),
                               idempotency=IdempotencyStore(clients), wait_time_s=1)
        await asyncio.wait_for(consumer.run(max_messages=2), 60)
        await consumer.drain(10)
        assert pipeline.imports.stats == {"jobs": 1, "stored": 1, "rejected": 1}  # the duplicate changed nothing
        assert await store.poll_imports() == []  # acknowledged: nothing left to report

        # 5. Indexed from GetImageSetMetadata; InstanceStored carries the image set and frame ids; no PHI in events.
        item = await get_instance(ddb, table, study, series, sop)
        assert item is not None and item["image_set_id"] == image_set_id and item["frame_ids"] == [frame_id]
        assert json.loads(item["dicom_json"])["00100020"]["Value"] == ["MRN-4711"] and item["original_key"] == good_key
        await _wait_for(lambda: any(isinstance(e, InstanceStored) for e in publisher.events))
        (stored,) = [e for e in publisher.events if isinstance(e, InstanceStored)]
        assert (stored.sop_uid, stored.image_set_id, stored.frame_ids) == (sop, image_set_id, (frame_id,))
        (rejected,) = [e for e in publisher.events if isinstance(e, InstanceRejected)]
        assert rejected.sop_uid == str(bad.SOPInstanceUID)
        assert rejected.reason == "healthimaging-import-refused:ValidationException"
        for e in publisher.events:
            assert not [w for w in ("DOE", "ROE", "MRN-47") if w in e.to_detail()], e.name
        assert await get_instance(ddb, table, str(bad.StudyInstanceUID), str(bad.SeriesInstanceUID),
                                  str(bad.SOPInstanceUID)) is None
        # The refused instance's claim is released: sending it again stages it again (not "duplicate").
        assert (await pipeline.ingest(bad_bytes, source="stow")).status == "stored"
    finally:
        await pipeline.outbox.stop()
        await asyncio.to_thread(pool.shutdown)

    # 6. WADO-RS: frames from GetImageFrame (HTJ2K passed through, or decoded), metadata and QIDO from the index.
    frame_call = {"datastoreId": ex.DATASTORE_ID, "imageSetId": image_set_id,
                  "imageFrameInformation": {"imageFrameId": frame_id}}
    stub.add_response("get_image_frame", {"imageFrameBlob": streaming(codestream), "contentType": "application/octet-stream"},
                      expected_params=frame_call)
    async with _gateway(adeployment) as http:
        base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        r = await http.get(f"{base}/frames/1", headers={
            "Accept": f'multipart/related; type="image/jphc"; transfer-syntax={htj2k.HTJ2K_LOSSLESS_RPCL}'})
        assert r.status_code == 200, r.text
        assert codestream in r.content  # the codestream HealthImaging returned, byte for byte
        r = await http.get(f"{base}/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"})
        assert r.status_code == 200, r.text  # decoded (the cached codestream: no second GetImageFrame)
        assert good.pixel_array.astype("<i2").tobytes() in r.content
        r = await http.get(f"{base}/metadata", headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200
        (meta,) = r.json()
        assert meta["00100020"]["Value"] == ["MRN-4711"] and meta["00080018"]["Value"] == [sop]
        r = await http.get("/dicomweb/studies", params={"StudyInstanceUID": study},
                           headers={"Accept": "application/dicom+json"})
        assert r.status_code == 200 and r.json()[0]["0020000D"]["Value"] == [study]

    # 7. Triage reads the metadata (GetImageSetMetadata) and frame 1 (GetImageFrame) through the same interface. The
    #    metadata is read first here only to fix the order of the two calls (read_frame makes them concurrently); the
    #    image set's document is then cached, so read_frame costs one GetImageFrame.
    stub.add_response("get_image_set_metadata", {
        "imageSetMetadataBlob": streaming(ex.gzip_json(doc)), "contentType": "application/json",
        "contentEncoding": "gzip"}, expected_params={"datastoreId": ex.DATASTORE_ID, "imageSetId": image_set_id})
    stub.add_response("get_image_frame", {"imageFrameBlob": streaming(codestream), "contentType": "application/octet-stream"},
                      expected_params=frame_call)
    settings = IngestionSettings().model_copy(update={"aws_endpoint_url": adeployment.aws_endpoint_url,
                                                      "prefix": adeployment.prefix, **HI})
    images = Images(clients, open_image_store(settings, clients))
    triage_meta = await images.metadata(study, series, sop)
    assert triage_meta is not None and triage_meta["00280010"]["Value"] == [int(good.Rows)]
    frame = await images.read_frame(study, series, sop)
    assert np.array_equal(frame.pixels, good.pixel_array)
    stub.assert_no_pending_responses()

    # 8. Interop builds the AI SR from the instance's original, which this store keeps (the staged import object;
    #    radloop's images bucket has none), and hands it to ingestion's drop folder. No HealthImaging call is needed.
    isettings = InteropSettings().model_copy(update={"aws_endpoint_url": adeployment.aws_endpoint_url,
                                                     "prefix": adeployment.prefix, **HI})
    results = Results(Archive(clients, open_image_store(isettings, clients)), isettings)
    out = await results.on_scored(InstanceScored(study_uid=study, series_uid=series, sop_uid=sop, status="scored",
                                                 probability=0.91, threshold=0.5, priority="urgent", model_version=3))
    assert set(out) == {"sr"} and out["sr"].startswith("imports/interop/")
    sr_obj = await s3.get_object(Bucket=bucket, Key=out["sr"])
    async with sr_obj["Body"] as b:
        sr = pydicom.dcmread(io.BytesIO(await b.read()))
    assert (sr.Modality, sr.StudyInstanceUID, sr.PatientID) == ("SR", study, "MRN-4711")


async def test_polling_finishes_a_job_whose_event_never_came_and_a_failed_job_is_started_again(
        adeployment, clients: AwsClients, ahi) -> None:
    client, stub = ahi
    pipeline, publisher, pool = _pipeline(adeployment, clients, healthimaging_job_attempts=2)
    bucket = adeployment.topology.bucket("ingestion")
    ds, data = fresh("693_UNCR.dcm")
    study, series, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    try:
        assert (await pipeline.ingest(data, source="dimse")).status == "stored"
        s3 = await clients.s3()
        (key,) = [o["Key"] for o in (await s3.list_objects_v2(Bucket=bucket, Prefix="healthimaging/import/"))["Contents"]
                  if o["Key"].endswith(f"/{sop}.dcm")]
        batch = key.split("/")[2]
        input_uri = f"s3://{bucket}/healthimaging/import/{batch}/"
        jobs = [ex.new_id(), ex.new_id()]
        outs = [f"s3://{bucket}/healthimaging/output/{batch}/{n}/" for n in (1, 2)]

        def start(attempt: int) -> None:
            job, out = jobs[attempt - 1], outs[attempt - 1]
            stub.add_response("start_dicom_import_job", {
                "datastoreId": ex.DATASTORE_ID, "jobId": job, "jobStatus": "SUBMITTED",
                "submittedAt": ex.job_properties(job, "SUBMITTED", input_uri=input_uri, output_uri=out)["submittedAt"]},
                expected_params={"jobName": ANY, "dataAccessRoleArn": ex.ROLE_ARN, "clientToken": f"{batch}-{attempt}",
                                 "datastoreId": ex.DATASTORE_ID, "inputS3Uri": input_uri, "outputS3Uri": out})

        start(1)
        assert await pipeline.store.submit_due(force=True) == 1
        # The first attempt fails as a whole (say, the import role lacked access): started again, not rejected.
        stub.add_response("get_dicom_import_job", {"jobProperties": ex.job_properties(
            jobs[0], "FAILED", input_uri=input_uri, output_uri=outs[0])},
            expected_params={"datastoreId": ex.DATASTORE_ID, "jobId": jobs[0]})
        start(2)
        assert await pipeline.imports.tick(poll=True) == 0
        out2 = f"s3://{bucket}/healthimaging/output/{batch}/2/"
        image_set_id, frame_id = ex.new_id(), ex.new_id()
        codestream = ex.frame_codestream(ds)
        doc = ex.image_set_metadata(image_set_id, [ds], {sop: [frame_id]}, {frame_id: codestream})
        # COMPLETED before its output can be listed: not yet finished for radloop (never "rejected for no output").
        stub.add_response("get_dicom_import_job", {"jobProperties": ex.job_properties(
            jobs[1], "COMPLETED", input_uri=input_uri, output_uri=out2)},
            expected_params={"datastoreId": ex.DATASTORE_ID, "jobId": jobs[1]})
        assert await pipeline.imports.tick(poll=True) == 0
        await _put_job_output(clients, bucket, ex.job_output(jobs[1], input_uri=input_uri, output_uri=out2,
                                                             bucket=bucket, succeeded={key: image_set_id}, failed={}))
        # No EventBridge event this time: the poll finds the second job COMPLETED.
        stub.add_response("get_dicom_import_job", {"jobProperties": ex.job_properties(
            jobs[1], "COMPLETED", input_uri=input_uri, output_uri=out2)},
            expected_params={"datastoreId": ex.DATASTORE_ID, "jobId": jobs[1]})
        stub.add_response("get_image_set_metadata", {
            "imageSetMetadataBlob": streaming(ex.gzip_json(doc)), "contentType": "application/json",
            "contentEncoding": "gzip"}, expected_params={"datastoreId": ex.DATASTORE_ID, "imageSetId": image_set_id})
        assert await pipeline.imports.tick(poll=True) == 1
        # The first job's late event changes nothing: it was superseded by the second attempt.
        assert (await pipeline.imports.job_changed(ex.DATASTORE_ID, jobs[0]))["finished"] is False
        ddb = await clients.dynamodb()
        item = await get_instance(ddb, adeployment.topology.table("instances"), study, series, sop)
        assert item is not None and item["image_set_id"] == image_set_id and item["source"] == "dimse"
        assert not [e for e in publisher.events if isinstance(e, InstanceRejected)]
        assert pipeline.outbox.transaction_item  # the InstanceStored went through the outbox transaction
    finally:
        await asyncio.to_thread(pool.shutdown)


async def test_another_datastores_job_event_is_ignored(adeployment, clients: AwsClients, ahi) -> None:
    pipeline, _publisher, pool = _pipeline(adeployment, clients)
    try:
        assert await pipeline.imports.job_changed("9" * 32, ex.new_id()) == {"ignored": True}
    finally:
        await asyncio.to_thread(pool.shutdown)


async def test_a_job_that_fails_every_attempt_rejects_its_instances_and_frees_their_claims(
        adeployment, clients: AwsClients, ahi) -> None:
    client, stub = ahi
    pipeline, publisher, pool = _pipeline(adeployment, clients, healthimaging_job_attempts=1)
    bucket = adeployment.topology.bucket("ingestion")
    sent = [fresh("693_UNCR.dcm") for _ in range(2)]
    try:
        for _ds, data in sent:
            assert (await pipeline.ingest(data, source="s3")).status == "stored"
        job = ex.new_id()
        stub.add_response("start_dicom_import_job", {"datastoreId": ex.DATASTORE_ID, "jobId": job,
                                                     "jobStatus": "SUBMITTED", "submittedAt": 0})
        # SIGTERM: stopping the imports starts the open batch at once (its instances were acknowledged already).
        pipeline.imports.start()
        await pipeline.imports.stop()
        stub.assert_no_pending_responses()
        stub.add_response("get_dicom_import_job", {"jobProperties": ex.job_properties(
            job, "FAILED", input_uri=f"s3://{bucket}/healthimaging/import/b/",
            output_uri=f"s3://{bucket}/healthimaging/output/b/1/")})
        assert (await pipeline.imports.job_changed(ex.DATASTORE_ID, job))["rejected"] == 2
        rejected = [e for e in publisher.events if isinstance(e, InstanceRejected)]
        assert sorted(e.sop_uid for e in rejected) == sorted(str(ds.SOPInstanceUID) for ds, _ in sent)
        assert {e.reason for e in rejected} == {"healthimaging-import-job-failed"}
        assert {e.source for e in rejected} == {"s3"}
        assert await pipeline.store.poll_imports() == []
        # Nothing was indexed, and each instance can be sent again (its claim was released).
        ddb = await clients.dynamodb()
        assert (await ddb.scan(TableName=adeployment.topology.table("instances"))).get("Items") == []
        assert (await pipeline.ingest(sent[0][1], source="stow")).status == "stored"
    finally:
        await asyncio.to_thread(pool.shutdown)
