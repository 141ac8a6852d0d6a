"""The orchestrator's use cases: label projection -> trigger policy -> snapshot -> execution -> tracking -> events.

One background ticker per process tracks the active execution (status file or DescribePipelineExecution), starts
the coalesced follow-up once the lock is free and the cooldown is over, and applies the schedule. Everything it
decides on lives in DynamoDB (:mod:`services.pipeline_orchestrator.adapters.store`), so a restarted process, or a
second replica, carries on where the previous one stopped. The pipeline's gate (``AucFloor``, ``AucMargin``) is the
approval policy's (:mod:`shared.approval`), the same document the registry decides with.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from services.pipeline_orchestrator.adapters.datasets import DatasetStore
from services.pipeline_orchestrator.adapters.executors import Executor, ExecutorError
from services.pipeline_orchestrator.adapters.store import TERMINAL, OrchestratorStore
from services.pipeline_orchestrator.domain import locked_set
from services.pipeline_orchestrator.domain.policy import Trigger, TriggerPolicy, merge_pending
from services.pipeline_orchestrator.domain.snapshot import build_snapshot
from services.pipeline_orchestrator.settings import OrchestratorSettings
from shared.approval import ApprovalPolicy
from shared.aws import AwsClients
from shared.champion import ChampionPointer
from shared.events import DriftDetected, ImageVerified, ModelPerformanceDegraded, TrainingCompleted, TrainingStarted
from shared.metrics import instrument
from shared.publisher import EventPublisher
from shared.storage import NO_CHAMPION_PREFIX
from shared.telemetry import tracer

log = logging.getLogger(__name__)

#: Pipeline parameters a manual trigger may override (the contract's fixed names). A run's ``AucFloor`` and
#: ``AucMargin`` default to the approval policy's; an override is explicit, per run, and recorded in the run's
#: parameters (the registry still decides approval with the policy).
OVERRIDABLE = {"Epochs": int, "ImageSize": int, "Arch": str, "BatchSize": int, "AucFloor": float, "AucMargin": float,
               "Comparison": str}
#: ``Comparison``: how the registry compares the challenger with the champion (shared/approval.py COMPARISONS).
COMPARISONS = ("superiority", "non-inferiority")


def new_run_id() -> str:
    """A sortable, unique run id (``run-YYYYmmdd-HHMMSS-xxxxxx``; the routes accept only this shape)."""
    return f"run-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


class Orchestrator:
    """The retraining use cases: events in, single-flight runs out, each tracked to its completion event."""

    def __init__(
        self,
        settings: OrchestratorSettings,
        clients: AwsClients,
        publisher: EventPublisher,
        executor: Executor,
        approval: ApprovalPolicy,
        store: OrchestratorStore | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.executor = executor
        #: The one approval policy: the pipeline's gate gets its floor and margin as parameters.
        self.approval = approval
        self.store = store or OrchestratorStore(clients)
        self.datasets = DatasetStore(clients)
        self.policy = TriggerPolicy(
            min_new_labels=settings.trigger_min_new_labels,
            min_per_class=settings.trigger_min_per_class,
            schedule_s=settings.trigger_schedule_s,
            cooldown_s=settings.trigger_cooldown_s,
        )
        self.booted_at = time.time()
        # Serialises this process's trigger decisions; the DynamoDB lock serialises processes.
        self._lock = asyncio.Lock()
        self._last_steps: dict[str, Any] = {}
        self._starting: set[str] = set()
        self._schedule_checked_at = 0.0

    # -- events --------------------------------------------------------------------------------------------------
    async def on_image_verified(self, event: ImageVerified) -> None:
        """Project the final label, then apply the label-count policy."""
        changed = await self.store.project_label(event)
        state = await self.store.state()
        counts = self.store.new_counts(state)
        log.info("label projected", extra={"sop_uid": event.sop_uid, "changed": changed, "new": counts})
        if self.policy.labels_due(counts):
            await self.request("policy")

    async def on_degraded(self, event: ModelPerformanceDegraded) -> None:
        if self.settings.trigger_on_degraded:
            log.info("performance degraded; requesting a run", extra={"metric": event.metric, "value": event.value})
            await self.request("degraded")

    async def on_drift(self, event: DriftDetected) -> None:
        log.warning("drift detected", extra={"site": event.site, "modality": event.modality, "feature": event.feature,
                                             "psi": event.psi, "model_version": event.model_version})
        if self.settings.trigger_on_drift:
            await self.request("drift")

    # -- triggering ----------------------------------------------------------------------------------------------
    async def request(
        self,
        trigger: Trigger,
        *,
        force: bool = False,
        overrides: dict[str, Any] | None = None,
        requested_by: str | None = None,
    ) -> dict[str, Any]:
        """Start a run if the lock is free, the cooldown over and the manifest changed; otherwise coalesce.

        Returns ``{"outcome": "started"|"coalesced"|"deferred"|"unchanged"|"empty"|"no_locked_set", ...}``.
        """
        async with self._lock:
            state = await self.store.state()
            if state.get("active_run"):
                await self.store.set_pending(merge_pending(state.get("pending"), trigger))
                return {"outcome": "coalesced", "active_run": state["active_run"]}
            wait = self.policy.cooldown_left(time.time(), state.get("last_started_at"), trigger)
            if wait > 0:
                await self.store.set_pending(merge_pending(state.get("pending"), trigger))
                return {"outcome": "deferred", "retry_in_s": round(wait, 1)}
            run_id = new_run_id()
            if not await self.store.acquire(run_id):
                state = await self.store.state()
                await self.store.set_pending(merge_pending(state.get("pending"), trigger))
                return {"outcome": "coalesced", "active_run": state.get("active_run")}
            self._starting.add(run_id)
            try:
                return await self._start_locked(run_id, trigger, force, overrides or {}, requested_by)
            except BaseException:
                # Nothing durable refers to the lock unless the run item exists; free it so later triggers work.
                if await self.store.get_run(run_id) is None:
                    await self.store.release(run_id)
                raise
            finally:
                self._starting.discard(run_id)

    async def _start_locked(
        self, run_id: str, trigger: Trigger, force: bool, overrides: dict[str, Any], requested_by: str | None
    ) -> dict[str, Any]:
        state = await self.store.state()
        consumed = self.store.new_counts(state)
        labels = await self.store.all_labels()
        previous_locked = await self.datasets.locked_set()
        locked = locked_set.update(previous_locked, labels)
        # No training run sees a locked or held-out patient, not even before the set can be drawn.
        snap = build_snapshot(labels, exclude_patients=locked_set.excluded_patients(locked, labels))
        if snap.records == 0:
            await self.store.release(run_id)
            return {"outcome": "empty", "detail": "there are no final normal/pneumonia labels to train on yet"}
        if snap.sha256 == state.get("last_snapshot_sha") and not force:
            await self.store.release(run_id)
            await self.store.consume_counts(consumed)
            log.info("manifest unchanged; no run", extra={"sha256": snap.sha256, "trigger": trigger})
            return {"outcome": "unchanged", "manifest_sha256": snap.sha256}
        if locked is None:
            await self.store.release(run_id)
            log.info("no locked evaluation set yet; no run", extra={"trigger": trigger})
            return {"outcome": "no_locked_set",
                    "detail": "the held-out patients' verified labels hold no positive and negative yet, so there is "
                              "no locked evaluation set to judge a model on"}

        with tracer("radloop.orchestrator").start_as_current_span(
            "start training", attributes={"radloop.run_id": run_id, "radloop.trigger": trigger}
        ):
            manifest_uri = await self.datasets.put_manifest(snap)
            locked_uri = (self.datasets.locked_uri(locked) if locked is previous_locked
                          else await self.datasets.put_locked_set(locked, previous_locked))
            # Generate the definition (or upsert the pipeline) before the run exists, so a slow first generation is
            # never mistaken for a start that died.
            await self.executor.prepare()
            champion = await self.store.champion()
            parameters = self.parameters(manifest_uri, champion, overrides, locked_uri=locked_uri)
            if parameters["ChampionModelUri"].endswith(NO_CHAMPION_PREFIX):
                await self.datasets.ensure_no_champion_marker()  # Evaluate's "champion" input must not be empty
            now = time.time()
            run: dict[str, Any] = {
                "run_id": run_id,
                "status": "Executing",
                "trigger": trigger,
                "requested_by": requested_by,
                "executor": self.executor.kind,
                "manifest_sha256": snap.sha256,
                "manifest_uri": manifest_uri,
                "label_count": snap.records,
                "label_counts": snap.per_class,
                "split_counts": snap.per_split,
                "locked_set": locked.summary(),
                "parameters": parameters,
                "champion_version": champion.version if champion else None,
                "created_at": now,
                "started_at": now,
                "steps": [],
                "completion_published": False,
            }
            await self.store.put_run(run)
            await self.store.mark_started(consumed)
            await self.publisher.publish(
                TrainingStarted(
                    event_id=f"{run_id}-started",
                    run_id=run_id,
                    manifest_sha256=snap.sha256,
                    manifest_uri=manifest_uri,
                    label_count=snap.records,
                    trigger=trigger,
                    champion_version=run["champion_version"],
                )
            )
            try:
                handle = await self.executor.start(run_id, parameters)
            except (ExecutorError, OSError, Exception) as exc:  # any start failure ends this run, not the service
                log.warning("execution failed to start", extra={"run_id": run_id, "error": str(exc)[:300]})
                run = await self.store.get_run(run_id) or run
                await self.finalize(run, {"status": "Failed", "failure_reason": f"the execution did not start: {exc}"})
                return {"outcome": "started", "run_id": run_id, "status": "Failed"}
            await self.store.update_run(run_id, handle)
        log.info("training started", extra={"run_id": run_id, "trigger": trigger, "labels": snap.records})
        return {"outcome": "started", "run_id": run_id, "manifest_sha256": snap.sha256}

    def parameters(
        self, manifest_uri: str, champion: ChampionPointer | None, overrides: dict[str, Any], *, locked_uri: str = ""
    ) -> dict[str, Any]:
        """The execution's pipeline parameters: the settings' training knobs, the approval policy's gate, the
        champion, then the manual overrides."""
        s = self.settings
        params: dict[str, Any] = {
            "ManifestUri": manifest_uri,
            # every candidate and the champion are scored on this one locked set (a paired comparison)
            "LockedSetUri": locked_uri,
            "ChampionAuc": float(champion.auc or 0.0) if champion and s.gate_on_champion else 0.0,
            # Evaluate re-scores the champion on the challenger's test split (the same patients)
            "ChampionModelUri": champion.model_artifact_uri if champion and champion.model_artifact_uri
            else f"s3://{s.topology.bucket('ml')}/{NO_CHAMPION_PREFIX}",
            "AucFloor": self.approval.auc_floor,
            "AucMargin": self.approval.auc_margin,
            "Epochs": s.train_epochs,
            "ImageSize": s.train_image_size,
            "Arch": s.train_arch,
            "BatchSize": s.train_batch_size,
        }
        for k, v in overrides.items():
            params[k] = OVERRIDABLE[k](v)
        if params.get("Comparison", "superiority") not in COMPARISONS:
            raise ValueError(f"Comparison must be one of {', '.join(COMPARISONS)}, not {params['Comparison']!r}")
        return params

    # -- tracking ------------------------------------------------------------------------------------------------
    async def track_once(self) -> None:
        """Poll the active run (if any) and finalise it when its execution reached a final status."""
        state = await self.store.state()
        run_id = state.get("active_run")
        if not run_id:
            return
        run = await self.store.get_run(run_id)
        if run is None:
            # The lock outlived a start that never created its run (a crash in between): free it.
            if time.time() - float(state.get("active_since", 0)) > 60:
                await self.store.release(run_id)
            return
        if run["status"] in TERMINAL:
            await self._after_terminal(run)
            return
        if run_id in self._starting:
            return
        if not run.get("pid") and not run.get("pipeline_execution") and time.time() - run["created_at"] < 30:
            return  # the start may still be in flight in another process
        doc = await self.executor.poll(run)
        if doc is None:
            return
        if doc.get("status") in TERMINAL:
            await self.finalize(run, doc)
        elif doc.get("steps") != self._last_steps.get(run_id):
            self._last_steps[run_id] = doc.get("steps")
            await self.store.update_run(run_id, {"steps": doc.get("steps") or []}, only_if_status="Executing")

    async def finalize(self, run: dict[str, Any], doc: dict[str, Any]) -> None:
        """Record the final status (exactly once, by a conditional write), publish, release the lock."""
        run_id = run["run_id"]
        outputs = doc.get("outputs") or {}
        status = doc.get("status", "Failed")
        reason = doc.get("failure_reason") or (None if status == "Succeeded" else f"the execution ended {status}")
        fields = {
            "status": status,
            "ended_at": time.time(),
            "failure_reason": reason,
            "steps": doc.get("steps") or [],
            "outputs": outputs,
            "metrics": {k: float(v) for k, v in (outputs.get("metrics") or {}).items() if isinstance(v, int | float)},
        }
        if not await self.store.update_run(run_id, fields, only_if_status="Executing"):
            run = await self.store.get_run(run_id) or run
        else:
            run = {**run, **{k: v for k, v in fields.items() if v is not None}}
            # Counted once per run: only the process whose conditional write ended the run records it.
            instrument("radloop.training.runs").add(1, {"outcome": str(status).lower()})
        log.info("training ended", extra={"run_id": run_id, "status": status, "reason": (reason or "")[:300]})
        self._last_steps.pop(run_id, None)
        await self._after_terminal(run)

    async def _after_terminal(self, run: dict[str, Any]) -> None:
        if not run.get("completion_published"):
            await self.publish_completed(run)
        await self.store.release(
            run["run_id"], snapshot_sha=run["manifest_sha256"] if run["status"] == "Succeeded" else None
        )

    async def publish_completed(self, run: dict[str, Any]) -> None:
        """Publish ``TrainingCompleted`` with a deterministic event id, so a re-publication is a duplicate."""
        outputs = run.get("outputs") or {}
        await self.publisher.publish(
            TrainingCompleted(
                event_id=f"{run['run_id']}-completed",
                run_id=run["run_id"],
                status=run["status"],
                manifest_sha256=run["manifest_sha256"],
                manifest_uri=run["manifest_uri"],
                metrics=run.get("metrics") or {},
                model_artifact_uri=outputs.get("model_artifact_uri"),
                model_package_arn=outputs.get("model_package_arn"),
                evaluation_uri=outputs.get("evaluation_uri"),
                pipeline_execution=run.get("pipeline_execution") or run["run_id"],
                failure_reason=(run.get("failure_reason") or None) and str(run["failure_reason"])[:2000],
                champion_version=run.get("champion_version"),
            )
        )
        await self.store.update_run(run["run_id"], {"completion_published": True})

    async def recover(self) -> None:
        """At start-up: re-publish completions a crash left unpublished; tracking of the active run resumes in
        :meth:`track_once` (re-attach through the status file, or Failed with the reason when the process is gone)."""
        for run in await self.store.list_runs():
            if run["status"] in TERMINAL and not run.get("completion_published"):
                await self.publish_completed(run)

    async def tick(self) -> None:
        await self.track_once()
        state = await self.store.state()
        if state.get("active_run"):
            return
        pending = state.get("pending")
        now = time.time()
        if pending and self.policy.cooldown_left(now, state.get("last_started_at"), pending) <= 0:
            if await self.store.take_pending(pending):
                counts = self.store.new_counts(state)
                if pending == "policy" and not self.policy.labels_due(counts):
                    # Concurrent label events asked for the run that has just been made: the labels counted since
                    # its snapshot are too few to train again (a follow-up would retrain on almost the same data).
                    log.info("coalesced policy trigger dropped: too few new labels since the last snapshot",
                             extra={"new": counts})
                    return
                log.info("starting the coalesced follow-up", extra={"trigger": pending})
                await self.request(pending)
            return
        last = max(float(state.get("last_started_at") or 0), self._schedule_checked_at) or None
        if self.policy.schedule_due(now, last, self.booted_at):
            # Checked at most once per period, so an unchanged manifest is not re-hashed on every tick.
            self._schedule_checked_at = now
            await self.request("schedule")

    async def run_forever(self) -> None:
        """The ticker: bounded by the process lifetime, never crashes on a failing poll."""
        await self.recover()
        try:
            # Generate the definition (or upsert the pipeline) now, so the first run does not wait for it.
            await self.executor.prepare()
        except Exception as exc:
            log.warning("pipeline preparation failed; retried at the next run", extra={"error": str(exc)[:500]})
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("orchestrator tick failed")
            await asyncio.sleep(self.settings.poll_interval_s)
