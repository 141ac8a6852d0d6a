"""Model versions: registration from ``TrainingCompleted``, the approval policy, champion pointer, rollback.

SageMaker's model package is the system of record for approval status (``UpdateModelPackage``); the ``models``
table mirrors each version for fast queries, and the ``state`` item ``champion`` is the pointer triage reads.

No duplicate registrations: the version number is the package's ``ModelPackageVersion`` in the group (the system of
record numbers them), the ``models`` item is written only if absent, and ``ModelRegistered`` is published by whoever
flips ``registered_published`` from false to true, so a duplicated or re-published ``TrainingCompleted`` (even two
deliveries at once) registers and announces a version once::

    delivery 1: describe(arn) -> N -> PUT models[N] IF absent ──ok──> SET published IF false ──ok──> publish
    delivery 2: describe(arn) -> N -> models[N] exists ────────────> SET published IF false ──ConditionalCheckFailed
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

from services.registry.domain.card import (
    build_card,
    card_markdown,
    ci_from_counts,
    ci_from_predictions,
    metric_value,
    metrics_from_evaluation,
)
from services.registry.domain.policy import ApprovalPolicy
from shared.aws import AwsClients
from shared.datasets import parse as parse_manifest
from shared.ddb import from_item, is_conditional_failure, scan_all, to_item, to_value
from shared.events import ModelApproved, ModelRegistered, TrainingCompleted
from shared.publisher import EventPublisher
from shared.storage import model_prefix

log = logging.getLogger(__name__)
CHAMPION_KEY = "champion"


class RegistryError(Exception):
    """Base error; ``status`` is the HTTP status it maps to."""

    status = 400


class UnknownVersionError(RegistryError):
    status = 404


class ConflictError(RegistryError):
    status = 409


def _iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def split_s3(uri: str) -> tuple[str, str]:
    u = urlparse(uri)
    if u.scheme != "s3" or not u.netloc or not u.path.strip("/"):
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return u.netloc, u.path.lstrip("/")


class Registry:
    def __init__(self, clients: AwsClients, publisher: EventPublisher, policy: ApprovalPolicy, *,
                 resamples: int = 1000) -> None:
        topo = clients.settings.topology
        self.clients = clients
        self.publisher = publisher
        self.policy = policy
        self.resamples = resamples
        self.models_table = topo.table("models")
        self.state_table = topo.table("state")
        self.ml_bucket = topo.bucket("ml")

    # -- reads ---------------------------------------------------------------------------------------------------
    async def _state_item(self, key: str) -> dict[str, Any] | None:
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.state_table, Key={"key": {"S": key}}, ConsistentRead=True)
        return from_item(resp.get("Item"))

    async def champion(self) -> dict[str, Any] | None:
        return await self._state_item(CHAMPION_KEY)

    async def get(self, version: int) -> dict[str, Any]:
        ddb = await self.clients.dynamodb()
        resp = await ddb.get_item(TableName=self.models_table, Key={"version": {"N": str(int(version))}},
                                  ConsistentRead=True)
        item = from_item(resp.get("Item"))
        if item is None:
            raise UnknownVersionError(f"model version {version} does not exist")
        return item

    async def list(self) -> list[dict[str, Any]]:
        items = await scan_all(await self.clients.dynamodb(), self.models_table, ConsistentRead=True)
        return sorted(items, key=lambda m: m["version"])

    async def describe_package(self, arn: str) -> dict[str, Any]:
        """The SageMaker model package (the system of record), in a JSON-friendly subset."""
        sm = await self.clients.sagemaker()
        d = await sm.describe_model_package(ModelPackageName=arn)
        return {"arn": d.get("ModelPackageArn"), "group": d.get("ModelPackageGroupName"),
                "package_version": d.get("ModelPackageVersion"), "approval_status": d.get("ModelApprovalStatus"),
                "approval_description": d.get("ApprovalDescription"), "created_at": str(d.get("CreationTime", "")),
                "metadata": d.get("CustomerMetadataProperties", {})}

    # -- registration --------------------------------------------------------------------------------------------
    async def on_training_completed(self, event: TrainingCompleted) -> int | None:
        """Register the run's model package as a version (idempotent per package ARN); returns the version."""
        if event.status != "Succeeded" or not event.model_package_arn:
            log.info("training produced no model package; nothing to register",
                     extra={"run_id": event.run_id, "status": event.status})
            return None
        sm = await self.clients.sagemaker()
        package = await sm.describe_model_package(ModelPackageName=event.model_package_arn)
        # The package group numbers versions; using its number keeps one version per package, without gaps.
        version = int(package["ModelPackageVersion"])
        try:
            model = await self.get(version)
        except UnknownVersionError:
            model = await self._record(version, event, package)
        if await self._claim_flag(version, "registered_published"):
            try:
                await self.publisher.publish(ModelRegistered(
                    event_id=f"registered-{version}-{event.run_id}"[:128], version=version,
                    model_package_arn=model["model_package_arn"], run_id=event.run_id,
                    metrics=_floats(model.get("metrics")), decision=model["decision"],
                    reason=model["decision_reason"],
                ))
            except BaseException:
                await self._update(version, {"registered_published": False})
                raise
        elif not (model["decision"] == "approved" and model["status"] == "pending"):
            log.info("model package already registered", extra={"version": version, "run_id": event.run_id})
            return version
        model = await self.get(version)
        if model["decision"] == "approved" and model["status"] == "pending":
            await self._make_champion(model, by="policy", reason=model["decision_reason"], rollback=False)
        return version

    async def _claim_flag(self, version: int, flag: str) -> bool:
        """Flip ``flag`` from false to true; True for exactly one caller (concurrent duplicates publish once)."""
        ddb = await self.clients.dynamodb()
        try:
            await ddb.update_item(
                TableName=self.models_table, Key={"version": {"N": str(version)}}, UpdateExpression="SET #f = :t",
                ConditionExpression="#f = :f", ExpressionAttributeNames={"#f": flag},
                ExpressionAttributeValues={":t": {"BOOL": True}, ":f": {"BOOL": False}},
            )
        except Exception as exc:
            if is_conditional_failure(exc):
                return False
            raise
        return True

    async def _read_s3(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        s3 = await self.clients.s3()
        obj = await s3.get_object(Bucket=bucket, Key=key)
        async with obj["Body"] as body:
            return await body.read()  # type: ignore[no-any-return]

    async def _record(self, version: int, event: TrainingCompleted, raw_pkg: dict[str, Any]) -> dict[str, Any]:
        evaluation_uri = event.evaluation_uri or (
            raw_pkg.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri"))
        containers = raw_pkg.get("InferenceSpecification", {}).get("Containers", [])
        artifact_uri = event.model_artifact_uri or (containers[0].get("ModelDataUrl") if containers else None)
        evaluation = json.loads(await self._read_s3(evaluation_uri)) if evaluation_uri else {}
        metrics = metrics_from_evaluation(evaluation)
        if not metrics and event.metrics:
            metrics = dict(event.metrics)
        inner_card = await self._artifact_card(artifact_uri) if artifact_uri else {}
        label_counts, split_counts = await self._manifest_counts(event.manifest_uri)
        metadata = raw_pkg.get("CustomerMetadataProperties", {})
        champion = await self.champion()
        parent_auc = None
        if champion:
            try:
                parent_auc = (await self.get(int(champion["version"]))).get("metrics", {}).get("auc")
            except UnknownVersionError:
                parent_auc = champion.get("auc")
        # The fixed test split: the challenger's evaluation may carry the champion re-scored on the same patients.
        champion_auc = metric_or_none(evaluation, "champion_auc") or parent_auc
        decision, reason = self.policy.decide(metrics.get("auc"), metrics.get("sensitivity"),
                                              champion_auc if champion else None)
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
            "parent_version": champion.get("version") if champion else None,
            "parent_auc": champion_auc if champion else None,
            "evaluation_uri": evaluation_uri,
            "package_metadata": raw_pkg.get("CustomerMetadataProperties", {}),
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
            "history": [{"action": "registered", "by": "registry", "reason": reason, "at": _iso()}],
            "created_at": time.time(),
            "registered_published": False,
        }
        model["card_uri"] = await self._write_card(model, evaluation_uri, float(threshold))
        ddb = await self.clients.dynamodb()
        try:
            await ddb.put_item(TableName=self.models_table, Item=to_item(model),
                               ConditionExpression="attribute_not_exists(version)")
        except Exception as exc:
            if not is_conditional_failure(exc):
                raise
            return await self.get(version)
        log.info("model registered", extra={"version": version, "decision": decision, "run_id": event.run_id})
        return model

    async def _artifact_card(self, artifact_uri: str) -> dict[str, Any]:
        """``model_card.json`` + ``config.json`` from inside ``model.tar.gz`` (code version, hyper-parameters)."""
        try:
            data = await self._read_s3(artifact_uri)
            out: dict[str, Any] = {}
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
                for name in ("config.json", "model_card.json"):
                    member = next((m for m in tar.getmembers() if m.name.lstrip("./") == name), None)
                    if member is not None:
                        f = tar.extractfile(member)
                        if f is not None:
                            out.update(json.loads(f.read()))
            return out
        except Exception as exc:  # lineage is best-effort from the artefact; the package stays the record
            log.warning("could not read the model card inside the artefact", extra={"error": str(exc)[:200]})
            return {}

    async def _manifest_counts(self, manifest_uri: str) -> tuple[dict[str, int], dict[str, dict[str, int]]]:
        records = parse_manifest(await self._read_s3(manifest_uri))
        per_class: dict[str, int] = {"normal": 0, "pneumonia": 0}
        per_split: dict[str, dict[str, int]] = {}
        for r in records:
            per_class[r.label] += 1
            per_split.setdefault(r.split, {"normal": 0, "pneumonia": 0})[r.label] += 1
        return per_class, per_split

    async def _predictions(self, evaluation_uri: str | None) -> tuple[list[int], list[float]] | None:
        """Per-case test predictions next to ``evaluation.json`` (``predictions.jsonl`` or ``.csv``), if any."""
        if not evaluation_uri:
            return None
        bucket, key = split_s3(evaluation_uri)
        base = key.rsplit("/", 1)[0]
        s3 = await self.clients.s3()
        for name in ("predictions.jsonl", "predictions.csv"):
            try:
                obj = await s3.get_object(Bucket=bucket, Key=f"{base}/{name}")
                async with obj["Body"] as body:
                    text = (await body.read()).decode()
            except Exception:
                continue
            y, p = [], []
            rows = ([json.loads(line) for line in text.splitlines() if line.strip()] if name.endswith("jsonl")
                    else _csv_rows(text))
            for r in rows:
                t = r.get("target", r.get("y_true", r.get("label")))
                s = r.get("probability", r.get("y_score", r.get("score")))
                if t is None or s is None:
                    continue
                y.append(int(float(t)))
                p.append(float(s))
            if y and 0 < sum(y) < len(y):
                return y, p
        return None

    async def _write_card(self, model: dict[str, Any], evaluation_uri: str | None, threshold: float) -> str:
        preds = await self._predictions(evaluation_uri)
        if preds:
            ci = ci_from_predictions(preds[0], preds[1], threshold, self.resamples, seed=model["version"])
        else:
            ci = ci_from_counts(model["metrics"], self.resamples, seed=model["version"])
        model["confidence_intervals"] = ci
        card = build_card(model, ci, self.policy.as_dict())
        prefix = f"{model_prefix(model['run_id'])}/registry/v{model['version']}"
        s3 = await self.clients.s3()
        await s3.put_object(Bucket=self.ml_bucket, Key=f"{prefix}/model_card.json",
                            Body=json.dumps(card, indent=2, default=str).encode(), ContentType="application/json")
        await s3.put_object(Bucket=self.ml_bucket, Key=f"{prefix}/model_card.md",
                            Body=card_markdown(card).encode(), ContentType="text/markdown")
        return f"s3://{self.ml_bucket}/{prefix}/model_card.json"

    async def card(self, version: int) -> dict[str, Any]:
        """The card, rebuilt from the current record (so approval history is current)."""
        model = await self.get(version)
        return build_card(model, model.get("confidence_intervals") or {}, model.get("policy") or {})

    # -- decisions -----------------------------------------------------------------------------------------------
    async def approve(self, version: int, by: str, reason: str) -> dict[str, Any]:
        model = await self.get(version)
        if model["status"] == "rejected":
            raise ConflictError(f"model version {version} was rejected and can never be deployed; train a new one")
        if model["status"] == "approved":
            raise ConflictError(f"model version {version} is already approved; use rollback to make it champion again")
        return await self._make_champion(model, by=by, reason=reason, rollback=False)

    async def reject(self, version: int, by: str, reason: str) -> dict[str, Any]:
        model = await self.get(version)
        champion = await self.champion()
        if champion and int(champion["version"]) == version:
            raise ConflictError(f"model version {version} is the champion; roll back to another version first")
        if model["status"] == "rejected":
            raise ConflictError(f"model version {version} is already rejected")
        sm = await self.clients.sagemaker()
        await sm.update_model_package(ModelPackageArn=model["model_package_arn"], ModelApprovalStatus="Rejected",
                                      ApprovalDescription=reason[:1000])
        history = [*model.get("history", []), {"action": "rejected", "by": by, "reason": reason, "at": _iso()}]
        await self._update(version, {"status": "rejected", "history": history})
        return await self.get(version)

    async def rollback(self, version: int, by: str, reason: str) -> dict[str, Any]:
        model = await self.get(version)
        champion = await self.champion()
        if model["status"] != "approved":
            raise ConflictError(f"model version {version} is {model['status']}; only an approved version can be "
                                "rolled back to")
        if champion and int(champion["version"]) == version:
            raise ConflictError(f"model version {version} is already the champion")
        return await self._make_champion(model, by=by, reason=reason, rollback=True)

    async def _make_champion(self, model: dict[str, Any], *, by: str, reason: str, rollback: bool) -> dict[str, Any]:
        version = int(model["version"])
        sm = await self.clients.sagemaker()
        await sm.update_model_package(ModelPackageArn=model["model_package_arn"], ModelApprovalStatus="Approved",
                                      ApprovalDescription=reason[:1000])
        previous = await self.champion()
        prev_version = int(previous["version"]) if previous else None
        pointer = {
            "key": CHAMPION_KEY, "version": version, "model_artifact_uri": model.get("model_artifact_uri"),
            "model_package_arn": model["model_package_arn"], "threshold": float(model.get("threshold", 0.5)),
            "auc": (model.get("metrics") or {}).get("auc"), "run_id": model.get("run_id"), "updated_at": _iso(),
        }
        ddb = await self.clients.dynamodb()
        # Optimistic concurrency: two decisions racing cannot both believe they replaced the same champion.
        cond = "attribute_not_exists(#k)" if prev_version is None else "version = :prev"
        kw: dict[str, Any] = {"ExpressionAttributeNames": {"#k": "key"}} if prev_version is None else {
            "ExpressionAttributeValues": {":prev": {"N": str(prev_version)}}}
        try:
            await ddb.put_item(TableName=self.state_table, Item=to_item(pointer), ConditionExpression=cond, **kw)
        except Exception as exc:
            if is_conditional_failure(exc):
                raise ConflictError("the champion changed while this decision was made; retry") from None
            raise
        action = "rolled back to" if rollback else "approved"
        history = [*model.get("history", []), {"action": action, "by": by, "reason": reason, "at": _iso(),
                                                "previous_version": prev_version}]
        await self._update(version, {"status": "approved", "history": history, "approved_at": time.time()})
        await self.publisher.publish(ModelApproved(
            version=version, model_package_arn=model["model_package_arn"],
            model_artifact_uri=model.get("model_artifact_uri") or "", threshold=float(model.get("threshold", 0.5)),
            approved_by=by, reason=reason[:1000], previous_version=prev_version, rollback=rollback,
        ))
        log.info("champion changed", extra={"version": version, "previous": prev_version, "rollback": rollback})
        return await self.get(version)

    async def _update(self, version: int, fields: dict[str, Any]) -> None:
        ddb = await self.clients.dynamodb()
        names = {f"#f{i}": k for i, k in enumerate(fields)}
        values = {f":v{i}": to_value(v) for i, v in enumerate(fields.values())}
        await ddb.update_item(
            TableName=self.models_table, Key={"version": {"N": str(version)}},
            UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields))),
            ExpressionAttributeNames=names, ExpressionAttributeValues=values,
        )


def _floats(metrics: dict[str, Any] | None) -> dict[str, float]:
    return {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, int | float)}


def metric_or_none(evaluation: dict[str, Any], key: str) -> float | None:
    block = (evaluation.get("binary_classification_metrics") or {}).get(key)
    return metric_value(block) if block is not None else None


def _csv_rows(text: str) -> list[dict[str, Any]]:
    import csv

    return list(csv.DictReader(io.StringIO(text)))
