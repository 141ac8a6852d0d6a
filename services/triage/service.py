"""The triage use cases: score a stored instance (applicability, frame, micro-batched forward pass, heatmap, score
record, event), install an approved model, keep the backlog of images that arrived before any model, re-score the
unread images when a new champion is approved, and render a heatmap on request."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from botocore.exceptions import ClientError

from services.triage.adapters.images import Images
from services.triage.adapters.model_store import ChampionHolder
from services.triage.adapters.scores import Scores
from services.triage.adapters.transform import TransformJob, TransformRecords, open_runner, read_results, write_manifest
from services.triage.adapters.transform import job_name as transform_job_name
from services.triage.domain.applicability import not_applicable_reason
from services.triage.domain.batcher import MicroBatcher
from services.triage.domain.errors import FrameNotFound, InvalidInstance, NoModelLoaded
from services.triage.domain.gradcam import grad_cam, overlay_png
from services.triage.domain.inputs import Frame, model_input
from services.triage.domain.model import LoadedModel
from services.triage.domain.priority import AWAITING_MODEL, VERIFIED_BEFORE_MODEL, priority_for
from services.triage.settings import TriageSettings
from shared.aws import AwsClients
from shared.drift import DriftCheck, DriftMonitor, DriftPolicy, embedding_features, image_features
from shared.events import DriftDetected, ImageVerified, InstanceScored, InstanceStored, ModelApproved
from shared.exceptions import ConditionFailedError
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
#: Seconds before another backlog or re-scoring pass after one that failed (an image it could not score or publish).
BACKLOG_RETRY_S = 60.0
#: At most this many re-scoring passes follow one another (a champion approved while a pass ran asks for another).
RESCORE_ROUNDS = 5


def scored_event_id(scored: InstanceScored, replaces: str | None = None) -> str:
    """Deterministic id of an ``InstanceScored``: one per image, outcome and model version, and, for a re-score, per
    score it replaces (``replaces``: that score's event id). A re-run after a crash gives the same id (consumers skip
    it); a re-score that lands on a (version, probability) the image had before (a rollback to an earlier champion)
    gets a new one, so consumers do not drop it as a duplicate of the earlier score."""
    key = f"InstanceScored#{scored.sop_uid}#{scored.status}#{scored.model_version}#{scored.probability}"
    if replaces:
        key += f"#replaces:{replaces}"
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
        #: the later passes scheduled after failures or foreign claims (one timer of each kind at most)
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._rescore_task: asyncio.Task[int] | None = None
        #: set when a pass should follow the running one (the champion changed while it ran)
        self._rescore_again = False
        self.rescored = 0
        #: this task's name on backlog claims (several triage tasks share the backlog; each record is scored once)
        self.claim_owner = uuid.uuid4().hex
        #: large re-scoring passes run as one batch transform job (adapters/transform.py), one driver per champion
        self.transforms = open_runner(clients, settings)
        self.transform_records = TransformRecords(clients, self.claim_owner, settings.triage_transform_lease_s,
                                                  settings.triage_transform_timeout_s)
        #: drift of new arrivals against the champion's training reference, per site and modality (shared.drift)
        self.drift = DriftMonitor(DriftPolicy(
            window=settings.triage_drift_window, min_images=settings.triage_drift_min_images,
            check_every=settings.triage_drift_check_every, psi_alert=settings.triage_drift_psi_alert,
            max_windows=settings.triage_drift_max_windows))
        #: (site, modality, feature) -> when this task last published DriftDetected for it (monotonic seconds)
        self._drift_alerted: dict[tuple[str, str, str], float] = {}

    # -- events ------------------------------------------------------------------------------------------------------
    async def on_instance_stored(self, event: InstanceStored) -> dict[str, Any]:
        """Score (or decline to score, with the reason) one stored instance; write the score; publish it."""
        s = self.settings
        base = {"study_uid": event.study_uid, "series_uid": event.series_uid, "sop_uid": event.sop_uid,
                "patient_pseudo_id": event.patient_pseudo_id}
        arrived = event.occurred_at.astimezone(UTC).isoformat(timespec="milliseconds")
        if await self.holder.refresh_if_due() is not None:  # approved while another task took the event
            self.schedule_backlog()
            self.schedule_rescore()
        meta: dict[str, Any] | None = None
        if event.body_part is None:  # the event may omit it; the stored DICOM JSON is authoritative
            meta = await self.images.metadata(event.study_uid, event.series_uid, event.sop_uid)
        reason = not_applicable_reason(event.modality, event.body_part, modalities=s.triage_modalities,
                                       body_parts=s.triage_body_parts, meta=meta)
        if reason:
            return await self._record(InstanceScored(status="not_applicable", reason=reason, **base), arrived)

        model = self.holder.current
        if model is None and (self.holder.load_error or await self.holder.read_pointer() is not None):
            # A champion exists but is not in memory (failed load, or approved while we missed the event): load it
            # now, and if that fails let the message be retried rather than marking the image unscored.
            model = await self.holder.ensure_loaded()
        if model is None:
            out = await self._record(InstanceScored(status="unscored", reason=AWAITING_MODEL, **base), arrived)
            if self.holder.current is not None:  # a champion arrived meanwhile: do not leave this one waiting
                self.schedule_backlog()
            return out
        prior = await self.scores.recorded(event.sop_uid)
        if (prior and prior.get("status") == "scored" and prior.get("event_id")
                and prior.get("model_version") is not None and int(prior["model_version"]) == model.version):
            return await self._republish(prior, base)
        return await self._score(model, base, arrived, modality=event.modality)

    async def _republish(self, prior: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        """This champion scored the image already (a take-over after a kill that followed the record, maybe the
        publish too): publish *that* decision again, under its own event id, which consumers skip if they have it.
        Scoring again could give another probability (a restarted task may run the model in another precision), so
        another event id: a second ``InstanceScored`` for one image (found by the 2,000-image chaos run)."""
        scored = InstanceScored(
            event_id=str(prior["event_id"]), status="scored", probability=float(prior["probability"]),
            threshold=float(prior["threshold"]), priority=prior.get("priority") or "routine",
            model_version=int(prior["model_version"]), heatmap_key=prior.get("heatmap_key") or None, **base)
        await self.publisher.publish(scored)
        log.info("instance triaged (recorded score republished)", extra={
            "status": scored.status, "model_version": scored.model_version, "sop_uid": scored.sop_uid})
        return {"status": scored.status, "model_version": scored.model_version, "probability": scored.probability,
                "republished": True}

    async def on_model_approved(self, event: ModelApproved) -> dict[str, Any]:
        """Install the approved model (hot swap), score the images that arrived before any model, and re-score the
        unread images that an earlier champion scored (newest first, at a bounded rate)."""
        model = await self.holder.on_approved(event.version, event.model_artifact_uri, event.threshold,
                                              event.model_package_arn)
        self.schedule_backlog()  # images that arrived before any model get this one's score
        self.schedule_rescore()  # the worklist's order follows the new champion
        return {"model_version": model.version}

    async def on_verified(self, event: ImageVerified) -> dict[str, Any]:
        """A read image is out of triage's hands: it leaves the backlog (an image read before any model) and the
        unread index (no champion re-scores it). Triage orders what is still unread, and a score given after the label
        would neither order the worklist nor count towards live performance. Redelivery-safe."""
        left = await self.scores.leave_backlog(event.sop_uid, VERIFIED_BEFORE_MODEL)
        await self.scores.mark_read(event.sop_uid)
        return {"backlog": "left" if left else "not in it"}  # not in it: scored already, or never waiting

    # -- scoring -----------------------------------------------------------------------------------------------------
    async def _score(self, model: LoadedModel, base: dict[str, Any], arrived: str,
                     modality: str | None = None, replaces: str | None = None,
                     pending: Literal["backlog", "rescore"] | None = None) -> dict[str, Any]:
        """Score an applicable instance with ``model`` (the batcher may use a newer champion); record it. With the
        ``modality`` of a new arrival (not a backlog or re-scoring pass, which would count an image twice), the image
        and its score join the drift windows. ``replaces``: a re-score's earlier score (its event id)."""
        s = self.settings
        try:
            frame = await self.images.read_frame(base["study_uid"], base["series_uid"], base["sop_uid"])
            pre = await asyncio.to_thread(model_input, frame, model.input_size)
        except ValueError as exc:  # undecodable: it can never succeed, so say so instead of retrying forever
            return await self._record(InstanceScored(status="unscored", reason=str(exc)[:500], **base), arrived,
                                      replaces, pending)
        started = time.perf_counter()
        result = await self.batcher.submit(frame, pre, model.input_size)
        prob, used, x = result.probability, result.model, result.input
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
        out = await self._record(InstanceScored(
            status="scored", probability=round(prob, 6), threshold=used.threshold, priority=priority,
            model_version=used.version, heatmap_key=heatmap, **base), arrived, replaces, pending)
        champion = self.holder.current
        if champion is not None and champion.version != used.version:
            self.schedule_rescore()  # a swap overtook this score: the new champion's pass must not miss it
        elif modality and used.version == model.version:
            try:
                await self.watch_drift(used, frame.site, modality, pre, prob, result.embedding)
            except Exception:  # the score is recorded and published: drift must not make the message fail
                log.exception("drift check failed; the score stands")
        return out

    # -- drift -------------------------------------------------------------------------------------------------------
    async def watch_drift(self, model: LoadedModel, site: str, modality: str, pre: np.ndarray, prob: float,
                          embedding: np.ndarray | None = None) -> DriftCheck | None:
        """Add one new arrival to its (site, modality) window; when that completes a comparison, record the PSI gauges
        and publish ``DriftDetected`` for each feature at or above the alert level (once per cooldown). Never fails
        the scoring: the score is recorded already, and a lost drift alert is repeated at the next comparison."""
        reference = model.config.get("drift_reference")
        self.drift.use(reference)  # a champion without one (older artefacts): no drift
        if reference is None:
            return None
        features = {**image_features(pre), "score": float(prob)}
        if embedding is not None:
            features.update(embedding_features(reference, embedding))
        check = self.drift.observe(site, modality, features)
        if check is None:
            return None
        gauge = instrument("radloop.model.drift.psi")
        for feature, value in check.psi.items():
            gauge.set(value, {"model_version": str(model.version), "site": site, "modality": modality,
                              "feature": feature})
        now = time.monotonic()
        cooldown = self.settings.triage_drift_alert_cooldown_s
        if len(self._drift_alerted) > 10 * self.drift.policy.max_windows:  # bounded: forget alerts past cooldown
            self._drift_alerted = {k: t for k, t in self._drift_alerted.items() if now - t < cooldown}
        for f in check.findings:
            key = (f.site, f.modality, f.feature)
            last = self._drift_alerted.get(key)
            if last is not None and now - last < cooldown:
                continue
            try:
                await self.publisher.publish(DriftDetected(
                    model_version=model.version, site=f.site, modality=f.modality[:16], feature=f.feature,
                    psi=f.psi, threshold=self.drift.policy.psi_alert, window_images=f.window_images))
            except Exception as exc:  # noqa: BLE001 - the score stands; the next comparison repeats the alert
                log.warning("drift alert not published", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
                continue
            self._drift_alerted[key] = now
            instrument("radloop.model.drift.alerts").add(1, {"site": f.site, "modality": f.modality,
                                                             "feature": f.feature})
            log.warning("drift detected", extra={"site": f.site, "modality": f.modality, "feature": f.feature,
                                                 "psi": f.psi, "model_version": model.version})
        return check

    async def _record(self, scored: InstanceScored, arrived: str | None = None, replaces: str | None = None,
                      pending: Literal["backlog", "rescore"] | None = None) -> dict[str, Any]:
        """Write the score durably, then publish it (a crash between the two re-runs the handler: same result).

        The event id is derived from what was decided, so a re-run after a crash that followed the publish (the
        consumer had not completed its idempotency record) republishes the *same* event, which consumers skip, instead
        of a second ``InstanceScored`` (found by the chaos run, docs/reliability.md).

        ``pending``: a backlog or re-scoring pass, which no queue message re-runs: the record stays where the pass
        finds it until the event is out (:meth:`Scores.put`), so a kill, a stop or a failed publish between the two
        is redone by the next pass instead of losing the event (found by a review)."""
        scored = scored.model_copy(update={"event_id": scored_event_id(scored, replaces)})
        arrived_at = arrived or datetime.now(UTC).isoformat(timespec="milliseconds")
        unread = await self.scores.put(scored, awaiting_model=scored.reason == AWAITING_MODEL, arrived_at=arrived_at,
                                       pending=pending)
        if replaces and not unread:
            # A re-score that finished after the image was read: kept in the record, not published. The read's score
            # stays the one the radiologist saw, and live performance keeps counting the read under that model.
            log.info("re-score finished after the read; not published", extra={"sop_uid": scored.sop_uid})
            return {"status": scored.status, "model_version": scored.model_version, "probability": scored.probability,
                    "published": False}
        await self.publisher.publish(scored)
        if pending:
            await self.scores.published(scored.sop_uid, scored.event_id)
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
        """Stop the backlog and re-scoring runs in progress (shutdown); what they did not reach waits for the next
        run (a restart starts both)."""
        for handle in self._retries.values():
            handle.cancel()
        self._retries.clear()
        for task in (self._backlog_task, self._rescore_task):
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
                        await self._score(model, base, str(item.get("arrived_at") or item.get("scored_at") or ""),
                                          pending="backlog")
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
                # Failures, and images another task holds (it may have died), wait for a later pass: one is
                # scheduled, after a pause or the claim's lease (nothing else started one: images stayed unscored
                # until a new arrival or restart; found by a review). Bounded: one timer, replaced, never stacked.
                if any(r is False for r in results):
                    self._retry_later("backlog", BACKLOG_RETRY_S)
                elif any(r is None for r in results):
                    self._retry_later("backlog", BACKLOG_CLAIM_S + 5)
                break
        if total:
            log.info("backlog scored", extra={"count": total})
        return total

    def _retry_later(self, what: Literal["backlog", "rescore"], delay_s: float) -> None:
        """One more backlog or re-scoring pass after ``delay_s`` (a pending timer of the same kind is replaced)."""
        old = self._retries.pop(what, None)
        if old is not None:
            old.cancel()
        self._retries[what] = asyncio.get_running_loop().call_later(
            delay_s, self.schedule_backlog if what == "backlog" else self.schedule_rescore)

    # -- re-scoring on a new champion --------------------------------------------------------------------------------
    def schedule_rescore(self) -> None:
        """Re-score, in the background, the unread images an earlier champion scored (single flight: a request while
        a pass runs makes one more pass follow it)."""
        self._rescore_again = True
        if self._rescore_task is None or self._rescore_task.done():
            self._rescore_task = asyncio.create_task(self.rescore_unread(), name="triage-rescore")

    async def rescore_unread(self) -> int:
        """Re-score every unread scored image with the champion in memory, newest arrival first, at most
        ``triage_rescore_per_s`` a second and ``triage_rescore_max`` a pass; each new score replaces the record and
        publishes ``InstanceScored``, which re-orders the worklist.

        Exactly once per unread image and champion: an image is re-scored only by the task whose claim succeeded,
        and the claim holds only while the image is unread and that champion has not scored it. An image read
        meanwhile, or scored by the new champion on arrival, is skipped. A failure leaves the image for the next pass.
        Returns how many were re-scored."""
        s = self.settings
        total = 0
        for _ in range(RESCORE_ROUNDS):
            if not self._rescore_again:
                break
            self._rescore_again = False
            model = self.holder.current
            if model is None or s.triage_rescore_max <= 0 or s.triage_rescore_per_s <= 0:
                break
            items = await self.scores.unread(s.triage_rescore_max, not_version=model.version)
            if items:
                log.info("re-scoring unread images with the new champion",
                         extra={"count": len(items), "model_version": model.version})
            if s.triage_transform_min and len(items) >= s.triage_transform_min:
                done = await self._rescore_by_transform(model, items)
                if done is not None:
                    total += done
                    self._rescore_again = True  # what the job did not score goes image by image in the next pass
                    continue
            total += await self._rescore(model, items)
        if total:
            log.info("re-scoring done", extra={"count": total})
        return total

    async def _rescore_item(self, model: LoadedModel, item: dict[str, Any], probability: float | None = None) -> bool:
        """Claim one unread image for ``model`` and re-score it (with ``probability``: record that one, which a
        transform job computed); True when it was re-scored, False when it was read meanwhile, scored by this champion
        already, taken by another task, or failed (it keeps its earlier score; the next pass tries again)."""
        sop = str(item["sop_uid"])
        base = {"study_uid": item["study_uid"], "series_uid": item["series_uid"], "sop_uid": sop,
                "patient_pseudo_id": item.get("patient_pseudo_id")}
        arrived = str(item.get("arrived_at") or "")
        # the score this one replaces (records written before event ids were stored: name it by its version)
        replaces = str(item.get("event_id") or f"v{item.get('model_version')}")
        try:
            if not await self.scores.claim_rescore(sop, self.claim_owner, BACKLOG_CLAIM_S, model.version):
                return False
        except Exception:  # the image keeps its score; the next pass tries again
            log.exception("re-scoring claim failed", extra={"sop_uid": sop})
            return False
        try:
            if probability is None:
                await self._score(model, base, arrived, replaces=replaces, pending="rescore")
            else:
                await self._record(InstanceScored(
                    status="scored", probability=round(probability, 6), threshold=model.threshold,
                    priority=priority_for(probability, model.threshold), model_version=model.version, **base),
                    arrived, replaces, pending="rescore")
        except Exception:
            log.exception("re-scoring failed; the image keeps its earlier score", extra={"sop_uid": sop})
            with contextlib.suppress(Exception):  # else the lease passes by itself
                await self.scores.unclaim_rescore(sop, self.claim_owner)
            self._retry_later("rescore", BACKLOG_RETRY_S)
            return False
        self.rescored += 1
        instrument("radloop.triage.rescored").add(1, {"model_version": str(model.version)})
        return True

    async def _rescore(self, model: LoadedModel, items: list[dict[str, Any]]) -> int:
        """One pass over ``items`` (newest first) at the configured rate; stops early when the champion changes."""
        sem = asyncio.Semaphore(self.settings.triage_max_batch)
        interval = 1.0 / self.settings.triage_rescore_per_s
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def one(item: dict[str, Any]) -> bool:
            async with sem:
                return await self._rescore_item(model, item)

        tasks: list[asyncio.Task[bool]] = []
        try:
            for i, item in enumerate(items):
                # A task that missed the approval must not go on re-scoring with the old champion: it reads the
                # registry's pointer (at most every triage_champion_check_s) and hands over to the new one's pass.
                if await self.holder.refresh_if_due() is not None:
                    self.schedule_backlog()
                if self.holder.current is not model:
                    self._rescore_again = True  # a newer champion: the next pass re-scores with it
                    break
                delay = started + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(item)))
            return sum(1 for r in await asyncio.gather(*tasks, return_exceptions=True) if r is True)
        except asyncio.CancelledError:  # shutdown: claims not yet used pass with their lease
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # -- re-scoring as a batch transform job -------------------------------------------------------------------------
    async def _rescore_by_transform(self, model: LoadedModel, items: list[dict[str, Any]]) -> int | None:
        """Re-score ``items`` with one batch transform job of ``model`` (adapters/transform.py), then apply its results
        as re-scores (claimed one by one, so exactly once per image whichever task applies them). One task drives a
        champion's job; the others wait for it. Returns how many this task re-scored, or None when the pass should go
        image by image instead (this champion's job ran already, the champion moved on, or no job could be run)."""
        s = self.settings
        records = self.transform_records
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.triage_transform_timeout_s + s.triage_transform_lease_s
        while (record := await records.claim(model.version, transform_job_name(s.topology, model.version))) is None:
            current = await records.read(model.version)
            if current is not None and current.get("status") == "done":
                return None  # this champion's job ran: what it left is re-scored image by image
            if self.holder.current is not model or loop.time() > deadline:
                return None
            await asyncio.sleep(s.triage_transform_poll_s)  # another task drives it; its lease passes if it died
        version = model.version
        name = str(record["job_name"])
        outcome, why = "Failed", ""
        applied = 0
        try:
            pointer = await self.holder.read_pointer()
            if pointer is None or pointer.version != version:
                outcome, why = "Skipped", "the champion changed before the job started"
                return None
            if record.get("manifest_uri"):  # taking over a job started by a task that died
                manifest_uri, output_uri = str(record["manifest_uri"]), str(record["output_uri"])
            else:
                objects = await self._originals(items)
                if not objects:
                    outcome, why = "Skipped", "no original object to read"
                    return None
                manifest_uri, output_uri = await write_manifest(self.clients, objects,
                                                                self.settings.topology.bucket("images"), name)
                await records.set_job(version, manifest_uri, output_uri)
            job = TransformJob(name=name, version=version, model_uri=pointer.model_artifact_uri,
                               manifest_uri=manifest_uri, output_uri=output_uri)
            log.info("re-scoring as a batch transform job", extra={
                "job": name, "executor": self.transforms.kind, "count": len(items), "model_version": version})
            await self.transforms.start(job)
            result = await self.transforms.wait(job, s.triage_transform_timeout_s,
                                                lambda: records.renew(version))
            outcome, why = result.status, result.reason
            # Failed or timed out: the results it wrote still count (SageMaker uploads each finished object's)
            results, problems = await read_results(self.clients, output_uri, len(items) + 16)
            by_sop = {str(i["sop_uid"]): i for i in items}
            sem = asyncio.Semaphore(s.triage_max_batch)

            async def apply(sop: str, probability: float) -> bool:
                async with sem:
                    if self.holder.current is not model:
                        return False  # a newer champion: its pass re-scores these
                    return await self._rescore_item(model, by_sop[sop], probability)

            done = await asyncio.gather(*(apply(sop, p) for sop, p in results.items() if sop in by_sop))
            applied = sum(1 for d in done if d)
            log.info("batch transform applied", extra={
                "job": name, "status": outcome, "reason": why[:300], "results": len(results),
                "unreadable_results": len(problems), "rescored": applied, "model_version": version})
            return applied
        except ConditionFailedError:  # the lease passed to another task (this one stalled): it drives the job now
            self._rescore_again = True
            outcome = "Handed over"
            return 0
        except Exception as exc:  # the images keep their scores; the next pass goes image by image
            log.exception("batch transform failed", extra={"job": name, "model_version": version})
            why = f"{type(exc).__name__}: {exc}"[:500]
            return None
        finally:
            if outcome != "Handed over":
                with contextlib.suppress(Exception):
                    await records.finish(version, outcome, {"job": name, "rescored": applied, "reason": why[:500]})

    async def _originals(self, items: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """(bucket, key) of each item's original object (those the store keeps none of are left to the next pass)."""
        sem = asyncio.Semaphore(32)

        async def one(item: dict[str, Any]) -> tuple[str, str] | None:
            async with sem:
                try:
                    return await self.images.store.original_object(
                        str(item["study_uid"]), str(item["series_uid"]), str(item["sop_uid"]))
                except (ImageNotFound, ClientError, ValueError):
                    return None

        return [o for o in await asyncio.gather(*(one(i) for i in items)) if o is not None]
