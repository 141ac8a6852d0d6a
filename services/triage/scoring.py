"""Scoring one stored instance: applicability, frame, micro-batched forward pass, heatmap, score record, event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from services.triage.domain.applicability import not_applicable_reason
from services.triage.domain.batcher import MicroBatcher
from services.triage.domain.champion import ChampionHolder
from services.triage.domain.gradcam import grad_cam, overlay_png
from services.triage.domain.inputs import Frame, load_frame, model_input
from services.triage.domain.model import LoadedModel
from services.triage.settings import TriageSettings
from shared import storage
from shared.aws import AwsClients
from shared.events import ImageVerified, InstanceScored, InstanceStored
from shared.publisher import EventPublisher

log = logging.getLogger(__name__)


def priority_for(probability: float | None, threshold: float | None) -> str:
    """``urgent`` when the model calls the image positive at its operating threshold, else ``routine``."""
    if probability is None or threshold is None:
        return "routine"
    return "urgent" if probability >= threshold else "routine"


#: The reason recorded for an applicable image that arrived before any model was approved (it joins the backlog).
AWAITING_MODEL = "no approved model yet; the worklist orders this image by arrival until a model scores it"
#: The reason an image leaves the backlog unscored: a radiologist read it before any model was approved.
VERIFIED_BEFORE_MODEL = "verified by a radiologist before any model was approved; no longer awaiting triage"


class Triage:
    """The triage service's behaviour, wired with its clients in ``bootstrap.py``."""

    def __init__(self, clients: AwsClients, settings: TriageSettings, publisher: EventPublisher) -> None:
        self.clients = clients
        self.settings = settings
        self.publisher = publisher
        self.holder = ChampionHolder(clients, settings)
        self.batcher = MicroBatcher(lambda: self.holder.current, window_s=settings.triage_batch_window_ms / 1000,
                                    max_batch=settings.triage_max_batch)
        self.images_bucket = settings.topology.bucket("images")
        self.scores_table = settings.topology.table("scores")
        self.scored = 0
        self._backlog_task: asyncio.Task[int] | None = None

    # -- inputs ------------------------------------------------------------------------------------------------------
    async def _get(self, key: str) -> bytes:
        s3 = await self.clients.s3()
        obj = await s3.get_object(Bucket=self.images_bucket, Key=key)
        async with obj["Body"] as body:
            return bytes(await body.read())

    async def read_frame(self, study: str, series: str, sop: str) -> Frame:
        """Frame 1 and its DICOM JSON from the images bucket, decoded (in a thread: decoding is CPU work)."""
        cs, meta = await asyncio.gather(self._get(storage.frame_key(study, series, sop, 1)),
                                        self._get(storage.metadata_key(study, series, sop)))
        return await asyncio.to_thread(load_frame, cs, meta)

    # -- the handler -------------------------------------------------------------------------------------------------
    async def on_instance_stored(self, event: InstanceStored) -> dict[str, Any]:
        """Score (or decline to score, with the reason) one stored instance; write the score; publish it."""
        s = self.settings
        base = {"study_uid": event.study_uid, "series_uid": event.series_uid, "sop_uid": event.sop_uid,
                "patient_pseudo_id": event.patient_pseudo_id}
        meta: dict[str, Any] | None = None
        if event.body_part is None:  # the event may omit it; the stored DICOM JSON is authoritative
            try:
                meta = json.loads(await self._get(storage.metadata_key(event.study_uid, event.series_uid,
                                                                       event.sop_uid)))
            except ClientError:
                meta = None
        reason = not_applicable_reason(event.modality, event.body_part, modalities=s.triage_modalities,
                                       body_parts=s.triage_body_parts, meta=meta)
        if reason:
            return await self._record(InstanceScored(status="not_applicable", reason=reason, **base))

        model = self.holder.current
        if model is None and (self.holder.load_error or await self.holder.read_pointer() is not None):
            # A champion exists but is not in memory (failed load, or approved while we missed the event): load it
            # now, and if that fails let the message be retried rather than marking the image unscored.
            model = await self.holder.ensure_loaded()
        if model is None:
            out = await self._record(InstanceScored(status="unscored", reason=AWAITING_MODEL, **base))
            if self.holder.current is not None:  # a champion arrived meanwhile: do not leave this one waiting
                self.schedule_backlog()
            return out
        return await self._score(model, base)

    async def _score(self, model: LoadedModel, base: dict[str, Any]) -> dict[str, Any]:
        """Score an applicable instance with ``model`` (the batcher may use a newer champion); record it."""
        s = self.settings
        try:
            frame = await self.read_frame(base["study_uid"], base["series_uid"], base["sop_uid"])
            pre = await asyncio.to_thread(model_input, frame, model.input_size)
        except ValueError as exc:  # undecodable: it can never succeed, so say so instead of retrying forever
            return await self._record(InstanceScored(status="unscored", reason=str(exc)[:500], **base))
        prob, used, x = await self.batcher.submit(frame, pre, model.input_size)
        priority = priority_for(prob, used.threshold)
        heatmap = None
        if s.triage_heatmaps == "all" or (s.triage_heatmaps == "positives" and priority == "urgent"):
            try:
                heatmap = await self.write_heatmap(base["study_uid"], base["series_uid"], base["sop_uid"], used,
                                                   frame, x)
            except ValueError as exc:  # the score stands without its explanation; the viewer shows none
                log.warning("heatmap failed; scored without one", extra={"sop_uid": base["sop_uid"],
                                                                         "error": str(exc)[:300]})
        return await self._record(InstanceScored(
            status="scored", probability=round(prob, 6), threshold=used.threshold, priority=priority,
            model_version=used.version, heatmap_key=heatmap, **base))

    # -- the backlog -------------------------------------------------------------------------------------------------
    async def on_verified(self, event: ImageVerified) -> dict[str, Any]:
        """An image read before any model was approved leaves the backlog: triage orders what is still unread, and a
        score given after the label would neither order the worklist nor count towards live performance."""
        ddb = await self.clients.dynamodb()
        try:
            await ddb.update_item(
                TableName=self.scores_table, Key={"sop_uid": {"S": event.sop_uid}},
                UpdateExpression="REMOVE awaiting_model SET reason = :r",
                ConditionExpression="awaiting_model = :t",
                ExpressionAttributeValues={":t": {"BOOL": True}, ":r": {"S": VERIFIED_BEFORE_MODEL}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return {"backlog": "not in it"}  # scored already, or never waiting: nothing to do (and redelivery-safe)
        return {"backlog": "left"}

    def schedule_backlog(self) -> None:
        """Score, in the background, the images that arrived before any model was approved (single flight)."""
        if self._backlog_task is None or self._backlog_task.done():
            self._backlog_task = asyncio.create_task(self.rescore_backlog(), name="triage-backlog")

    async def cancel_backlog(self) -> None:
        task = self._backlog_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def rescore_backlog(self, max_items: int = 100_000, max_rounds: int = 5) -> int:
        """Score every instance recorded as unscored for want of a model, with the champion now in memory.

        Bounded (``max_items``, ``max_rounds`` scans, to catch images recorded while a round ran) and idempotent:
        an image leaves the backlog when its score record is replaced, and one that fails stays for the next
        champion or restart. Returns how many were scored."""
        total = 0
        sem = asyncio.Semaphore(self.settings.triage_max_batch)
        for _ in range(max_rounds):
            model = self.holder.current
            if model is None:
                break
            backlog = await self._backlog(max_items - total)
            if not backlog:
                break
            log.info("scoring the backlog of images that arrived before any model",
                     extra={"count": len(backlog), "model_version": model.version})
            async def one(item: dict[str, Any], model: LoadedModel = model) -> bool:
                base = {"study_uid": item["study_uid"]["S"], "series_uid": item["series_uid"]["S"],
                        "sop_uid": item["sop_uid"]["S"],
                        "patient_pseudo_id": item.get("patient_pseudo_id", {}).get("S")}
                async with sem:
                    try:
                        await self._score(model, base)
                        return True
                    except Exception:
                        log.exception("backlog scoring failed; the image stays in the backlog",
                                      extra={"sop_uid": base["sop_uid"]})
                        return False

            done = sum(await asyncio.gather(*(one(i) for i in backlog)))
            total += done
            if done < len(backlog) or total >= max_items:
                break  # failures stay for the next champion or restart: no hot retry loop
        if total:
            log.info("backlog scored", extra={"count": total})
        return total

    async def _backlog(self, limit: int) -> list[dict[str, Any]]:
        ddb = await self.clients.dynamodb()
        out: list[dict[str, Any]] = []
        kw: dict[str, Any] = {"TableName": self.scores_table, "FilterExpression": "awaiting_model = :t",
                              "ExpressionAttributeValues": {":t": {"BOOL": True}}}
        for _ in range(10_000):  # pages
            resp = await ddb.scan(**kw)
            out += resp.get("Items", [])
            if "LastEvaluatedKey" not in resp or len(out) >= limit:
                break
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]
        return out[:limit]

    async def write_heatmap(self, study: str, series: str, sop: str, model: LoadedModel, frame: Frame,
                            x: np.ndarray | None = None) -> str:
        """Grad-CAM overlay PNG (the frame's size) at :func:`shared.storage.heatmap_key`; returns the key."""
        inp = x if x is not None else await asyncio.to_thread(model_input, frame, model.input_size)
        min_size = self.settings.triage_cam_min_size

        def render() -> bytes:
            cam, _layer = grad_cam(model.explainer, inp, min_size=min_size)
            return overlay_png(cam, frame.rows, frame.columns)

        png = await asyncio.to_thread(render)
        key = storage.heatmap_key(study, series, sop, model.version)
        s3 = await self.clients.s3()
        await s3.put_object(Bucket=self.images_bucket, Key=key, Body=png, ContentType="image/png")
        return key

    async def _record(self, scored: InstanceScored) -> dict[str, Any]:
        """Write the score durably, then publish it (a crash between the two re-runs the handler: same result)."""
        item: dict[str, Any] = {
            "sop_uid": {"S": scored.sop_uid},
            "study_uid": {"S": scored.study_uid},
            "series_uid": {"S": scored.series_uid},
            "status": {"S": scored.status},
            "priority": {"S": scored.priority},
            "scored_at": {"S": datetime.now(UTC).isoformat(timespec="milliseconds")},
        }
        if scored.probability is not None:
            item["probability"] = {"N": repr(scored.probability)}
        if scored.threshold is not None:
            item["threshold"] = {"N": repr(scored.threshold)}
        if scored.model_version is not None:
            item["model_version"] = {"N": str(scored.model_version)}
        if scored.heatmap_key:
            item["heatmap_key"] = {"S": scored.heatmap_key}
        if scored.reason:
            item["reason"] = {"S": scored.reason}
        if scored.reason == AWAITING_MODEL:  # the backlog that the first approved model scores
            item["awaiting_model"] = {"BOOL": True}
            if scored.patient_pseudo_id:
                item["patient_pseudo_id"] = {"S": scored.patient_pseudo_id}
        ddb = await self.clients.dynamodb()
        await ddb.put_item(TableName=self.scores_table, Item=item)
        await self.publisher.publish(scored)
        self.scored += 1
        log.info("instance triaged", extra={"status": scored.status, "model_version": scored.model_version,
                                            "priority": scored.priority, "sop_uid": scored.sop_uid})
        return {"status": scored.status, "model_version": scored.model_version, "probability": scored.probability}
