"""The registry's use cases: registration from ``TrainingCompleted``, manual decisions, reads.

SageMaker's model package is the system of record for approval status (``UpdateModelPackage``); the ``models``
table mirrors each version for fast queries, and the champion pointer (:mod:`shared.champion`) is what triage reads.
The decision itself is :func:`services.registry.domain.policy.decide` with the one approval policy
(:mod:`shared.approval`).

No duplicate registrations: the version number is the package's ``ModelPackageVersion`` in the group (the system of
record numbers them), the ``models`` item is written only if absent, and ``ModelRegistered`` is published by whoever
claims the publishing while ``registered_published`` is false, so a duplicated or re-published ``TrainingCompleted`` (even two
deliveries at once) registers and announces a version once::

    delivery 1: describe(arn) -> N -> PUT models[N] IF absent ──ok──> claim IF unpublished ──ok──> publish -> SET published
    delivery 2: describe(arn) -> N -> models[N] exists ────────────> claim IF unpublished ──condition false

A claim is a lease (:data:`PUBLISH_LEASE_S`): a delivery killed between its claim and ``SET published`` is followed
by one that publishes the same event id once the lease has passed.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

from services.registry.adapters.artifacts import Artifacts
from services.registry.adapters.models import ModelRecords
from services.registry.adapters.packages import ModelPackages
from services.registry.domain.card import (
    build_card,
    ci_from_counts,
    ci_from_predictions,
    metric_or_none,
    metrics_from_evaluation,
    numeric_metrics,
)
from services.registry.domain.errors import DecisionConflict, UnknownVersionError
from services.registry.domain.policy import decide
from shared.approval import ApprovalPolicy
from shared.aws import AwsClients
from shared.champion import ChampionPointer
from shared.events import ModelApproved, ModelRegistered, TrainingCompleted
from shared.metrics import instrument
from shared.publisher import EventPublisher

log = logging.getLogger(__name__)

#: Seconds a delivery has to publish ``ModelRegistered`` after claiming it before another delivery may (one that was
#: killed meanwhile comes back after the registry queue's visibility timeout, which is longer: tested).
PUBLISH_LEASE_S = 30.0


def _iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _evidence_record(promotion: dict[str, Any]) -> dict[str, Any] | None:
    """What a version's record keeps of the locked-set evidence (no per-case data)."""
    if not promotion:
        return None
    keep = ("locked_set", "challenger", "champion", "paired", "comparison", "operating_point", "calibration", "verdict")
    return {k: promotion.get(k) for k in keep}


class Registry:
    """Model versions: reads, registration (with the policy's decision), approve / reject / rollback."""

    def __init__(self, clients: AwsClients, publisher: EventPublisher, policy: ApprovalPolicy, *,
                 resamples: int = 1000) -> None:
        self.publisher = publisher
        self.policy = policy
        self.resamples = resamples
        self.records = ModelRecords(clients)
        self.packages = ModelPackages(clients)
        self.artifacts = Artifacts(clients)

    # -- reads ---------------------------------------------------------------------------------------------------
    async def champion(self) -> ChampionPointer | None:
        """The champion pointer, or None before the first approval (also refreshes the champion-version gauge)."""
        pointer = await self.records.champion()
        if pointer is not None:
            instrument("radloop.model.champion.version").set(pointer.version)
        return pointer

    async def get(self, version: int) -> dict[str, Any]:
        """One version's record; :class:`UnknownVersionError` (404) when there is none."""
        return await self.records.get(version)

    async def list(self) -> list[dict[str, Any]]:
        """Every version, oldest first."""
        return await self.records.list()

    async def describe_package(self, arn: str) -> dict[str, Any]:
        """The SageMaker model package (the system of record), in a JSON-friendly subset."""
        return await self.packages.describe(arn)

    async def card(self, version: int) -> dict[str, Any]:
        """The card, rebuilt from the current record (so approval history is current)."""
        model = await self.get(version)
        return build_card(model, model.get("confidence_intervals") or {}, model.get("policy") or {})

    # -- registration --------------------------------------------------------------------------------------------
    async def on_training_completed(self, event: TrainingCompleted) -> int | None:
        """Register the run's model package as a version (idempotent per package ARN); returns the version."""
        if event.status != "Succeeded" or not event.model_package_arn:
            log.info("training produced no model package; nothing to register",
                     extra={"run_id": event.run_id, "status": event.status})
            return None
        package = await self.packages.describe_raw(event.model_package_arn)
        # The package group numbers versions; using its number keeps one version per package, without gaps.
        version = int(package["ModelPackageVersion"])
        try:
            model = await self.get(version)
        except UnknownVersionError:
            model = await self._record(version, event, package)
        if await self.records.claim_publish(version, "registered_published", now=time.time(),
                                            lease_s=PUBLISH_LEASE_S):
            try:
                await self.publisher.publish(ModelRegistered(
                    event_id=f"registered-{version}-{event.run_id}"[:128], version=version,
                    model_package_arn=model["model_package_arn"], run_id=event.run_id,
                    metrics=numeric_metrics(model.get("metrics")), decision=model["decision"],
                    reason=model["decision_reason"],
                ))
            except BaseException:
                await self.records.release_publish(version, "registered_published")
                raise
            await self.records.update(version, {"registered_published": True})
        elif not (model["decision"] == "approved" and model["status"] == "pending"):
            if model["status"] == "approved" and model.get("approved_published") is False:
                # Approved, but the process died before ModelApproved went out (a review: triage never heard of its
                # champion until an image arrived): the redelivery publishes it, under the same event id.
                await self._publish_approved(model)
            log.info("model package already registered", extra={"version": version, "run_id": event.run_id})
            return version
        model = await self.get(version)
        if model["decision"] == "approved" and model["status"] == "pending":
            await self._make_champion(model, by="policy", reason=model["decision_reason"], rollback=False)
        return version

    async def _record(self, version: int, event: TrainingCompleted, raw_pkg: dict[str, Any]) -> dict[str, Any]:
        """Build and store a version's record (metrics, decision, lineage, card); another delivery's record wins."""
        evaluation_uri = event.evaluation_uri or (
            raw_pkg.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri"))
        containers = raw_pkg.get("InferenceSpecification", {}).get("Containers", [])
        artifact_uri = event.model_artifact_uri or (containers[0].get("ModelDataUrl") if containers else None)
        evaluation = await self.artifacts.evaluation(evaluation_uri)
        metrics = metrics_from_evaluation(evaluation)
        if not metrics and event.metrics:
            metrics = dict(event.metrics)
        inner_card = await self.artifacts.artifact_card(artifact_uri) if artifact_uri else {}
        label_counts, split_counts = await self.artifacts.manifest_counts(event.manifest_uri)
        metadata = raw_pkg.get("CustomerMetadataProperties", {})
        champion = await self.champion()
        parent_auc = None
        if champion:
            try:
                parent_auc = (await self.get(champion.version)).get("metrics", {}).get("auc")
            except UnknownVersionError:
                parent_auc = champion.auc
        # The fixed test split: the challenger's evaluation may carry the champion re-scored on the same patients.
        champion_auc = metric_or_none(evaluation, "champion_auc") or parent_auc
        decision, reason = decide(self.policy, evaluation, has_champion=champion is not None,
                                  champion_version=champion.version if champion else None,
                                  compared_with=event.champion_version)
        promotion = evaluation.get("promotion") if isinstance(evaluation.get("promotion"), dict) else {}
        threshold = metrics.get("threshold", inner_card.get("threshold", 0.5))
        lineage = {
            "run_id": event.run_id,
            "manifest_sha256": event.manifest_sha256,
            "manifest_uri": event.manifest_uri,
            "label_counts": label_counts,
            "split_counts": split_counts,
            "pipeline_execution": event.pipeline_execution,
            "code_version": inner_card.get("code_version") or metadata.get("code_version"),
            "hyperparameters": inner_card.get("hyperparameters") or inner_card.get("hyper_parameters"),
            "parent_version": champion.version if champion else None,
            "parent_auc": champion_auc if champion else None,
            "evaluation_uri": evaluation_uri,
            "package_metadata": metadata,
            "locked_set": promotion.get("locked_set"),
        }
        model = {
            "version": version,
            "model_package_arn": event.model_package_arn,
            "run_id": event.run_id,
            "status": "pending",
            "decision": decision,
            "decision_reason": reason,
            "metrics": metrics,
            "threshold": float(threshold),
            "model_artifact_uri": artifact_uri,
            "evaluation_uri": evaluation_uri,
            "lineage": lineage,
            "policy": self.policy.as_dict(),
            # the locked-set evidence the decision was made on: each AUC with its 95% CI, the paired difference
            "evidence": _evidence_record(promotion),
            "history": [{"action": "registered", "by": "registry", "reason": reason, "at": _iso()}],
            "created_at": time.time(),
            "registered_published": False,
        }
        model["card_uri"] = await self._write_card(model, evaluation_uri, float(threshold))
        if not await self.records.put_new(model):
            return await self.get(version)
        log.info("model registered", extra={"version": version, "decision": decision, "run_id": event.run_id})
        return model

    async def _write_card(self, model: dict[str, Any], evaluation_uri: str | None, threshold: float) -> str:
        preds = await self.artifacts.predictions(evaluation_uri)
        if preds:
            ci = ci_from_predictions(preds[0], preds[1], threshold, self.resamples, seed=model["version"])
        else:
            ci = ci_from_counts(model["metrics"], self.resamples, seed=model["version"])
        model["confidence_intervals"] = ci
        card = build_card(model, ci, self.policy.as_dict())
        return await self.artifacts.write_card(model["run_id"], model["version"], card)

    # -- decisions -----------------------------------------------------------------------------------------------
    async def approve(self, version: int, by: str, reason: str) -> dict[str, Any]:
        """Approve a pending version and make it champion."""
        model = await self.get(version)
        if model["status"] == "rejected":
            raise DecisionConflict(f"model version {version} was rejected and can never be deployed; train a new one")
        if model["status"] == "approved":
            raise DecisionConflict(
                f"model version {version} is already approved; use rollback to make it champion again")
        return await self._make_champion(model, by=by, reason=reason, rollback=False)

    async def reject(self, version: int, by: str, reason: str) -> dict[str, Any]:
        """Reject a version that is not the champion; it is never deployed."""
        model = await self.get(version)
        champion = await self.champion()
        if champion and champion.version == version:
            raise DecisionConflict(f"model version {version} is the champion; roll back to another version first")
        if model["status"] == "rejected":
            raise DecisionConflict(f"model version {version} is already rejected")
        await self.packages.set_status(model["model_package_arn"], "Rejected", reason)
        history = [*model.get("history", []), {"action": "rejected", "by": by, "reason": reason, "at": _iso()}]
        await self.records.update(version, {"status": "rejected", "history": history})
        return await self.get(version)

    async def rollback(self, version: int, by: str, reason: str) -> dict[str, Any]:
        """Make an earlier approved version champion again."""
        model = await self.get(version)
        champion = await self.champion()
        if model["status"] != "approved":
            raise DecisionConflict(f"model version {version} is {model['status']}; only an approved version can be "
                                   "rolled back to")
        if champion and champion.version == version:
            raise DecisionConflict(f"model version {version} is already the champion")
        return await self._make_champion(model, by=by, reason=reason, rollback=True)

    async def _make_champion(self, model: dict[str, Any], *, by: str, reason: str, rollback: bool) -> dict[str, Any]:
        version = int(model["version"])
        await self.packages.set_status(model["model_package_arn"], "Approved", reason)
        previous = await self.champion()
        prev_version = previous.version if previous else None
        pointer = ChampionPointer(
            version=version, model_artifact_uri=model.get("model_artifact_uri") or "",
            model_package_arn=model["model_package_arn"], threshold=float(model.get("threshold", 0.5)),
            auc=(model.get("metrics") or {}).get("auc"), run_id=model.get("run_id"), updated_at=_iso(),
        )
        # Optimistic concurrency: two decisions racing cannot both believe they replaced the same champion (409).
        await self.records.replace_champion(pointer, previous_version=prev_version)
        instrument("radloop.model.champion.version").set(version)
        action = "rolled back to" if rollback else "approved"
        history = [*model.get("history", []), {"action": action, "by": by, "reason": reason, "at": _iso(),
                                                "previous_version": prev_version}]
        # The approval and "its event is not out yet" in one write; the event after it (a redelivery re-publishes
        # one that a crash cut off: _publish_approved).
        await self.records.update(version, {"status": "approved", "history": history, "approved_at": time.time(),
                                            "approved_published": False})
        approved = await self.get(version)
        await self._publish_approved(approved)
        log.info("champion changed", extra={"version": version, "previous": prev_version, "rollback": rollback})
        return {**approved, "approved_published": True}  # what _publish_approved wrote: no second read

    async def _publish_approved(self, model: dict[str, Any]) -> None:
        """Publish ``ModelApproved`` for the latest approval of ``model`` (its history's last entry), then record that
        it went out. The event id names the approval, so a re-publication is the same event to its consumers."""
        version = int(model["version"])
        last = next((h for h in reversed(model.get("history") or []) if h.get("action") in ("approved",
                                                                                              "rolled back to")), {})
        await self.publisher.publish(ModelApproved(
            event_id=f"approved-{version}-{model.get('approved_at')}"[:128],
            version=version, model_package_arn=model["model_package_arn"],
            model_artifact_uri=model.get("model_artifact_uri") or "", threshold=float(model.get("threshold", 0.5)),
            approved_by=str(last.get("by") or "registry"), reason=str(last.get("reason") or "")[:1000],
            previous_version=last.get("previous_version"), rollback=last.get("action") == "rolled back to",
        ))
        await self.records.update(version, {"approved_published": True})
