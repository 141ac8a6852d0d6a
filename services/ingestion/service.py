"""The ingestion use cases: the pipeline shared by STOW-RS, DIMSE C-STORE and the S3 drop folder.

``parse safely -> (de-identify) -> transcode + verify``  (CPU pool, :mod:`.prepare`)
``-> claim (idempotency) -> store original, frames, metadata -> index (one transaction) -> publish InstanceStored``

Invariants:
- nothing is acknowledged before the original, the frames, the metadata and the index items are durable;
- ``InstanceStored`` is published after the index write, never before; a failure before it leaves no index item
  and no event (S3 objects without an index item are invisible, and are overwritten by the retry);
- the same instance sent again (same SOP Instance UID, same bytes) is acknowledged with no second copy or event;
- every refusal is a :class:`DicomRejection` with a DICOM failure reason and a sentence; an ``InstanceRejected``
  event (PHI-free: the reason's *kind*, never values from the data) is published for it.

The S3 drop folder (:meth:`IngestPipeline.ingest_dropped`) runs an object through the same pipeline (source ``s3``):

- stored (or already stored with the same content): an audit record is written, then the object is deleted from
  ``imports/``;
- refused: an audit record is written, then it is moved to ``imports-rejected/`` with its reason beside it, and
  ``InstanceRejected`` is published;
- a transient failure (S3, DynamoDB, EventBridge, the audit table, or the same instance still being stored by another
  sender) raises, so SQS redelivers it and, after the queue's ``maxReceiveCount``, dead-letters it; the object stays
  in ``imports/``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

from services.ingestion.adapters.claims import Claim, ClaimStore
from services.ingestion.adapters.objects import DropFolder
from services.ingestion.adapters.outbox import Outbox
from services.ingestion.domain.pool import CpuPool, WorkerCrashedError
from services.ingestion.domain.prepare import Prepared, PrepareOptions, prepare
from services.ingestion.imports import Imports
from services.ingestion.settings import IngestionSettings
from shared.ddb import is_conditional_failure
from shared.dicom.errors import (
    CANNOT_UNDERSTAND,
    DUPLICATE_SOP_INSTANCE,
    OUT_OF_RESOURCES,
    DicomRejection,
    TransientFailure,
)
from shared.dicom.parse import ParseLimits
from shared.events import InstanceRejected, InstanceStored
from shared.image_store import NewInstance, StoreReceipt
from shared.image_store.factory import open_image_store
from shared.index_writer import IndexWriter
from shared.instance_index import IndexConflictError, WriteOutcome, fit_instance, offsets_object_key
from shared.metrics import instrument
from shared.service import Runtime
from shared.storage import IMPORTS_PREFIX, INTEROP_DROP_PREFIX
from shared.telemetry import inject_context, tracer

log = logging.getLogger(__name__)

Source = Literal["stow", "dimse", "s3"]
#: Index items are limited to 400 KB; DICOM JSON larger than this (UTF-8 bytes) stays in S3 only (``metadata_key``).
MAX_INLINE_JSON = 300_000


@dataclass
class IngestResult:
    """What the entry points answer for a stored (or already stored) instance."""

    status: Literal["stored", "duplicate"]
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    original_key: str
    seconds: float


def stored_event_id(sop: str, sha: str) -> str:
    """Deterministic, so a retry that re-publishes after a crash is recognised as the same event by consumers."""
    return hashlib.sha256(f"InstanceStored#{sop}#{sha}".encode()).hexdigest()[:32]


class IngestPipeline:
    """The ingestion service object: every entry point (STOW-RS, DIMSE, the S3 drop folder) calls it."""

    def __init__(self, rt: Runtime[IngestionSettings], pool: CpuPool) -> None:
        self.rt = rt
        self.settings = settings = rt.settings
        self.pool = pool
        #: Where frames, metadata and originals go (shared.image_store: ``radloop`` or ``healthimaging``).
        self.store = self.images = open_image_store(settings, rt.clients)
        self.drop = DropFolder(rt.clients, settings.topology.bucket("ingestion"))
        self.table = settings.topology.table("instances")
        self.claims = ClaimStore(rt.clients.dynamodb, settings.topology.table("idempotency"),
                                 wait_s=settings.claim_wait_s)
        self.index = IndexWriter(rt.clients.dynamodb, self.table)
        self.outbox = Outbox(rt, queue_max=settings.outbox_queue_max)
        #: Finishes instances the store imports itself (image_store=healthimaging); idle with the default store.
        self.imports = Imports(self)
        self.limits = ParseLimits(max_bytes=settings.max_instance_bytes, max_inflated_bytes=settings.max_inflated_bytes,
                                  max_pixel_bytes=settings.max_pixel_bytes, max_frames=settings.max_frames_per_instance)

    def _options(self, source: Source, calling_ae: str | None, expected_study: str | None,
                 derived: bool = False) -> PrepareOptions:
        # A derived object (shared.storage.INTEROP_DROP_PREFIX) comes from an instance already stored, de-identified
        # when that is on: de-identifying it again would move it out of its source's study.
        deid = not derived and (self.settings.deidentify or (calling_ae is not None
                                                             and calling_ae in self.settings.deidentify_calling_aes))
        return PrepareOptions(limits=self.limits, pseudonym_key=self.settings.pseudonym_key, deidentify=deid,
                              deid_key=self.settings.deid_key, expected_study=expected_study, source=source,
                              deid_private_allowlist=tuple(int(t, 16) for t in self.settings.deid_private_allowlist))

    async def ingest(self, data: bytes, *, source: Source, calling_ae: str | None = None,
                     expected_study: str | None = None, object_key: str | None = None,
                     derived: bool = False) -> IngestResult:
        """Run the whole pipeline on one received object; raise :class:`DicomRejection` when it is refused."""
        t0 = time.perf_counter()
        with tracer("radloop.ingestion").start_as_current_span("ingest", attributes={"radloop.source": source,
                                                                                      "radloop.bytes": len(data)}):
            try:
                return await self._ingest(data, source, calling_ae, expected_study, t0, derived)
            except TransientFailure:
                raise  # not a refusal of the instance: no InstanceRejected
            except DicomRejection as rej:
                instrument("radloop.ingestion.instances").add(1, {"via": source, "outcome": "rejected"})
                await self._rejected(rej, source, data, object_key)
                raise

    async def _ingest(self, data: bytes, source: Source, calling_ae: str | None, expected_study: str | None,
                      t0: float, derived: bool = False) -> IngestResult:
        if len(data) > self.limits.max_bytes:  # refuse before shipping the bytes to a worker
            raise DicomRejection(OUT_OF_RESOURCES, f"The DICOM object is {len(data)} bytes; at most "
                                 f"{self.limits.max_bytes} bytes are accepted per instance.", kind="too-large")
        marks = {"start": time.perf_counter()}
        try:
            prep = await self.pool.run(prepare, data, self._options(source, calling_ae, expected_study, derived))
        except DicomRejection:
            raise
        except WorkerCrashedError:
            raise DicomRejection(OUT_OF_RESOURCES, "Processing this instance exhausted the worker's resources; it was "
                                 "not stored.", kind="worker-crashed") from None
        except Exception as exc:  # a library failure on hostile input is the input's fault, not a 500
            log.warning("prepare failed unexpectedly", extra={"error": type(exc).__name__})
            raise DicomRejection(CANNOT_UNDERSTAND, f"The instance could not be processed ({type(exc).__name__}).",
                                 kind="unprocessable") from None
        if not prep.stored_bytes:
            prep.stored_bytes = data
        if prep.quarantine_reason is not None:
            await self._quarantine(prep)
            raise DicomRejection(CANNOT_UNDERSTAND, prep.quarantine_reason, kind="quarantined-burned-in-annotation",
                                 sop_uid=prep.sop_uid, sop_class_uid=prep.sop_class_uid, study_uid=prep.study_uid)
        if len(prep.dicom_json.encode()) > MAX_INLINE_JSON:
            prep.record.instance.pop("dicom_json", None)
        # Keep the index item under DynamoDB's 400 KB: a large frame-offset table goes to S3 beside the frames
        # (stored with them, before the index item that points at it), and metadata that still does not fit is
        # served from its S3 object only.
        prep.offsets_object = fit_instance(prep.record.instance)
        marks["prepare"] = time.perf_counter()
        # Bounded: a claim can be lost only when another sender took it over (an expired lease, or a store whose
        # conditional writes are not atomic); then that sender's outcome is ours too, so wait for it once more.
        for attempt in range(3):
            claim = await self._acquire(prep)
            marks["claim"] = time.perf_counter()
            if claim.outcome == "duplicate":
                return self._result("duplicate", prep, t0)
            outcome = await self._store_and_index(prep, claim, marks, last=attempt == 2)
            if outcome is not None:
                break
            log.warning("ingestion claim lost to another sender; waiting for its outcome",
                        extra={"sop_uid": prep.sop_uid, "attempt": attempt + 1})
        names = list(marks)
        steps = {f"{b}_ms": round((marks[b] - marks[a]) * 1000, 1) for a, b in zip(names, names[1:], strict=False)}
        log.info("instance stored", extra={"sop_uid": prep.sop_uid, "source": source, "index": outcome,
                                           "frames": len(prep.frames), "index_retries_total": self.index.retries,
                                           "index_shared_transactions_total": self.index.batches,
                                           **steps})
        _record_stored(source, len(data), prep)
        return self._result("stored", prep, t0)

    async def _acquire(self, prep: Prepared) -> Claim:
        try:
            return await self.claims.acquire(prep.sop_uid, prep.content_sha256, ident=prep.dataset_sha256,
                                             overwrite=self.settings.allow_overwrite)
        except DicomRejection as rej:
            # The claim knows only the SOP Instance UID; the STOW-RS failure item also names the class (PS3.18
            # Table 10.5.3-2; it was missing on a conflict: found by a review, session 22).
            rej.sop_class_uid = rej.sop_class_uid or prep.sop_class_uid
            rej.study_uid = rej.study_uid or prep.study_uid
            raise
        except Exception as exc:
            raise TransientFailure(OUT_OF_RESOURCES, f"The instance could not be stored durably ({type(exc).__name__}); "
                                   "retry later.", kind="storage-failure", sop_uid=prep.sop_uid) from None

    async def _store_and_index(self, prep: Prepared, claim: Claim, marks: dict[str, float], *,
                               last: bool) -> WriteOutcome | Literal["staged"] | None:
        """Store the objects, then index + complete the claim + queue the event in one transaction.

        Returns None when the claim turned out to be someone else's (the caller waits for that sender)."""
        try:
            receipt = await self._store(prep, claim)
            marks["store"] = time.perf_counter()
            if not receipt.ready:
                # Staged for an import job (image_store=healthimaging): durable, so the sender may be acknowledged;
                # the index items and InstanceStored follow when the job finished (services.ingestion.imports).
                # The completed claim answers a resend as a duplicate meanwhile; a refused import releases it.
                await self.claims.complete(prep.sop_uid, claim)
                return "staged"
            event = InstanceStored(
                event_id=stored_event_id(prep.sop_uid, prep.content_sha256), study_uid=prep.study_uid,
                series_uid=prep.series_uid, sop_uid=prep.sop_uid, **prep.event_fields,
            ).with_trace(inject_context())  # the outbox publishes later: keep the request's trace
            try:
                # One transaction: index items + claim completion + the event in the outbox.
                outcome = await self.index.write(
                    prep.record, overwrite=self.settings.allow_overwrite or claim.replacing,
                    extra_items=[self.claims.complete_item(prep.sop_uid, claim), self.outbox.transaction_item(event)])
            except IndexConflictError as exc:
                raise DicomRejection(DUPLICATE_SOP_INSTANCE, f"SOP Instance UID {prep.sop_uid} is already stored with "
                                     f"different content (sha256 {exc.existing_sha256[:16]}...).",
                                     kind="conflicting-payload", sop_uid=prep.sop_uid,
                                     sop_class_uid=prep.sop_class_uid, study_uid=prep.study_uid) from None
            except Exception as exc:
                # The claim's completion is a condition of the transaction: false when the claim was taken over.
                if not last and is_conditional_failure(exc) and not await self.claims.holds(prep.sop_uid, claim):
                    return None  # not ours any more: nothing to release
                raise
            if outcome == "exists":  # a crashed earlier attempt indexed it; finish its claim (its event is in the outbox)
                await self.claims.complete(prep.sop_uid, claim)
            marks["index"] = time.perf_counter()
            self.outbox.enqueue(event)
            return outcome
        except DicomRejection:
            await asyncio.shield(self._release(prep.sop_uid, claim))
            raise
        except Exception as exc:
            await asyncio.shield(self._release(prep.sop_uid, claim))
            log.exception("storing an instance failed", extra={"sop_uid": prep.sop_uid})
            raise TransientFailure(OUT_OF_RESOURCES, f"The instance could not be stored durably ({type(exc).__name__}); "
                                   "nothing was acknowledged; retry later.", kind="storage-failure",
                                   sop_uid=prep.sop_uid) from None
        except BaseException:
            await asyncio.shield(self._release(prep.sop_uid, claim))
            raise

    async def _release(self, sop: str, claim: Any) -> None:
        try:
            await self.claims.release(sop, claim)
        except Exception:
            log.exception("could not release an ingestion claim; it expires with its lease")

    def _result(self, status: Literal["stored", "duplicate"], prep: Prepared, t0: float) -> IngestResult:
        if status == "duplicate":
            instrument("radloop.ingestion.instances").add(1, {"via": prep.record.instance.get("source") or "stow",
                                                              "outcome": "duplicate"})
        return IngestResult(status=status, study_uid=prep.study_uid, series_uid=prep.series_uid, sop_uid=prep.sop_uid,
                            sop_class_uid=prep.sop_class_uid, original_key=prep.original_key,
                            seconds=time.perf_counter() - t0)

    async def _store(self, prep: Prepared, claim: Claim) -> StoreReceipt:
        extra: tuple[tuple[str, bytes, str], ...] = ()
        if prep.offsets_object is not None:
            extra = ((offsets_object_key(prep.frames_prefix), prep.offsets_object, "application/json"),)
        return await self.store.store_instance(NewInstance(
            study_uid=prep.study_uid, series_uid=prep.series_uid, sop_uid=prep.sop_uid,
            content_sha256=prep.content_sha256, p10=prep.stored_bytes, dicom_json=prep.dicom_json,
            frames=tuple(prep.frames), extra_objects=extra,
            # PHI-free identifiers only: what the import's InstanceStored needs beyond the store's own metadata.
            # The claim token lets a refused import release the claim, so that a resend is stored, not a duplicate.
            # radloop's own keys (original_key, frames_prefix, metadata_key) are left out: the store has its own.
            attributes={**{k: v for k, v in prep.event_fields.items()
                           if k not in ("original_key", "frames_prefix", "metadata_key")},
                        "transfer_syntax_uid": prep.record.instance.get("transfer_syntax_uid"),
                        "claim_token": claim.token}))

    async def _quarantine(self, prep: Prepared) -> None:
        await self.drop.quarantine(prep.content_sha256, prep.stored_bytes,
                                   {"reason": prep.quarantine_reason, "sop_uid": prep.sop_uid})

    async def _rejected(self, rej: DicomRejection, source: Source, data: bytes, object_key: str | None) -> None:
        log.info("instance rejected", extra={"source": source, "failure_reason": f"0x{rej.failure_reason:04X}",
                                             "kind": rej.kind})
        try:
            await self.rt.publisher.publish(InstanceRejected(
                source=source, failure_reason=rej.failure_reason, reason=rej.kind[:500],
                sop_uid=rej.sop_uid,
                object_key_sha256=hashlib.sha256(object_key.encode()).hexdigest() if object_key else None,
                content_sha256=hashlib.sha256(data).hexdigest() if data else None))
        except Exception:  # the sender still gets its answer; the event is best effort
            log.exception("could not publish InstanceRejected")

    async def ingest_dropped(self, bucket: str, key: str) -> dict[str, Any]:
        """Ingest one object of the S3 drop folder (see the module docstring); returns what happened (logged)."""
        if bucket != self.drop.bucket or not key.startswith(IMPORTS_PREFIX):
            log.info("ignoring an object outside the drop folder", extra={"bucket": bucket})
            return {"ignored": True}
        found = await self.drop.size(key)
        if found is None:
            log.info("drop-folder object already gone (handled before)")
            return {"gone": True}
        key, size = found
        if size > self.limits.max_bytes:
            rej = DicomRejection(OUT_OF_RESOURCES, f"The object is {size} bytes; at most {self.limits.max_bytes} "
                                 "bytes are accepted per instance.", kind="too-large")
            await self._rejected(rej, "s3", b"", key)
            await self.audit_import(None, rej)
            await self.drop.move_rejected(key, rej)
            return {"rejected": rej.kind}
        data = await self.drop.read(key)
        try:
            result = await self.ingest(data, source="s3", object_key=key, derived=key.startswith(INTEROP_DROP_PREFIX))
        except TransientFailure:
            raise  # storage trouble or a busy claim: leave the object in imports/, let SQS redeliver
        except DicomRejection as rej:
            await self.audit_import(None, rej)
            await self.drop.move_rejected(key, rej)
            return {"rejected": rej.kind}
        # The audit record is durable before the dropped object (the sender's copy) goes; if it cannot be written
        # the handler fails, SQS redelivers, and the retry is acknowledged as a duplicate and audited then.
        await self.audit_import(result, None)
        await self.drop.delete(key)
        return {"status": result.status, "sop_uid": result.sop_uid}

    async def audit_import(self, result: IngestResult | None, rej: DicomRejection | None) -> None:
        """Write the audit record of one S3 drop-folder import (identifiers only; no object key, which a hospital may
        have named after the patient). Raises :class:`TransientFailure` when the record cannot be written."""
        resource: dict[str, Any]
        if result is not None:
            resource = {"source": "s3", "study": result.study_uid, "series": result.series_uid, "sop": result.sop_uid,
                        "status": result.status}
        else:
            assert rej is not None
            resource = {"source": "s3", "sop": rej.sop_uid, "kind": rej.kind,
                        "failure_reason": f"0x{rej.failure_reason:04X}"}
        await self.audit(None, "import", resource, outcome="success" if result is not None else "failure", count=1)

    async def audit(self, principal: Any, action: str, resource: dict[str, Any], *, outcome: str,
                    count: int) -> None:
        """Write an audit record durably, or raise :class:`TransientFailure` (the caller must not acknowledge)."""
        try:
            await self.rt.audit.record(principal, action, resource, outcome=outcome, count=count)
        except Exception as exc:
            log.exception("audit record could not be written", extra={"action": action})
            raise TransientFailure(OUT_OF_RESOURCES, f"The audit record could not be written ({type(exc).__name__}); "
                                   "nothing was acknowledged; retry later.", kind="audit-unavailable") from None


def _record_stored(source: str, received: int, prep: Prepared) -> None:
    """Metrics of one stored instance: count, bytes in (as received) and out (HTJ2K), and the HTJ2K ratio.

    The ratio is the decoded pixel data's size over the HTJ2K codestreams' (what the format saves), not the received
    object's, which may itself be compressed.
    """
    inst = prep.record.instance
    instrument("radloop.ingestion.instances").add(1, {"via": source, "outcome": "stored"})
    out = int(inst.get("htj2k_bytes") or 0)
    instrument("radloop.ingestion.bytes").add(received, {"direction": "in"})
    instrument("radloop.ingestion.bytes").add(out, {"direction": "out"})
    try:
        pixels = (int(inst["rows"]) * int(inst["columns"]) * int(inst.get("samples_per_pixel") or 1)
                  * ((int(inst["bits_allocated"]) + 7) // 8) * int(inst.get("number_of_frames") or 1))
    except (KeyError, TypeError, ValueError):
        return
    if out > 0 and pixels > 0:
        instrument("radloop.ingestion.htj2k.ratio").record(pixels / out)
