"""The triage use cases: score a stored instance (applicability, frame, micro-batched forward pass, heatmap, score
record, event), install an approved model, keep the backlog of images that arrived before any model, and render a
heatmap on request."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from typing import Any

import numpy as np
from botocore.exceptions import ClientError

from services.triage.adapters.images import Images
from services.triage.adapters.model_store import ChampionHolder
from services.triage.adapters.scores import Scores
from services.triage.domain.applicability import not_applicable_reason
from services.triage.domain.batcher import MicroBatcher
from services.triage.domain.errors import FrameNotFound, InvalidInstance, NoModelLoaded
from services.triage.domain.gradcam import grad_cam, overlay_png
from services.triage.domain.inputs import Frame, model_input
from services.triage.domain.model import LoadedModel
from services.triage.domain.priority import AWAITING_MODEL, VERIFIED_BEFORE_MODEL, priority_for
from services.triage.settings import TriageSettings
from shared.aws import AwsClients
from shared.events import ImageVerified, InstanceScored, InstanceStored, ModelApproved
from shared.image_store import ImageNotFound
from shared.image_store.factory import open_image_store
from shared.metrics import instrument
from shared.publisher import EventPublisher
from shared.uids import validate_uid

__all__ = ["AWAITING_MODEL", "VERIFIED_BEFORE_MODEL", "Triage", "priority_for"]

log = logging.getLogger(__name__)
#: How long a backlog claim keeps other tasks off an image: far longer than scoring one takes, short enough that an
#: image whose task died is picked up by the next backlog run.
BACKLOG_CLAIM_S = 300.0


def scored_event_id(scored: InstanceScored) -> str:
    """Deterministic id of an ``InstanceScored``: one per image, outcome and model version."""
    key = f"InstanceScored#{scored.sop_uid}#{scored.status}#{scored.model_version}#{scored.probability}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


class Triage:
    """The triage service's behaviour, wired with its clients in ``bootstrap.py``."""

    def __init__(self, clients: AwsClients, settings: TriageSettings, publisher: EventPublisher) -> None:
        self.clients = clients
        self.settings = settings
        self.publisher = publisher
        self.holder = ChampionHolder(clients, settings)
        self.images = Images(clients, open_image_store(settings, clients))
        self.scores = Scores(clients)
        self.batcher = MicroBatcher(lambda: self.holder.current, window_s=settings.triage_batch_window_ms / 1000,
                                    max_batch=settings.triage_max_batch)
        self.scored = 0
        self._backlog_task: asyncio.Task[int] | None = None
        #: this task's name on backlog claims (several triage tasks share the backlog; each record is scored once)
        self.claim_owner = uuid.uuid4().hex

    # -- events ------------------------------------------------------------------------------------------------------
    async def on_instance_stored(self, event: InstanceStored) -> dict[str, Any]:
        """Score (or decline to score, with the reason) one stored instance; write the score; publish it."""
        s = self.settings
        base = {"study_uid": event.study_uid, "series_uid": event.series_uid, "sop_uid": event.sop_uid,
                "patient_pseudo_id": event.patient_pseudo_id}
        meta: dict[str, Any] | None = None
        if event.body_part is None:  # the event may omit it; the stored DICOM JSON is authoritative
            meta = await self.images.metadata(event.study_uid, event.series_uid, event.sop_uid)
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

    async def on_model_approved(self, event: ModelApproved) -> dict[str, Any]:
        """Install the approved model (hot swap), then score the images that arrived before any model."""
        model = await self.holder.on_approved(event.version, event.model_artifact_uri, event.threshold,
                                              event.model_package_arn)
        self.schedule_backlog()  # images that arrived before any model get this one's score
        return {"model_version": model.version}

    async def on_verified(self, event: ImageVerified) -> dict[str, Any]:
        """An image read before any model was approved leaves the backlog: triage orders what is still unread, and a
        score given after the label would neither order the worklist nor count towards live performance."""
        if await self.scores.leave_backlog(event.sop_uid, VERIFIED_BEFORE_MODEL):
            return {"backlog": "left"}
        return {"backlog": "not in it"}  # scored already, or never waiting: nothing to do (and redelivery-safe)

    # -- scoring -----------------------------------------------------------------------------------------------------
    async def _score(self, model: LoadedModel, base: dict[str, Any]) -> dict[str, Any]:
        """Score an applicable instance with ``model`` (the batcher may use a newer champion); record it."""
        s = self.settings
        try:
            frame = await self.images.read_frame(base["study_uid"], base["series_uid"], base["sop_uid"])
            pre = await asyncio.to_thread(model_input, frame, model.input_size)
        except ValueError as exc:  # undecodable: it can never succeed, so say so instead of retrying forever
            return await self._record(InstanceScored(status="unscored", reason=str(exc)[:500], **base))
        started = time.perf_counter()
        prob, used, x = await self.batcher.submit(frame, pre, model.input_size)
        priority = priority_for(prob, used.threshold)
        # Scoring latency: the model call through the batcher (queueing for a batch included), per model version.
        version = {"model_version": str(used.version)}
        instrument("radloop.triage.scoring.duration").record(time.perf_counter() - started, version)
        instrument("radloop.triage.scores").add(1, {**version, "priority": priority})
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

    async def _record(self, scored: InstanceScored) -> dict[str, Any]:
        """Write the score durably, then publish it (a crash between the two re-runs the handler: same result).

        The event id is derived from what was decided, so a re-run after a crash that followed the publish (the
        consumer had not completed its idempotency record) republishes the *same* event, which consumers skip, instead
        of a second ``InstanceScored`` (found by the chaos run, docs/reliability.md)."""
        scored = scored.model_copy(update={"event_id": scored_event_id(scored)})
        await self.scores.put(scored, awaiting_model=scored.reason == AWAITING_MODEL)
        await self.publisher.publish(scored)
        self.scored += 1
        log.info("instance triaged", extra={"status": scored.status, "model_version": scored.model_version,
                                            "priority": scored.priority, "sop_uid": scored.sop_uid})
        return {"status": scored.status, "model_version": scored.model_version, "probability": scored.probability}

    # -- heatmaps ----------------------------------------------------------------------------------------------------
    async def write_heatmap(self, study: str, series: str, sop: str, model: LoadedModel, frame: Frame,
                            x: np.ndarray | None = None) -> str:
        """Grad-CAM overlay PNG (the frame's size) at :func:`shared.storage.heatmap_key`; returns the key."""
        inp = x if x is not None else await asyncio.to_thread(model_input, frame, model.input_size)
        min_size = self.settings.triage_cam_min_size

        def render() -> bytes:
            cam, _layer = grad_cam(model.explainer, inp, min_size=min_size)
            return overlay_png(cam, frame.rows, frame.columns)

        png = await asyncio.to_thread(render)
        return await self.images.put_heatmap(study, series, sop, model.version, png)

    async def heatmap_on_request(self, study: str, series: str, sop: str) -> tuple[str, LoadedModel]:
        """Render one instance's heatmap with the current champion and store it: (its key, the model used).

        Raises :class:`InvalidInstance` (a malformed UID, an undecodable frame), :class:`NoModelLoaded` or
        :class:`FrameNotFound`.
        """
        for what, uid in (("StudyInstanceUID", study), ("SeriesInstanceUID", series), ("SOPInstanceUID", sop)):
            try:
                validate_uid(uid, what=what)
            except ValueError as exc:
                raise InvalidInstance(str(exc)) from None
        model = self.holder.current
        if model is None:
            raise NoModelLoaded("no approved model is loaded, so no heatmap can be computed")
        try:
            frame = await self.images.read_frame(study, series, sop)
        except (ClientError, ImageNotFound):
            raise FrameNotFound(f"instance {sop} has no stored frame 1") from None
        except ValueError as exc:
            raise InvalidInstance(str(exc)) from None
        return await self.write_heatmap(study, series, sop, model, frame), model

    # -- the backlog -------------------------------------------------------------------------------------------------
    def schedule_backlog(self) -> None:
        """Score, in the background, the images that arrived before any model was approved (single flight)."""
        if self._backlog_task is None or self._backlog_task.done():
            self._backlog_task = asyncio.create_task(self.rescore_backlog(), name="triage-backlog")

    async def cancel_backlog(self) -> None:
        """Stop a backlog run in progress (shutdown); the images it did not reach stay in the backlog."""
        task = self._backlog_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def rescore_backlog(self, max_items: int = 100_000, max_rounds: int = 5) -> int:
        """Score every instance recorded as unscored for want of a model, with the champion now in memory.

        Bounded (``max_items``, ``max_rounds`` reads of the backlog index, to catch images recorded while a round
        ran) and idempotent: an image leaves the backlog when its score record is replaced, and one that fails stays
        for the next champion or restart. Single flight across tasks: an image is scored (and its InstanceScored
        published) only by the task whose claim on it succeeded; the others skip it. Returns how many were scored."""
        total = 0
        sem = asyncio.Semaphore(self.settings.triage_max_batch)
        for _ in range(max_rounds):
            model = self.holder.current
            if model is None:
                break
            backlog = await self.scores.backlog(max_items - total)
            if not backlog:
                break
            log.info("scoring the backlog of images that arrived before any model",
                     extra={"count": len(backlog), "model_version": model.version})

            async def one(item: dict[str, Any], model: LoadedModel = model) -> bool | None:
                base = {"study_uid": item["study_uid"], "series_uid": item["series_uid"], "sop_uid": item["sop_uid"],
                        "patient_pseudo_id": item.get("patient_pseudo_id")}
                async with sem:
                    if not await self.scores.claim(base["sop_uid"], self.claim_owner, BACKLOG_CLAIM_S):
                        return None  # scored already, or another task is scoring it
                    try:
                        await self._score(model, base)
                        return True
                    except Exception:
                        log.exception("backlog scoring failed; the image stays in the backlog",
                                      extra={"sop_uid": base["sop_uid"]})
                        await self.scores.unclaim(base["sop_uid"], self.claim_owner)
                        return False

            results = await asyncio.gather(*(one(i) for i in backlog))
            done = sum(1 for r in results if r)
            total += done
            if any(r is False for r in results) or done == 0 or total >= max_items:
                break  # failures stay for the next champion or restart (no hot retry loop); claimed elsewhere: theirs
        if total:
            log.info("backlog scored", extra={"count": total})
        return total
