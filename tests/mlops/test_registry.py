"""Registry service over real HTTP against moto: registration from ``TrainingCompleted``, the approval policy,
manual decisions, rollback, duplicates, model cards, errors.

The inputs are what a pipeline's Register step leaves behind (evaluation.json, manifest and model.tar.gz in S3, a
``PendingManualApproval`` model package in the group), published as ``TrainingCompleted`` on the real bus. The full
loop with the real local executor is in test_loop.py.
"""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.auth import mint_token
from shared.aws import boto3_client
from shared.datasets import LABELS, ManifestRecord, serialize, sha256, split_for
from shared.events import TrainingCompleted
from shared.settings import Settings
from shared.storage import dataset_manifest_key
from tests.mlops.support import EventTap, ServiceProcess, publish, wait_until


@pytest.fixture(scope="module")
def registry(mdeployment: Settings, logs_dir: Path) -> Iterator[ServiceProcess]:
    svc = ServiceProcess("registry", mdeployment, logs_dir / "registry.log",
                         env_extra={"RADLOOP_CARD_BOOTSTRAP_RESAMPLES": "200"}).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def tap(mdeployment: Settings) -> EventTap:
    return EventTap(mdeployment)


def headers(settings: Settings, role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, role, subject=f'user-{role}')}"}


def promotion(auc: float, sensitivity: float, paired: tuple[float, float, float] | None) -> dict[str, Any]:
    """The locked-set evidence Evaluate writes (training/evaluate.py promotion_evidence): 40 positives, 60 negatives;
    ``paired`` = (champion AUC, difference, lower bound of its 95% interval), None for a first model."""
    ev: dict[str, Any] = {
        "locked_set": {"version": 1, "sha256": "c" * 64, "n": 100, "positives": 40, "negatives": 60},
        "challenger": {"auc": auc, "low": auc - 0.06, "high": min(1.0, auc + 0.06), "se": 0.03},
        "champion": None, "paired": None, "champion_expected": paired is not None, "comparison": "superiority",
        "operating_point": {"threshold": 0.42, "threshold_ci": [0.3, 0.5], "validation_positives": 30,
                            "validation_negatives": 45, "sensitivity": sensitivity, "sensitivity_ci": [0.7, 0.95],
                            "specificity": 0.8, "specificity_ci": [0.68, 0.88]},
        "calibration": {"brier": 0.12, "ece": 0.05},
    }
    if paired:
        champ, diff, low = paired
        ev["champion"] = {"auc": champ, "low": champ - 0.06, "high": min(1.0, champ + 0.06), "se": 0.03}
        ev["paired"] = {"auc_a": auc, "auc_b": champ, "diff": diff, "low": low, "high": diff + (diff - low),
                        "se": (diff - low) / 1.96, "p_value": 0.05, "n_positive": 40, "n_negative": 60}
    return ev


def produce_run(settings: Settings, *, auc: float, sensitivity: float, n: int = 40, predictions: bool = False,
                paired: tuple[float, float, float] | None = None) -> TrainingCompleted:
    """What a succeeded pipeline leaves: manifest, evaluation.json, model.tar.gz, a pending model package."""
    s3 = boto3_client(settings, "s3")
    sm = boto3_client(settings, "sagemaker")
    bucket = settings.topology.bucket("ml")
    run_id = f"run-20260101-000000-{uuid.uuid4().hex[:6]}"
    records = []
    for i in range(n):
        label = "pneumonia" if i % 3 == 0 else "normal"
        patient = f"pt-{run_id}-{i}"
        uid = f"1.2.3.{i + 1}"
        records.append(ManifestRecord(
            sop_uid=f"{uid}.1.1", study_uid=uid, series_uid=f"{uid}.1", bucket=settings.topology.bucket("images"),
            frame_key=f"frames/{uid}/{uid}.1/{uid}.1.1/1.jph", metadata_key=f"metadata/{uid}/{uid}.1/{uid}.1.1.json",
            label=label, target=LABELS[label], label_version=1, reader="r", patient_pseudo_id=patient,
            split=split_for(patient),
        ))
    data = serialize(records)
    digest = sha256(data)
    s3.put_object(Bucket=bucket, Key=dataset_manifest_key(digest), Body=data)
    npos, nneg = 20, 30
    tp = round(sensitivity * npos)
    evaluation = {"binary_classification_metrics": {
        "auc": {"value": auc}, "sensitivity": {"value": sensitivity}, "specificity": {"value": 0.8},
        "accuracy": {"value": 0.8}, "threshold": {"value": 0.42},
        "confusion_matrix": {"tp": tp, "fn": npos - tp, "tn": 24, "fp": nneg - 24},
    }, "promotion": promotion(auc, sensitivity, paired)}
    prefix = f"models/{run_id}"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/evaluation/evaluation.json", Body=json.dumps(evaluation).encode())
    if predictions:
        lines = [json.dumps({"target": i % 2, "probability": (0.3 + 0.4 * (i % 2)) + 0.01 * (i % 7)})
                 for i in range(50)]
        s3.put_object(Bucket=bucket, Key=f"{prefix}/evaluation/predictions.jsonl", Body="\n".join(lines).encode())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, doc in {"config.json": {"arch": "resnet18", "threshold": 0.42},
                          "model_card.json": {"code_version": "abc1234", "hyperparameters": {"epochs": 2},
                                              "manifest_sha256": digest}}.items():
            raw = json.dumps(doc).encode()
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    s3.put_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz", Body=buf.getvalue())
    arn = sm.create_model_package(
        ModelPackageGroupName=settings.topology.model_package_group, ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={"Containers": [{"Image": "radloop/triage:local",
                                                "ModelDataUrl": f"s3://{bucket}/{prefix}/model.tar.gz"}],
                                "SupportedContentTypes": ["application/dicom"],
                                "SupportedResponseMIMETypes": ["application/json"]},
        ModelMetrics={"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                      "S3Uri": f"s3://{bucket}/{prefix}/evaluation/evaluation.json"}}},
        CustomerMetadataProperties={"run_id": run_id, "manifest_sha256": digest},
    )["ModelPackageArn"]
    return TrainingCompleted(
        run_id=run_id, status="Succeeded", manifest_sha256=digest, manifest_uri=f"s3://{bucket}/{dataset_manifest_key(digest)}",
        metrics={"auc": auc, "sensitivity": sensitivity}, model_artifact_uri=f"s3://{bucket}/{prefix}/model.tar.gz",
        model_package_arn=arn, evaluation_uri=f"s3://{bucket}/{prefix}/evaluation/evaluation.json",
        pipeline_execution=run_id,
    )


def get(svc: ServiceProcess, settings: Settings, path: str, role: str = "viewer") -> httpx.Response:
    return httpx.get(f"{svc.url}{path}", headers=headers(settings, role), timeout=10)


def post(svc: ServiceProcess, settings: Settings, path: str, body: Any = None, role: str = "ml") -> httpx.Response:
    return httpx.post(f"{svc.url}{path}", json=body, headers=headers(settings, role), timeout=10)


def model_for(svc: ServiceProcess, settings: Settings, run_id: str) -> dict[str, Any] | None:
    models = get(svc, settings, "/registry/models").json()["models"]
    return next((m for m in models if m["run_id"] == run_id), None)


def package_status(settings: Settings, arn: str) -> str:
    return boto3_client(settings, "sagemaker").describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"]


def test_first_model_is_auto_approved_as_champion(registry: ServiceProcess, mdeployment: Settings, tap: EventTap):
    assert get(registry, mdeployment, "/registry/models/champion").status_code == 404
    done = produce_run(mdeployment, auc=0.90, sensitivity=0.85)
    publish(mdeployment, [done], "radloop.pipeline_orchestrator")
    reg = tap.wait_for("ModelRegistered", run_id=done.run_id, timeout_s=30)[0]
    assert reg["decision"] == "approved" and reg["version"] == 1
    approved = tap.wait_for("ModelApproved", version=1, timeout_s=30)[0]
    assert approved["model_package_arn"] == done.model_package_arn and approved["threshold"] == 0.42
    assert approved["previous_version"] is None and approved["rollback"] is False

    champion = get(registry, mdeployment, "/registry/models/champion").json()
    assert champion["version"] == 1 and champion["model_artifact_uri"] == done.model_artifact_uri
    assert package_status(mdeployment, done.model_package_arn) == "Approved"

    m = get(registry, mdeployment, "/registry/models/1").json()
    assert m["status"] == "approved" and m["champion"] is True
    assert m["model_package"]["approval_status"] == "Approved"
    assert m["metrics"]["auc"] == 0.9 and m["metrics"]["sensitivity"] == 0.85
    lin = m["lineage"]
    assert lin["manifest_sha256"] == done.manifest_sha256 and lin["pipeline_execution"] == done.run_id
    assert lin["label_counts"] == {"pneumonia": 14, "normal": 26}
    assert sum(sum(v.values()) for v in lin["split_counts"].values()) == 40
    assert lin["code_version"] == "abc1234" and lin["hyperparameters"] == {"epochs": 2}
    assert lin["parent_version"] is None
    assert [h["action"] for h in m["history"]] == ["registered", "approved"]

    card = get(registry, mdeployment, "/registry/models/1/card").json()
    ci = card["confidence_intervals"]
    assert ci["method"].startswith("parametric bootstrap from evaluation counts")
    lo, hi = ci["auc"]
    assert lo < 0.9 < hi and lo >= 0 and hi <= 1
    lo, hi = ci["sensitivity"]
    assert lo <= 0.85 <= hi
    md = get(registry, mdeployment, "/registry/models/1/card?format=md")
    assert md.headers["content-type"].startswith("text/markdown")
    assert "# Model card: radloop pneumonia triage v1" in md.text and "Intended use" in md.text
    assert done.manifest_sha256 in md.text
    # the record and the card keep the locked set's version, each AUC with its interval and the paired difference
    assert m["lineage"]["locked_set"]["version"] == 1 and m["evidence"]["challenger"]["low"] == pytest.approx(0.84)
    assert card["locked_set"]["sha256"] == "c" * 64 and "Version 1 (sha256" in md.text
    assert "first model" in m["decision_reason"] and "lower bound 0.8400 >= floor 0.7500" in m["decision_reason"]
    s3 = boto3_client(mdeployment, "s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=mdeployment.topology.bucket("ml"),
                                                 Prefix=f"models/{done.run_id}/registry/")["Contents"]]
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == ["model_card.json", "model_card.md"]


def test_worse_challenger_stays_pending_and_duplicates_register_once(
    registry: ServiceProcess, mdeployment: Settings, tap: EventTap
):
    done = produce_run(mdeployment, auc=0.88, sensitivity=0.9, paired=(0.90, -0.02, -0.05))
    # The same completion delivered three times: once, then twice more with new event ids (a re-publication).
    publish(mdeployment, [done, done.model_copy(update={"event_id": uuid.uuid4().hex}),
                          done.model_copy(update={"event_id": uuid.uuid4().hex})], "radloop.pipeline_orchestrator")
    reg = tap.wait_for("ModelRegistered", run_id=done.run_id, timeout_s=30)[0]
    assert reg["decision"] == "pending" and "paired difference -0.0200 (95% CI -0.0500 to +0.0100)" in reg["reason"]
    assert "lower bound is not above +0.0100" in reg["reason"]
    wait_until(lambda: registry_idle(registry), 20, "the registry worker to drain")
    versions = [m for m in get(registry, mdeployment, "/registry/models").json()["models"]
                if m["run_id"] == done.run_id]
    assert len(versions) == 1 and versions[0]["version"] == 2 and versions[0]["status"] == "pending"
    assert len(tap.of("ModelRegistered", run_id=done.run_id)) == 1
    assert get(registry, mdeployment, "/registry/models/champion").json()["version"] == 1
    assert package_status(mdeployment, done.model_package_arn) == "PendingManualApproval"
    assert tap.of("ModelApproved", version=2) == []
    m = get(registry, mdeployment, "/registry/models/2").json()
    assert m["lineage"]["parent_version"] == 1 and m["lineage"]["parent_auc"] == 0.9


def registry_idle(svc: ServiceProcess) -> bool:
    w = httpx.get(f"{svc.url}/readyz", timeout=5).json().get("worker", {})
    return w.get("in_flight") == 0 and w.get("received", 0) >= 4


def test_manual_approve_rollback_reject(registry: ServiceProcess, mdeployment: Settings, tap: EventTap):
    r = post(registry, mdeployment, "/registry/models/2/approve", {"reason": "reviewed the failure cases"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["champion"] is True
    ev = tap.wait_for("ModelApproved", version=2, timeout_s=20)[0]
    assert ev["approved_by"] == "user-ml" and ev["previous_version"] == 1 and ev["rollback"] is False
    assert get(registry, mdeployment, "/registry/models/champion").json()["version"] == 2

    # Rolling back makes v1 champion again, with a new ModelApproved marked as a rollback.
    r = post(registry, mdeployment, "/registry/models/1/rollback", {"reason": "v2 misses small opacities"})
    assert r.status_code == 200, r.text
    ev = tap.wait_for("ModelApproved", version=1, count=2, timeout_s=20)[-1]
    assert ev["rollback"] is True and ev["previous_version"] == 2
    champion = get(registry, mdeployment, "/registry/models/champion").json()
    assert champion["version"] == 1 and champion["threshold"] == 0.42

    # v2 is no longer champion, so it can be rejected; a rejected model is never approved or rolled back to.
    r = post(registry, mdeployment, "/registry/models/2/reject", {"reason": "withdrawn after review"})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    arn2 = r.json()["model_package_arn"]
    assert package_status(mdeployment, arn2) == "Rejected"
    r = post(registry, mdeployment, "/registry/models/2/approve", {"reason": "try again"})
    assert r.status_code == 409 and "rejected" in r.json()["detail"]
    assert post(registry, mdeployment, "/registry/models/2/rollback", {"reason": "try again"}).status_code == 409
    assert get(registry, mdeployment, "/registry/models/champion").json()["version"] == 1
    hist = get(registry, mdeployment, "/registry/models/2").json()["history"]
    assert [h["action"] for h in hist] == ["registered", "approved", "rejected"]
    assert hist[-1]["reason"] == "withdrawn after review" and hist[-1]["by"] == "user-ml"
    card = get(registry, mdeployment, "/registry/models/2/card?format=md").text
    assert "withdrawn after review" in card


def test_per_case_predictions_give_bootstrap_intervals(registry: ServiceProcess, mdeployment: Settings, tap: EventTap):
    done = produce_run(mdeployment, auc=0.95, sensitivity=0.95, predictions=True, paired=(0.90, 0.05, 0.02))
    publish(mdeployment, [done], "radloop.pipeline_orchestrator")
    reg = tap.wait_for("ModelRegistered", run_id=done.run_id, timeout_s=30)[0]
    assert reg["decision"] == "approved", reg["reason"]  # paired lower bound 0.02 > margin 0.01, floors met
    card = get(registry, mdeployment, f"/registry/models/{reg['version']}/card").json()
    ci = card["confidence_intervals"]
    assert ci["method"].startswith("bootstrap over per-case predictions") and ci["cases"] == 50
    assert ci["auc"][0] <= ci["auc"][1] and ci["specificity"][0] <= ci["specificity"][1]


def test_errors(registry: ServiceProcess, mdeployment: Settings):
    for role in ("viewer", "radiologist", "pacs"):
        r = post(registry, mdeployment, "/registry/models/1/approve", {"reason": "because"}, role=role)
        assert r.status_code == 403, (role, r.text)
        assert "may not approve" in r.json()["detail"]
    assert httpx.post(f"{registry.url}/registry/models/1/approve", json={"reason": "x y z"}).status_code == 401
    r = get(registry, mdeployment, "/registry/models/999")
    assert r.status_code == 404 and "999" in r.json()["detail"]
    for action in ("approve", "reject", "rollback"):
        assert post(registry, mdeployment, f"/registry/models/999/{action}", {"reason": "because"}).status_code == 404
    assert post(registry, mdeployment, "/registry/models/1/reject", {}).status_code == 422
    assert get(registry, mdeployment, "/registry/models/abc").status_code == 422
    # The champion cannot be rejected (roll back first); an approved version cannot be approved twice.
    champion = get(registry, mdeployment, "/registry/models/champion").json()["version"]
    assert post(registry, mdeployment, f"/registry/models/{champion}/reject", {"reason": "not now"}).status_code == 409
    assert post(registry, mdeployment, f"/registry/models/{champion}/approve", {"reason": "again"}).status_code == 409


def test_evidence_against_an_earlier_champion_stays_pending(registry: ServiceProcess, mdeployment: Settings,
                                                          tap: EventTap):
    """A run evaluated against one champion while another was approved (follow-ups start before the registry
    decides): its paired comparison says nothing about the champion it would replace, so it stays pending with that
    reason, however good the evidence (a review had a challenger worse than the champion approved this way)."""
    champion = get(registry, mdeployment, "/registry/models/champion").json()["version"]
    earlier = next(m["version"] for m in get(registry, mdeployment, "/registry/models").json()["models"]
                   if m["version"] != champion)
    done = produce_run(mdeployment, auc=0.97, sensitivity=0.95, paired=(0.90, 0.07, 0.04))
    publish(mdeployment, [done.model_copy(update={"champion_version": earlier})], "radloop.pipeline_orchestrator")
    reg = tap.wait_for("ModelRegistered", run_id=done.run_id, timeout_s=30)[0]
    assert reg["decision"] == "pending", reg
    assert f"compares this model with v{earlier}, but v{champion} became champion" in reg["reason"], reg["reason"]
    assert get(registry, mdeployment, "/registry/models/champion").json()["version"] == champion
    assert tap.of("ModelApproved", version=reg["version"]) == []
