"""The interop service's use cases: results as DICOM, and forwarding them.

:class:`Results` turns ``InstanceScored`` (status ``scored``) into the AI SR and, when triage wrote a heatmap, the
Grad-CAM Segmentation; and ``ImageVerified`` into the verified-read SR. Each object is built from the source
instance's stored original and handed to ingestion through the drop folder (``imports/interop/``), so it is parsed,
indexed and announced (``InstanceStored``) exactly like an instance a PACS sent. Idempotent per source and model (or
label) version: the UIDs are derived from them, an object already in the index is not built again, and one rebuilt
before it reached the index has the same bytes (ingestion acknowledges it as a duplicate).

:class:`Forwarder` sends stored results (``InstanceStored`` of radloop's own SR/SEG) to every configured destination.
A destination that already received an instance is remembered (state table), so a retry after a partial failure
only resends to the destinations that failed. Failures raise, so the shared consumer backs off on the queue's
schedule; the last allowed attempt puts the message on the DLQ itself, with the reason (``radloop dlq show``).
"""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import httpx
import pydicom

from services.interop.adapters.archive import Archive, ForwardedLog
from services.interop.adapters.senders import SendError, send
from services.interop.domain import builders as b
from services.interop.domain.heatmap import map_from_overlay
from services.interop.settings import InteropSettings
from shared.aws import AwsClients
from shared.consumer import MessageContext
from shared.dicom.sop_classes import DERIVED_MODALITIES
from shared.events import ImageVerified, InstanceScored, InstanceStored, pseudonymise

log = logging.getLogger(__name__)


class SourceMissing(LookupError):
    """The source instance is not in the index (yet): the message is retried."""


class ForwardingDeadLettered(RuntimeError):
    """The last allowed attempt failed: the message is already on the DLQ with its reason.

    Raised (not returned) so that the consumer's idempotency record of the event is cleared: a redrive from the DLQ
    after the destination is fixed then forwards it, instead of being acknowledged as a duplicate."""


class Results:
    def __init__(self, archive: Archive, settings: InteropSettings) -> None:
        self.archive = archive
        self.settings = settings

    def algorithm(self, model_version: int) -> b.Algorithm:
        return b.Algorithm(self.settings.interop_algorithm_name, self.settings.interop_algorithm_version,
                           model_version)

    async def _source(self, study: str, series: str, sop: str) -> pydicom.Dataset:
        item = await self.archive.instance(study, series, sop)
        if item is None:
            raise SourceMissing(f"source instance {sop} is not indexed")
        data = await self.archive.original(study, series, sop)
        # The header is enough: the objects reference the image, they do not copy its pixels.
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)

    async def _missing(self, study: str, kind: str, version: int, source_sop: str) -> tuple[str, str] | None:
        """The derived (series, SOP) UIDs when that object is not indexed yet; None when it is."""
        series, sop = b.series_uid(study, kind, version), b.sop_uid(source_sop, kind, version)
        return None if await self.archive.instance(study, series, sop) else (series, sop)

    async def on_scored(self, e: InstanceScored) -> dict[str, Any]:
        """Build and store the AI SR (and SEG) of one scored image."""
        if e.status != "scored" or e.probability is None or e.threshold is None or e.model_version is None:
            return {"skipped": f"status {e.status}"}
        algo = self.algorithm(e.model_version)
        want_sr = await self._missing(e.study_uid, "ai-sr", e.model_version, e.sop_uid)
        want_seg = self._has_map(e) and await self._missing(e.study_uid, "ai-seg", e.model_version, e.sop_uid)
        if not want_sr and not want_seg:
            return {"skipped": "already stored"}
        source = await self._source(e.study_uid, e.series_uid, e.sop_uid)
        if str(source.get("Modality", "")).upper() in DERIVED_MODALITIES:
            return {"skipped": "the source is itself a derived object"}
        out: dict[str, Any] = {}
        if want_sr:
            score = b.Score(e.probability, e.threshold, e.occurred_at)
            sr = await asyncio.to_thread(lambda: b.to_bytes(b.build_ai_sr(source, score, algo)))
            out["sr"] = await self.archive.drop(want_sr[1], sr)
        if want_seg:
            out["seg"] = await self.archive.drop(want_seg[1], await self._seg_bytes(source, e, algo))
        log.info("results built", extra={"sop_uid": e.sop_uid, "model_version": e.model_version,
                                         "objects": sorted(out)})
        return out

    def _has_map(self, e: InstanceScored) -> bool:
        """Whether a Grad-CAM SEG is wanted: triage stored a heatmap and the SEG is not switched off."""
        stored = e.heatmap_key is not None
        return self.settings.interop_heatmap_seg and stored

    async def _seg_bytes(self, source: pydicom.Dataset, e: InstanceScored, algo: b.Algorithm) -> bytes:
        """The SEG of triage's stored heatmap (read only here; the caller hands the bytes to ingestion)."""
        assert e.heatmap_key is not None
        png = await self.archive.heatmap(e.heatmap_key)
        return await asyncio.to_thread(
            lambda: b.to_bytes(b.build_heatmap_seg(source, map_from_overlay(png), algo, e.occurred_at)))

    async def on_verified(self, e: ImageVerified) -> dict[str, Any]:
        """Build and store the SR of one final radiologist read."""
        if e.resolution == "imported":  # a public dataset's label: no radiologist read it here
            return {"skipped": "imported label, not a read"}
        want = await self._missing(e.study_uid, "read-sr", e.label_version, e.sop_uid)
        if not want:
            return {"skipped": "already stored"}
        source = await self._source(e.study_uid, e.series_uid, e.sop_uid)
        read = b.VerifiedRead(label=e.label, label_version=e.label_version, resolution=e.resolution,
                              reader_pseudo_id=reader_pseudonym(e.reader, self.settings.pseudonym_key),
                              verified_at=e.occurred_at)
        data = await asyncio.to_thread(lambda: b.to_bytes(b.build_verified_sr(source, read)))
        key = await self.archive.drop(want[1], data)
        log.info("verified read built", extra={"sop_uid": e.sop_uid, "label_version": e.label_version})
        return {"sr": key}


def reader_pseudonym(reader: str, key: str) -> str:
    """A stable pseudonym of a reader's user id (16 hex digits of an HMAC): the same reader, the same pseudonym."""
    return pseudonymise(f"reader:{reader}", key)[:16]


class Forwarder:
    def __init__(self, clients: AwsClients, archive: Archive, settings: InteropSettings,
                 http: httpx.AsyncClient) -> None:
        self.clients = clients
        self.archive = archive
        self.settings = settings
        self.http = http
        self.forwarded = ForwardedLog(clients)
        self.spec = settings.topology.queue_for("interop")
        self.stats = {"sent": 0, "failed": 0, "dead_lettered": 0}

    def wanted(self, e: InstanceStored) -> bool:
        return bool(self.settings.interop_destinations) and e.modality.upper() in DERIVED_MODALITIES

    async def on_stored(self, e: InstanceStored, mctx: MessageContext) -> dict[str, Any]:
        """Forward one stored derived object to every destination that has not received it yet."""
        if not self.wanted(e):
            return {"skipped": "not forwarded"}
        data = await self.archive.original(e.study_uid, e.series_uid, e.sop_uid)
        if self.settings.interop_forward == "results":
            head = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            if str(head.get("Manufacturer", "")) != b.MANUFACTURER:
                return {"skipped": "not a radloop result"}
        errors: list[str] = []
        sent: list[str] = []
        for dest in self.settings.interop_destinations:
            if await self.forwarded.done(dest.name, e.sop_uid):
                continue
            try:
                await send(data, dest, self.http)
            except (SendError, OSError) as exc:
                self.stats["failed"] += 1
                errors.append(str(exc) if isinstance(exc, SendError) else f"{dest.name}: {type(exc).__name__}")
                continue
            try:
                await self.forwarded.mark(dest.name, e.sop_uid)
            except Exception:  # sent; a retry may send it again, which a PACS takes as the same instance
                log.warning("could not record a forwarded instance", exc_info=True)
            self.stats["sent"] += 1
            sent.append(dest.name)
        if errors:
            reason = " ".join(errors)
            if mctx.receive_count >= self.spec.max_receive_count:
                await self._dead_letter(mctx, reason)
                raise ForwardingDeadLettered(reason)
            raise SendError(reason)  # the consumer backs off on the queue's schedule and SQS redelivers
        log.info("result forwarded", extra={"sop_uid": e.sop_uid, "destinations": sent})
        return {"sent": sent}

    async def _dead_letter(self, mctx: MessageContext, reason: str) -> None:
        """The last attempt failed: the event goes to the DLQ with the reason, and leaves the queue."""
        sqs = await self.clients.sqs()
        dlq = (await sqs.get_queue_url(QueueName=self.spec.dlq_name))["QueueUrl"]
        await sqs.send_message(QueueUrl=dlq, MessageBody=mctx.envelope.model_dump_json(by_alias=True),
                               MessageAttributes={
                                   "radloop-dead-letter-reason": {"DataType": "String", "StringValue": reason[:1000]},
                                   "radloop-source-queue": {"DataType": "String", "StringValue": self.spec.name}})
        queue = (await sqs.get_queue_url(QueueName=self.spec.name))["QueueUrl"]
        await sqs.delete_message(QueueUrl=queue, ReceiptHandle=mctx.receipt_handle)
        self.stats["dead_lettered"] += 1
        log.error("forwarding dead-lettered", extra={"reason": reason[:500]})
