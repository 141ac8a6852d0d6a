"""The orchestrator over real HTTP and the real bus, on its AWS path: ``StartPipelineExecution`` on the embedded
SageMaker endpoint with the real pipeline definition, tracked by ``DescribePipelineExecution`` polling.

moto's executions report Succeeded at once without running anything (STACK_NOTES), so this module covers the label
projection, the trigger policy (N and M, duplicates, out-of-order versions, indeterminate), the cooldown with its
deferred follow-up, the degraded trigger, snapshots and the HTTP errors. Real executions are in test_loop.py.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.approval import load_policy
from shared.auth import mint_token
from shared.aws import boto3_client
from shared.datasets import parse
from shared.events import DriftDetected, ModelPerformanceDegraded
from shared.settings import Settings
from tests.mlops.support import EventTap, ServiceProcess, publish, splits, store_cases, verified, wait_until


@pytest.fixture(scope="module")
def tap(mdeployment: Settings) -> EventTap:
    return EventTap(mdeployment)


@pytest.fixture(scope="module")
def orch(mdeployment: Settings, logs_dir: Path, pipeline_definition: Path) -> Iterator[ServiceProcess]:
    env = {
        "RADLOOP_EXECUTOR": "sagemaker",
        "RADLOOP_PIPELINE_DEFINITION": str(pipeline_definition),
        "RADLOOP_TRIGGER_MIN_NEW_LABELS": "8",
        "RADLOOP_TRIGGER_MIN_PER_CLASS": "2",
        "RADLOOP_TRIGGER_COOLDOWN_S": "8",
        "RADLOOP_POLL_INTERVAL_S": "0.5",
    }
    svc = ServiceProcess("pipeline_orchestrator", mdeployment, logs_dir / "orch-aws.log", env_extra=env).start()
    try:
        yield svc
    finally:
        svc.stop()


def h(settings: Settings, role: str = "viewer") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, role)}"}


def trainings(svc: ServiceProcess, settings: Settings, path: str = "") -> Any:
    return httpx.get(f"{svc.url}/orchestrator/trainings{path}", headers=h(settings), timeout=10)


def manifest(settings: Settings, sha: str) -> list:
    s3 = boto3_client(settings, "s3")
    return parse(s3.get_object(Bucket=settings.topology.bucket("ml"), Key=f"datasets/{sha}/manifest.json")["Body"].read())


def test_policy_projection_cooldown_and_sagemaker_path(orch, mdeployment, tap, logs_dir):
    cases = store_cases(mdeployment, {"train": 14, "val": 2, "test": 2}, seed=3)
    held = splits(cases)["test"]  # the held-out patients: the locked evaluation set is drawn from their labels
    normals = [c for c in cases if c.label == "normal" and c not in held]
    pneumonias = [c for c in cases if c.label == "pneumonia" and c not in held]
    assert sorted(c.label for c in held) == ["normal", "pneumonia"]
    # 7 normals and 1 pneumonia: 8 new labels, but fewer than 2 in one class -> nothing starts.
    first = [verified(c) for c in normals[:6]] + [verified(c) for c in held]
    publish(mdeployment, first, "radloop.verification")
    # A redelivered label (same version, new event id) never counts twice.
    publish(mdeployment, [first[0].model_copy(update={"event_id": uuid.uuid4().hex})], "radloop.verification")
    wait_until(lambda: sum(trainings(orch, mdeployment).json()["new_labels"].values()) == 8, 30, "8 labels counted")
    publish(mdeployment, [verified(normals[0], label="normal", version=1)], "radloop.verification")
    time.sleep(2.0)
    body = trainings(orch, mdeployment).json()
    assert body["new_labels"] == {"normal": 7, "pneumonia": 1} and body["runs"] == []
    assert tap.of("TrainingStarted") == []

    # The second pneumonia label meets N=8 and M=2.
    publish(mdeployment, [verified(pneumonias[1])], "radloop.verification")
    started = tap.wait_for("TrainingStarted", timeout_s=30)[0]
    # 9 labels, of which the 2 held-out ones became version 1 of the locked set: the run trains on 7
    assert started["trigger"] == "policy" and started["label_count"] == 7
    completed = tap.wait_for("TrainingCompleted", run_id=started["run_id"], timeout_s=30)[0]
    assert completed["status"] == "Succeeded" and completed["pipeline_execution"].startswith("arn:aws:sagemaker:")
    run = trainings(orch, mdeployment, f"/{started['run_id']}").json()
    assert run["executor"] == "sagemaker" and run["parameters"]["ManifestUri"] == started["manifest_uri"]
    assert set(run["parameters"]) >= {"ManifestUri", "ChampionAuc", "AucFloor", "AucMargin", "Epochs", "ImageSize",
                                      "Arch", "BatchSize", "LockedSetUri"}
    assert run["locked_set"]["version"] == 1 and (run["locked_set"]["positives"], run["locked_set"]["negatives"]) == (
        1, 1)
    assert run["parameters"]["LockedSetUri"].endswith("/locked-eval/v0001/")
    held_patients = {c.patient for c in held}
    assert not held_patients & {r.patient_pseudo_id for r in manifest(mdeployment, started["manifest_sha256"])}
    policy = load_policy()  # what this orchestrator reads: the packaged document unless the environment names one
    assert (run["parameters"]["AucFloor"], run["parameters"]["AucMargin"]) == (policy.auc_floor, policy.auc_margin)
    sm = boto3_client(mdeployment, "sagemaker")
    desc = sm.describe_pipeline_execution(PipelineExecutionArn=completed["pipeline_execution"])
    assert desc["PipelineExecutionDisplayName"] == started["run_id"]
    wait_until(lambda: trainings(orch, mdeployment).json()["active_run"] is None, 20, "the lock to be released")

    # An amended label (v2, now indeterminate) leaves the dataset; the degraded trigger arrives within the cooldown,
    # is deferred, and starts by itself once the cooldown is over.
    publish(mdeployment, [verified(normals[1], label="indeterminate", version=2, resolution="amended")],
            "radloop.verification")
    wait_until(lambda: _label_version(mdeployment, normals[1].sop_uid) == 2, 20, "the amendment to be projected")
    # The older version arriving late does not overwrite the newer one.
    publish(mdeployment, [verified(normals[1], version=1)], "radloop.verification")
    # Drift is handled (logged) but starts nothing by default (trigger_on_drift=False): had it, the pending trigger
    # below would be "drift", not "degraded".
    publish(mdeployment, [DriftDetected(model_version=1, site="site-0123456789", modality="CR", feature="score",
                                        psi=0.9, threshold=0.25, window_images=500)], "radloop.triage")
    wait_until(lambda: "drift detected" in (logs_dir / "orch-aws.log").read_text(), 20, "the drift event handled")
    publish(mdeployment, [ModelPerformanceDegraded(model_version=1, metric="auc", value=0.6, floor=0.7,
                                                   sample_size=50)], "radloop.triage")
    wait_until(lambda: trainings(orch, mdeployment).json()["pending"] == "degraded", 20, "the deferred trigger")
    second = tap.wait_for("TrainingStarted", count=2, timeout_s=30)[1]
    assert second["trigger"] == "degraded" and second["label_count"] == 6
    gap = datetime.fromisoformat(second["occurred_at"]) - datetime.fromisoformat(started["occurred_at"])
    assert gap.total_seconds() >= 7.5  # the cooldown
    records = manifest(mdeployment, second["manifest_sha256"])
    assert normals[1].sop_uid not in {r.sop_uid for r in records}
    assert all(r.label_version == 1 for r in records)
    # nothing new for the locked set: the second run is judged on the same version
    run2 = trainings(orch, mdeployment, f"/{second['run_id']}").json()
    assert run2["parameters"]["LockedSetUri"] == run["parameters"]["LockedSetUri"]
    assert not held_patients & {r.patient_pseudo_id for r in records}
    tap.wait_for("TrainingCompleted", run_id=second["run_id"], timeout_s=30)


def _label_version(settings: Settings, sop_uid: str) -> int:
    ddb = boto3_client(settings, "dynamodb")
    item = ddb.get_item(TableName=settings.topology.table("training_labels"), Key={"sop_uid": {"S": sop_uid}})
    return int(item.get("Item", {}).get("label_version", {"N": "0"})["N"])


def test_http_errors(orch, mdeployment):
    assert trainings(orch, mdeployment, "/run-20990101-000000-abcdef").status_code == 404
    assert trainings(orch, mdeployment, "/../../etc").status_code == 404
    url = f"{orch.url}/orchestrator/trainings"
    for role in ("viewer", "radiologist", "pacs"):
        r = httpx.post(url, json={}, headers=h(mdeployment, role), timeout=10)
        assert r.status_code == 403 and "may not approve" in r.json()["detail"]
    assert httpx.post(url, json={}, timeout=10).status_code == 401
    r = httpx.post(url, json={"parameters": {"ManifestUri": "s3://x/y"}}, headers=h(mdeployment, "ml"), timeout=10)
    assert r.status_code == 422 and "cannot be overridden" in r.text
    r = httpx.post(url, json={"parameters": {"Epochs": "many"}}, headers=h(mdeployment, "ml"), timeout=10)
    assert r.status_code == 422 and "not a valid int" in r.text
    r = httpx.post(url, json={"parameters": {"Comparison": "better"}}, headers=h(mdeployment, "ml"), timeout=10)
    assert r.status_code == 422 and "superiority, non-inferiority" in r.text


def test_a_coalesced_policy_trigger_without_enough_new_labels_is_dropped(orch, mdeployment, tap):
    """Concurrent label events can all ask for the run that one of them started; the follow-up they leave must not
    retrain on almost the same data: once the lock is free it is dropped while the new labels are below N/M."""
    from services.pipeline_orchestrator.adapters.store import STATE_KEY

    wait_until(lambda: trainings(orch, mdeployment).json()["active_run"] is None, 30, "no active run")
    before = len(tap.of("TrainingStarted"))
    assert sum(trainings(orch, mdeployment).json()["new_labels"].values()) < 8
    boto3_client(mdeployment, "dynamodb").update_item(  # what the racing label events leave behind
        TableName=mdeployment.topology.table("state"), Key={"key": {"S": STATE_KEY}},
        UpdateExpression="SET pending = :p", ExpressionAttributeValues={":p": {"S": "policy"}})
    wait_until(lambda: trainings(orch, mdeployment).json()["pending"] is None, 20, "the follow-up to be dropped")
    time.sleep(2.0)
    assert len(tap.of("TrainingStarted")) == before
    assert "coalesced policy trigger dropped" in orch.log_tail(200_000)
