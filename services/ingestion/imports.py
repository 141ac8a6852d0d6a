"""Instances an image store imports itself (``image_store=healthimaging``): index them and announce them once their
import job finished.

:meth:`IngestPipeline.ingest` stages such an instance (durable, the sender is acknowledged) and stops there. This module
finishes the work when the store reports the job (:class:`~shared.image_store.ImportReport`):

- each imported instance gets its index items and ``InstanceStored`` (with the image set id and frame ids) in one
  transaction, through the same outbox as every stored instance;
- each instance the store refused gets ``InstanceRejected`` with a PHI-free reason, and its claim is released so that
  sending it again stores it;
- only then is the job acknowledged to the store. A crash before that reports the job again; the index write answers
  ``exists`` and the event ids are deterministic, so consumers see each event once.

Job completion arrives as HealthImaging's EventBridge event (:meth:`Imports.job_changed`, from ``handlers.py``);
:meth:`Imports.run` is the fallback: it starts due batches often and polls submitted jobs every
``healthimaging_poll_interval_s``. With the default store every call here does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from services.ingestion.domain.imported import imported_record, stored_event_fields
from shared.dicom.errors import CANNOT_UNDERSTAND
from shared.events import InstanceRejected, InstanceStored
from shared.image_store import ImportReport
from shared.instance_index import IndexConflictError
from shared.telemetry import inject_context, tracer

if TYPE_CHECKING:
    from services.ingestion.service import IngestPipeline

log = logging.getLogger(__name__)


class Imports:
    """Finishes the imports of one ingestion process's pipeline (see the module docstring)."""

    def __init__(self, pipeline: IngestPipeline) -> None:
        self.pipeline = pipeline
        self.store = pipeline.store
        self.settings = pipeline.settings
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.stats = {"jobs": 0, "stored": 0, "rejected": 0}

    async def finish(self, report: ImportReport) -> dict[str, Any]:
        """Index and announce what one finished job imported, reject what it refused, then acknowledge the job."""
        from services.ingestion.service import MAX_INLINE_JSON, stored_event_id

        p = self.pipeline
        with tracer("radloop.ingestion").start_as_current_span(
                "import.finish", attributes={"radloop.imported": len(report.imported),
                                             "radloop.refused": len(report.failed)}):
            for inst in report.imported:
                a = inst.attributes
                event = InstanceStored(event_id=stored_event_id(inst.sop_uid, a["content_sha256"]),
                                       study_uid=inst.study_uid, series_uid=inst.series_uid, sop_uid=inst.sop_uid,
                                       **stored_event_fields(inst)).with_trace(inject_context())
                rec = imported_record(inst, inline_json_max=MAX_INLINE_JSON)
                try:
                    outcome = await p.index.write(rec, overwrite=self.settings.allow_overwrite,
                                                  extra_items=[p.outbox.transaction_item(event)])
                except IndexConflictError:
                    # The store imported other content under an indexed SOP Instance UID: radloop's index keeps what
                    # it had (as for any conflicting payload) and says so.
                    await self._reject(inst.sop_uid, a, "conflicting-payload", report.job_id)
                    continue
                if outcome == "created":
                    p.outbox.enqueue(event)
                self.stats["stored"] += 1
            for failed in report.failed:
                await self._reject(failed.sop_uid, failed.attributes, failed.reason, report.job_id)
            await self.store.acknowledge_imports(report.job_id)
        self.stats["jobs"] += 1
        log.info("import job indexed", extra={"job_id": report.job_id, "stored": len(report.imported),
                                              "rejected": len(report.failed)})
        return {"job_id": report.job_id, "stored": len(report.imported), "rejected": len(report.failed)}

    async def _reject(self, sop: str, attributes: dict[str, Any], reason: str, job_id: str) -> None:
        p = self.pipeline
        # Deterministic: a job reported again after a crash re-publishes the same event, which consumers skip.
        event_id = hashlib.sha256(f"InstanceRejected#{job_id}#{sop}".encode()).hexdigest()[:32]
        await p.rt.publisher.publish(InstanceRejected(
            event_id=event_id,
            source=attributes.get("source") or "stow", failure_reason=CANNOT_UNDERSTAND, reason=reason[:500],
            sop_uid=sop, content_sha256=attributes.get("content_sha256")))
        token = attributes.get("claim_token")
        if token:
            await p.claims.release_token(sop, str(token))
        self.stats["rejected"] += 1

    async def job_changed(self, datastore_id: str, job_id: str) -> dict[str, Any]:
        """HealthImaging's import-job event arrived (handlers.py): finish the job if it finished."""
        if self.settings.image_store != "healthimaging" or datastore_id != self.settings.healthimaging_datastore_id:
            return {"ignored": True}  # another data store's job, or this deployment does not import
        report = await self.store.import_job_changed(job_id)
        if report is None:
            return {"job_id": job_id, "finished": False}
        return await self.finish(report)

    async def tick(self, *, poll: bool) -> int:
        """Start due batches and, with ``poll``, finish the jobs GetDICOMImportJob says finished; returns jobs finished."""
        await self.store.submit_due()
        if not poll:
            return 0
        reports = await self.store.poll_imports()
        for report in reports:
            await self.finish(report)
        return len(reports)

    def start(self) -> None:
        """Run :meth:`run` in the background (a no-op loop for the default store is never started)."""
        if self.settings.image_store == "radloop" or self._task is not None:
            return
        self._task = asyncio.create_task(self.run(), name="ingestion-imports")

    async def run(self) -> None:
        """Tick until :meth:`stop`: batches every second at most, job polls every ``healthimaging_poll_interval_s``."""
        s = self.settings
        step = min(1.0, s.healthimaging_batch_window_s / 2)
        last_poll = time.monotonic()
        while not self._stopping.is_set():
            poll = time.monotonic() - last_poll >= s.healthimaging_poll_interval_s
            try:
                await self.tick(poll=poll)
            except Exception as exc:  # the next tick retries; the staged objects and batch records are durable
                log.warning("import tick failed", extra={"error": type(exc).__name__})
            if poll:
                last_poll = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), step)

    async def stop(self) -> None:
        """Stop the loop and start this process's open batch now (SIGTERM: its instances are acknowledged already)."""
        self._stopping.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.settings.image_store != "radloop":
            try:
                await self.store.submit_due(force=True)
            except Exception as exc:  # another process starts an abandoned batch later (submit_due)
                log.warning("could not start the open import batch at shutdown", extra={"error": type(exc).__name__})
