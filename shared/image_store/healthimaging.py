"""The ``healthimaging`` image store: an AWS HealthImaging data store behind :class:`~shared.image_store.ImageStore`.

Writing (ingestion):

1. :meth:`HealthImagingStore.store_instance` PUTs the P10 object to ``{import prefix}{batch}/{SOPInstanceUID}.dcm`` in
   the import bucket, then adds the instance to its batch record (DynamoDB ``state`` table). Both are durable before
   it returns, so the sender may be acknowledged; nothing is indexed or announced yet.
2. :meth:`submit_due` closes a batch when it holds ``healthimaging_batch_size`` instances or is
   ``healthimaging_batch_window_s`` old and starts one StartDICOMImportJob over its folder (the batch id is the client
   token, so a retried start is the same job).
3. A finished job is noticed from HealthImaging's EventBridge event (:meth:`import_job_changed`) or, when that does not
   arrive, by polling GetDICOMImportJob (:meth:`poll_imports`). Its output manifests (``SUCCESS/success.ndjson``,
   ``FAILURE/failure.ndjson``) say which objects became which image set; each image set's metadata
   (GetImageSetMetadata) gives the instance's DICOM JSON and frame ids. The report goes to the caller, which indexes and
   announces, then :meth:`acknowledge_imports` forgets the job. Until then every poll reports it again.
4. A FAILED job is started again (``healthimaging_job_attempts`` in all) before its instances are reported failed.

Reading (gateway, triage): an instance's image set and frame ids come from radloop's instance index (written by
ingestion from the import report); frames come from GetImageFrame (the HTJ2K codestream as HealthImaging stores it),
metadata from GetImageSetMetadata, and the original P10 object is the staged import object, kept.

Invariants: a batch's folder gets no object after its job started (a closed batch takes no more instances, and the job
starts only once the in-flight PUTs of that batch finished); the P10 objects, the batch record and the index are
enough to resume after a crash at any point. Nothing here logs a UID, a name or an object key holding one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from shared.aws import AwsClients
from shared.image_store import (
    FailedImport,
    ImageNotFound,
    ImageStoreUnavailable,
    ImportedInstance,
    ImportReport,
    NewInstance,
    StoreReceipt,
    ahi_metadata,
)
from shared.image_store.settings import ImageStoreSettings
from shared.index_writer import get_instance

log = logging.getLogger(__name__)

SERVICE = "medical-imaging"
_STATE_PREFIX = "healthimaging#"
_PENDING_KEY = _STATE_PREFIX + "pending"
#: HealthImaging's job statuses (botocore's JobStatus enum).
FINISHED = ("COMPLETED", "FAILED")
_NOT_FOUND_CODES = ("ResourceNotFoundException", "NoSuchKey", "404", "NotFound")


@dataclass
class _OpenBatch:
    batch_id: str
    opened_at: float
    count: int = 0
    in_flight: int = 0
    closed: bool = False


def _s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class HealthImagingStore:
    """AWS HealthImaging as an :class:`~shared.image_store.ImageStore` (see the module docstring)."""

    def __init__(self, settings: ImageStoreSettings, clients: AwsClients, *, locate_cache: int = 4096,
                 metadata_cache: int = 32) -> None:
        self.settings = settings
        self.clients = clients
        self.datastore_id = settings.healthimaging_datastore_id
        self.bucket = settings.import_bucket
        self.state_table = settings.topology.table("state")
        self.index_table = settings.topology.table("instances")
        self.owner = uuid.uuid4().hex
        self._open: _OpenBatch | None = None
        #: this process's batches not started yet (the open one and closed ones whose PUTs may still be in flight)
        self._local: dict[str, _OpenBatch] = {}
        self._open_lock = asyncio.Lock()
        self._drained = asyncio.Condition()
        self._locations: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
        self._locate_cache = locate_cache
        self._docs: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._metadata_cache = metadata_cache
        self.calls: dict[str, int] = {}

    async def _ahi(self) -> Any:
        return await self.clients.get(SERVICE)

    def _count(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1

    # --- writing ----------------------------------------------------------------------------------------------------
    def staged_key(self, batch_id: str, sop: str) -> str:
        return f"{self.settings.healthimaging_import_prefix}{batch_id}/{sop}.dcm"

    def _due(self, b: _OpenBatch, now: float) -> bool:
        return (b.closed or b.count >= self.settings.healthimaging_batch_size
                or now - b.opened_at >= self.settings.healthimaging_batch_window_s)

    async def _join_batch(self) -> _OpenBatch:
        async with self._open_lock:
            b = self._open
            if b is None or self._due(b, time.monotonic()):
                if b is not None:
                    b.closed = True
                b = self._open = _OpenBatch(uuid.uuid4().hex, time.monotonic())
                self._local[b.batch_id] = b
            b.count += 1
            b.in_flight += 1
            return b

    async def _leave_batch(self, b: _OpenBatch) -> None:
        async with self._drained:
            b.in_flight -= 1
            self._drained.notify_all()

    async def store_instance(self, inst: NewInstance) -> StoreReceipt:
        """Stage the P10 object in the open batch's folder and record it in the batch (both durable on return)."""
        b = await self._join_batch()
        try:
            key = self.staged_key(b.batch_id, inst.sop_uid)
            s3 = await self.clients.s3()
            await s3.put_object(Bucket=self.bucket, Key=key, Body=inst.p10, ContentType="application/dicom")
            member = json.dumps({"sop_uid": inst.sop_uid, "study_uid": inst.study_uid, "series_uid": inst.series_uid,
                                 "content_sha256": inst.content_sha256, "staged_key": key, **inst.attributes},
                                separators=(",", ":"), sort_keys=True)
            ddb = await self.clients.dynamodb()
            await ddb.update_item(
                TableName=self.state_table, Key={"key": {"S": _STATE_PREFIX + "batch#" + b.batch_id}},
                UpdateExpression="ADD members :m SET #st = if_not_exists(#st, :open), opened_at = "
                                 "if_not_exists(opened_at, :now), #owner = if_not_exists(#owner, :owner)",
                ConditionExpression="attribute_not_exists(#st) OR #st = :open",
                ExpressionAttributeNames={"#st": "status", "#owner": "owner"},
                ExpressionAttributeValues={":m": {"SS": [member]}, ":open": {"S": "open"},
                                           ":now": {"N": str(time.time())}, ":owner": {"S": self.owner}})
            await ddb.update_item(TableName=self.state_table, Key={"key": {"S": _PENDING_KEY}},
                                  UpdateExpression="ADD batches :b",
                                  ExpressionAttributeValues={":b": {"SS": [b.batch_id]}})
        finally:
            await self._leave_batch(b)
        return StoreReceipt(ready=False, staged_at=_s3_uri(self.bucket, key))

    async def _pending(self) -> list[str]:
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.state_table, Key={"key": {"S": _PENDING_KEY}}, ConsistentRead=True)
        return sorted(resp.get("Item", {}).get("batches", {}).get("SS", []))

    async def _batch(self, batch_id: str) -> dict[str, Any] | None:
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.state_table, Key={"key": {"S": _STATE_PREFIX + "batch#" + batch_id}},
                                  ConsistentRead=True)
        item = resp.get("Item")
        if item is None:
            return None
        return {
            "batch_id": batch_id,
            "status": item.get("status", {}).get("S", "open"),
            "opened_at": float(item.get("opened_at", {}).get("N", "0")),
            "owner": item.get("owner", {}).get("S", ""),
            "job_id": item.get("job_id", {}).get("S", ""),
            "attempt": int(item.get("attempt", {}).get("N", "0")),
            "members": [json.loads(m) for m in item.get("members", {}).get("SS", [])],
        }

    async def submit_due(self, *, force: bool = False) -> int:
        """Start the import job of every batch that is full, old enough, or abandoned by its process."""
        started = 0
        now = time.monotonic()
        async with self._open_lock:
            for b in self._local.values():
                if force or self._due(b, now):
                    b.closed = True  # takes no more instances
            if self._open is not None and self._open.closed:
                self._open = None
        window = self.settings.healthimaging_batch_window_s
        for batch_id in await self._pending():
            local = self._local.get(batch_id)
            if local is not None:
                if not local.closed:
                    continue  # still taking instances
                async with self._drained:  # its folder must be complete before the job lists it
                    await self._drained.wait_for(lambda b=local: b.in_flight == 0)  # type: ignore[misc]
            batch = await self._batch(batch_id)
            if batch is None or batch["status"] != "open":
                self._local.pop(batch_id, None)
                continue
            # Another process's batch is started only once that process has clearly stopped closing it.
            if local is None and time.time() - batch["opened_at"] < 3 * window + 30:
                continue
            await self._start_job(batch, attempt=1)
            self._local.pop(batch_id, None)
            started += 1
        pending = set(await self._pending()) if self._local else set()
        for batch_id, b in list(self._local.items()):
            if b.closed and b.in_flight == 0 and batch_id not in pending:
                del self._local[batch_id]  # no instance of it was recorded (every store of it failed): nothing to start
        return started

    async def _start_job(self, batch: dict[str, Any], *, attempt: int) -> str:
        batch_id = batch["batch_id"]
        s = self.settings
        ahi = await self._ahi()
        self._count("StartDICOMImportJob")
        resp = await ahi.start_dicom_import_job(
            jobName=f"radloop-{batch_id}-{attempt}",
            dataAccessRoleArn=s.healthimaging_import_role_arn,
            clientToken=f"{batch_id}-{attempt}",
            datastoreId=self.datastore_id,
            inputS3Uri=_s3_uri(self.bucket, f"{s.healthimaging_import_prefix}{batch_id}/"),
            outputS3Uri=_s3_uri(self.bucket, f"{s.healthimaging_output_prefix}{batch_id}/{attempt}/"),
        )
        job_id = str(resp["jobId"])
        ddb = await self.clients.dynamodb()
        await ddb.put_item(TableName=self.state_table, Item={"key": {"S": _STATE_PREFIX + "job#" + job_id},
                                                             "batch_id": {"S": batch_id}})
        await ddb.update_item(
            TableName=self.state_table, Key={"key": {"S": _STATE_PREFIX + "batch#" + batch_id}},
            UpdateExpression="SET #st = :submitted, job_id = :job, attempt = :attempt",
            ExpressionAttributeNames={"#st": "status"},
            ExpressionAttributeValues={":submitted": {"S": "submitted"}, ":job": {"S": job_id},
                                       ":attempt": {"N": str(attempt)}})
        log.info("healthimaging import job started", extra={"job_id": job_id, "instances": len(batch["members"]),
                                                            "attempt": attempt})
        return job_id

    # --- import results ---------------------------------------------------------------------------------------------
    async def poll_imports(self) -> list[ImportReport]:
        """GetDICOMImportJob for every submitted batch; the reports of those that finished."""
        reports: list[ImportReport] = []
        for batch_id in await self._pending():
            batch = await self._batch(batch_id)
            if batch is None or batch["status"] != "submitted":
                continue
            report = await self._check(batch)
            if report is not None:
                reports.append(report)
        return reports

    async def import_job_changed(self, job_id: str) -> ImportReport | None:
        """HealthImaging's event for ``job_id`` arrived: check the job (the event is a hint, the API the truth)."""
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.state_table, Key={"key": {"S": _STATE_PREFIX + "job#" + job_id}},
                                  ConsistentRead=True)
        if "Item" not in resp:
            log.info("healthimaging job event for a job radloop did not start", extra={"job_id": job_id})
            return None
        batch = await self._batch(resp["Item"]["batch_id"]["S"])
        if batch is None or batch["status"] != "submitted" or batch["job_id"] != job_id:
            return None  # acknowledged already, or superseded by a later attempt
        return await self._check(batch)

    async def _check(self, batch: dict[str, Any]) -> ImportReport | None:
        ahi = await self._ahi()
        self._count("GetDICOMImportJob")
        props = (await ahi.get_dicom_import_job(datastoreId=self.datastore_id, jobId=batch["job_id"]))["jobProperties"]
        status = props["jobStatus"]
        if status not in FINISHED:
            return None
        if status == "FAILED":
            if batch["attempt"] < self.settings.healthimaging_job_attempts:
                log.warning("healthimaging import job failed; starting it again",
                            extra={"job_id": batch["job_id"], "attempt": batch["attempt"]})
                await self._start_job(batch, attempt=batch["attempt"] + 1)
                return None
            failed = tuple(FailedImport(m["sop_uid"], "healthimaging-import-job-failed", m) for m in batch["members"])
            return ImportReport(batch["job_id"], (), failed)
        return await self._report(batch)

    async def _manifest_lines(self, batch: dict[str, Any], name: str) -> list[dict[str, Any]] | None:
        """The JSON lines of ``SUCCESS/success.ndjson`` or ``FAILURE/failure.ndjson`` under the attempt's output prefix
        (HealthImaging writes them below a folder it names after the data store and job: ``{datastoreId}-DicomImport-
        {jobId}/``)."""
        s3 = await self.clients.s3()
        prefix = f"{self.settings.healthimaging_output_prefix}{batch['batch_id']}/{batch['attempt']}/"
        lines: list[dict[str, Any]] = []
        found = False
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = await s3.list_objects_v2(**kw)
            for obj in page.get("Contents", []):
                # Each attempt has its own output prefix, so the folder HealthImaging adds below it need not be parsed.
                if not obj["Key"].endswith("/" + name):
                    continue
                found = True
                body = await s3.get_object(Bucket=self.bucket, Key=obj["Key"])
                async with body["Body"] as stream:
                    text = (await stream.read()).decode()
                lines += [json.loads(line) for line in text.splitlines() if line.strip()]
            token = page.get("NextContinuationToken")
            if not token:
                return lines if found else None

    async def _report(self, batch: dict[str, Any]) -> ImportReport | None:
        failures = await self._manifest_lines(batch, "failure.ndjson")
        successes = await self._manifest_lines(batch, "success.ndjson")
        if failures is None and successes is None:
            # COMPLETED but no output yet: never turn "not written yet" into rejections; the next poll looks again.
            log.warning("healthimaging import job completed without output manifests yet",
                        extra={"job_id": batch["job_id"]})
            return None
        members = {m["sop_uid"]: m for m in batch["members"]}
        by_file = {m["staged_key"].rsplit("/", 1)[-1]: m for m in batch["members"]}
        imported: list[ImportedInstance] = []
        failed: list[FailedImport] = []
        seen: set[str] = set()
        for line in failures or []:
            m = by_file.get(str(line.get("inputFile", "")).rsplit("/", 1)[-1])
            if m is None or m["sop_uid"] in seen:
                continue
            seen.add(m["sop_uid"])
            exc = line.get("exception") or {}
            # The exception type only: HealthImaging's message may quote attribute values (PHI).
            kind = str(exc.get("exceptionType") or "ImportError")[:80]
            failed.append(FailedImport(m["sop_uid"], f"healthimaging-import-refused:{kind}", m))
        image_sets: dict[str, list[dict[str, Any]]] = {}
        for line in successes or []:
            m = by_file.get(str(line.get("inputFile", "")).rsplit("/", 1)[-1])
            resp = line.get("importResponse") or {}
            if m is None or m["sop_uid"] in seen or not resp.get("imageSetId"):
                continue
            seen.add(m["sop_uid"])
            image_sets.setdefault(str(resp["imageSetId"]), []).append(m)
        for image_set_id, ms in image_sets.items():
            doc = await self._metadata_doc(image_set_id, fresh=True)
            for m in ms:
                found = ahi_metadata.find_instance(doc, m["sop_uid"])
                if found is None:
                    failed.append(FailedImport(m["sop_uid"], "healthimaging-instance-missing-from-image-set", m))
                    continue
                series_uid, inst = found
                imported.append(ImportedInstance(
                    study_uid=str(doc["Study"].get("DICOM", {}).get("StudyInstanceUID") or m["study_uid"]),
                    series_uid=series_uid, sop_uid=m["sop_uid"],
                    dicom_json=ahi_metadata.instance_dicom_json(doc, series_uid, m["sop_uid"]),
                    image_set_id=image_set_id, frame_ids=ahi_metadata.frame_ids(inst),
                    stored_transfer_syntax_uid=str(inst.get("StoredTransferSyntaxUID") or ""), attributes=m,
                    datastore_id=self.datastore_id))
        for sop, m in members.items():
            if sop not in seen:  # neither imported nor refused: the job never saw it
                failed.append(FailedImport(sop, "healthimaging-not-in-job-output", m))
        return ImportReport(batch["job_id"], tuple(imported), tuple(failed))

    async def acknowledge_imports(self, job_id: str) -> None:
        """Mark the job's batch done and drop it from the pending set (its staged objects stay: the originals)."""
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.state_table, Key={"key": {"S": _STATE_PREFIX + "job#" + job_id}},
                                  ConsistentRead=True)
        if "Item" not in resp:
            return
        batch_id = resp["Item"]["batch_id"]["S"]
        await ddb.update_item(TableName=self.state_table, Key={"key": {"S": _STATE_PREFIX + "batch#" + batch_id}},
                              UpdateExpression="SET #st = :done REMOVE members", ExpressionAttributeNames={"#st": "status"},
                              ExpressionAttributeValues={":done": {"S": "done"}})
        await ddb.update_item(TableName=self.state_table, Key={"key": {"S": _PENDING_KEY}},
                              UpdateExpression="DELETE batches :b", ExpressionAttributeValues={":b": {"SS": [batch_id]}})

    # --- reading ----------------------------------------------------------------------------------------------------
    async def _locate(self, study: str, series: str, sop: str) -> dict[str, Any]:
        """The index item's HealthImaging ids (cached: an instance's image set and frames do not move)."""
        key = (study, series, sop)
        hit = self._locations.get(key)
        if hit is not None:
            self._locations.move_to_end(key)
            return hit
        item = await get_instance(await self.clients.dynamodb(), self.index_table, study, series, sop)
        if item is None or not item.get("image_set_id"):
            raise ImageNotFound(f"instance {sop} is not in the HealthImaging data store")
        loc = {"image_set_id": str(item["image_set_id"]), "frame_ids": list(item.get("frame_ids") or []),
               "original_key": str(item.get("original_key") or "")}
        self._locations[key] = loc
        while len(self._locations) > self._locate_cache:
            self._locations.popitem(last=False)
        return loc

    async def _call(self, op: str, coro: Any) -> Any:
        self._count(op)
        try:
            return await coro
        except ClientError as exc:
            code = _code(exc)
            if code in _NOT_FOUND_CODES:
                raise ImageNotFound(f"HealthImaging has no such {op.removeprefix('Get')}") from None
            log.warning("healthimaging call failed", extra={"operation": op, "code": code})
            raise ImageStoreUnavailable("the image store is unavailable; retry later") from None

    async def read_frame(self, study: str, series: str, sop: str, number: int) -> bytes:
        loc = await self._locate(study, series, sop)
        ids = loc["frame_ids"]
        if not 1 <= number <= len(ids):
            raise ImageNotFound(f"frame {number} of instance {sop} does not exist")
        ahi = await self._ahi()
        resp = await self._call("GetImageFrame", ahi.get_image_frame(
            datastoreId=self.datastore_id, imageSetId=loc["image_set_id"],
            imageFrameInformation={"imageFrameId": ids[number - 1]}))
        async with resp["imageFrameBlob"] as body:
            data: bytes = await body.read()
        return data

    async def _metadata_doc(self, image_set_id: str, *, fresh: bool = False) -> dict[str, Any]:
        doc = None if fresh else self._docs.get(image_set_id)
        if doc is not None:
            self._docs.move_to_end(image_set_id)
            return doc
        ahi = await self._ahi()
        resp = await self._call("GetImageSetMetadata", ahi.get_image_set_metadata(
            datastoreId=self.datastore_id, imageSetId=image_set_id))
        async with resp["imageSetMetadataBlob"] as body:
            blob = await body.read()
        doc = ahi_metadata.load(blob, resp.get("contentEncoding"))
        self._docs[image_set_id] = doc
        while len(self._docs) > self._metadata_cache:
            self._docs.popitem(last=False)
        return doc

    async def read_metadata(self, study: str, series: str, sop: str) -> dict[str, Any]:
        loc = await self._locate(study, series, sop)
        doc = await self._metadata_doc(loc["image_set_id"])
        found = ahi_metadata.find_instance(doc, sop)
        if found is None:
            raise ImageNotFound(f"instance {sop} is not in its image set's metadata")
        return ahi_metadata.instance_dicom_json(doc, found[0], sop)

    async def original_object(self, study: str, series: str, sop: str) -> tuple[str, str]:
        """The staged P10 object's place in the import bucket."""
        loc = await self._locate(study, series, sop)
        if not loc["original_key"]:
            raise ImageNotFound(f"instance {sop} has no kept P10 object")
        return self.bucket, str(loc["original_key"])

    async def read_original(self, study: str, series: str, sop: str) -> bytes:
        """The staged P10 object (what HealthImaging imported), kept in the import bucket."""
        bucket, key = await self.original_object(study, series, sop)
        s3 = await self.clients.s3()
        try:
            resp = await s3.get_object(Bucket=bucket, Key=key)
            async with resp["Body"] as body:
                data: bytes = await body.read()
        except ClientError as exc:
            if _code(exc) in _NOT_FOUND_CODES:
                raise ImageNotFound(f"the P10 object of instance {sop} is gone") from None
            raise ImageStoreUnavailable("the image store is unavailable; retry later") from None
        return data
