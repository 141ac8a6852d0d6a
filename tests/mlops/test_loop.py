"""The whole loop over real HTTP and the real bus: ImageVerified -> orchestrator (policy, snapshot, the real local
executor as a subprocess) -> TrainingCompleted -> registry (policy, champion) -> ModelApproved.

One deployment for the module, the tests run in order and build on each other (each is still a separate claim):
1. the full loop on tiny synthetic data, with manual triggers during the run coalescing into one follow-up;
2. the follow-up is a worse challenger (its training labels were amended to the opposite class): it stays pending;
3. an unchanged manifest starts nothing;
4. a failing pipeline reports Failed with its reason and registers nothing;
5. the orchestrator is SIGKILLed mid-run, restarted, re-attaches and completes tracking; a later trigger works,
   with no duplicate executions and no duplicate registrations from duplicated events.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.auth import mint_token
from shared.aws import boto3_client
from shared.events import TrainingCompleted
from shared.settings import Settings
from tests.mlops.support import EventTap, ServiceProcess, publish, splits, store_cases, verified, wait_until

PER_SPLIT = {"train": 24, "val": 8, "test": 8}
N_LABELS = sum(PER_SPLIT.values())
ORCH_ENV = {
    "RADLOOP_TRIGGER_MIN_NEW_LABELS": str(N_LABELS),
    "RADLOOP_TRIGGER_MIN_PER_CLASS": "10",
    "RADLOOP_TRIGGER_COOLDOWN_S": "0",
    "RADLOOP_POLL_INTERVAL_S": "0.5",
    "RADLOOP_TRAIN_EPOCHS": "6",
    "RADLOOP_TRAIN_IMAGE_SIZE": "32",
    "RADLOOP_TRAIN_BATCH_SIZE": "8",
    "RADLOOP_AUC_FLOOR": "0.0",
}
REGISTRY_ENV = {
    "RADLOOP_APPROVAL_AUC_FLOOR": "0.6",
    "RADLOOP_APPROVAL_SENSITIVITY_FLOOR": "0.5",
    "RADLOOP_APPROVAL_AUC_MARGIN": "0.01",
    "RADLOOP_CARD_BOOTSTRAP_RESAMPLES": "200",
}
RUN_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def tap(mdeployment: Settings) -> EventTap:
    return EventTap(mdeployment)


@pytest.fixture(scope="module")
def registry(mdeployment: Settings, logs_dir: Path) -> Iterator[ServiceProcess]:
    svc = ServiceProcess("registry", mdeployment, logs_dir / "registry.log", env_extra=REGISTRY_ENV).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def orchestrator(mdeployment: Settings, logs_dir: Path) -> Iterator[dict[str, ServiceProcess]]:
    """A mutable holder, so the restart test can replace the process."""
    holder = {"svc": ServiceProcess("pipeline_orchestrator", mdeployment, logs_dir / "orchestrator.log",
                                    env_extra=ORCH_ENV).start()}
    try:
        yield holder
    finally:
        holder["svc"].stop()


@pytest.fixture(scope="module")
def cases(mdeployment: Settings) -> list:
    return store_cases(mdeployment, PER_SPLIT, seed=7)


def auth(settings: Settings, role: str = "ml") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, role, subject=f'user-{role}')}"}


def orch_get(holder: dict[str, ServiceProcess], settings: Settings, path: str = "") -> Any:
    r = httpx.get(f"{holder['svc'].url}/orchestrator/trainings{path}", headers=auth(settings, "viewer"), timeout=10)
    r.raise_for_status()
    return r.json()


def trigger(holder: dict[str, ServiceProcess], settings: Settings, body: dict | None = None) -> httpx.Response:
    return httpx.post(f"{holder['svc'].url}/orchestrator/trainings", json=body, headers=auth(settings), timeout=30)


def wait_run(holder: dict[str, ServiceProcess], settings: Settings, run_id: str, timeout_s: float = RUN_TIMEOUT_S
             ) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        run = orch_get(holder, settings, f"/{run_id}")
        return run if run["status"] != "Executing" else None

    try:
        return wait_until(done, timeout_s, f"run {run_id} to end", interval_s=1.0)  # type: ignore[no-any-return]
    except AssertionError:
        raise AssertionError(f"run {run_id} did not end; orchestrator log: {holder['svc'].log_tail()}") from None


def reg_get(registry: ServiceProcess, settings: Settings, path: str) -> httpx.Response:
    return httpx.get(f"{registry.url}/registry{path}", headers=auth(settings, "viewer"), timeout=10)


def test_full_loop_with_coalesced_triggers(mdeployment, orchestrator, registry, tap, cases):
    by_split = splits(cases)
    assert {k: len(v) for k, v in by_split.items()} == PER_SPLIT
    publish(mdeployment, [verified(c) for c in cases], "radloop.verification")

    started = tap.wait_for("TrainingStarted", timeout_s=60)
    run_id = started[0]["run_id"]
    assert started[0]["trigger"] == "policy" and started[0]["label_count"] == N_LABELS
    assert started[0]["champion_version"] is None
    listing = orch_get(orchestrator, mdeployment)
    assert listing["active_run"] == run_id and [r["run_id"] for r in listing["runs"]] == [run_id]
    assert listing["new_labels"] == {"normal": 0, "pneumonia": 0}

    # The manifest is in the ml bucket under its own hash, with every label exactly once.
    s3 = boto3_client(mdeployment, "s3")
    key = f"datasets/{started[0]['manifest_sha256']}/manifest.json"
    body = s3.get_object(Bucket=mdeployment.topology.bucket("ml"), Key=key)["Body"].read()
    assert len(body.splitlines()) == N_LABELS

    # While it runs: amend every training label to the opposite class (that makes the follow-up a worse model),
    # and ask for runs by hand twice. Everything coalesces into one follow-up.
    flips = [verified(c, label="normal" if c.label == "pneumonia" else "pneumonia", version=2, resolution="amended")
             for c in by_split["train"]]
    publish(mdeployment, flips, "radloop.verification")
    for _ in range(2):
        r = trigger(orchestrator, mdeployment, {"reason": "more labels"})
        assert r.status_code == 202 and r.json() == {"outcome": "coalesced", "active_run": run_id}
    wait_until(lambda: orch_get(orchestrator, mdeployment)["pending"] == "manual", 30, "the coalesced follow-up")

    run = wait_run(orchestrator, mdeployment, run_id)
    assert run["status"] == "Succeeded", run.get("failure_reason")
    assert [s["status"] for s in run["steps"]][:3] == ["Succeeded"] * 3
    assert all(s.get("started_at") and s.get("ended_at") for s in run["steps"][:3])
    assert run["parameters"]["ImageSize"] == 32 and run["parameters"]["ManifestUri"].endswith(key)

    completed = tap.wait_for("TrainingCompleted", run_id=run_id, timeout_s=30)[0]
    assert completed["status"] == "Succeeded" and completed["model_package_arn"]
    assert 0.0 <= completed["metrics"]["auc"] <= 1.0
    registered = tap.wait_for("ModelRegistered", run_id=run_id, timeout_s=30)[0]
    assert registered["version"] == 1 and registered["decision"] == "approved", registered["reason"]
    approved = tap.wait_for("ModelApproved", version=1, timeout_s=30)[0]
    assert approved["approved_by"] == "policy" and approved["model_package_arn"] == completed["model_package_arn"]
    champion = reg_get(registry, mdeployment, "/models/champion").json()
    assert champion["version"] == 1 and champion["model_artifact_uri"] == completed["model_artifact_uri"]
    model = reg_get(registry, mdeployment, "/models/1").json()
    assert model["lineage"]["manifest_sha256"] == started[0]["manifest_sha256"]
    assert model["lineage"]["label_counts"] == {"normal": N_LABELS // 2, "pneumonia": N_LABELS // 2}
    assert model["lineage"]["pipeline_execution"] == run_id
    assert model["model_package"]["approval_status"] == "Approved"
    assert tap.of("TrainingStarted", run_id=run_id) == started[:1]


def test_follow_up_is_a_worse_challenger_and_stays_pending(mdeployment, orchestrator, registry, tap):
    started = wait_until(lambda: [e for e in tap.of("TrainingStarted") if e["trigger"] == "manual"], 30,
                         "the follow-up to start")
    assert len(tap.of("TrainingStarted")) == 2  # the first run and exactly one follow-up
    follow = started[0]
    assert follow["champion_version"] == 1
    run = wait_run(orchestrator, mdeployment, follow["run_id"])
    assert run["status"] == "Succeeded", run.get("failure_reason")
    registered = tap.wait_for("ModelRegistered", run_id=follow["run_id"], timeout_s=30)[0]
    assert registered["version"] == 2 and registered["decision"] == "pending", registered
    m2 = reg_get(registry, mdeployment, "/models/2").json()
    m1 = reg_get(registry, mdeployment, "/models/1").json()
    assert m2["metrics"]["auc"] < m1["metrics"]["auc"], (m1["metrics"], m2["metrics"])
    assert m2["lineage"]["parent_version"] == 1 and m2["status"] == "pending"
    assert m2["model_package"]["approval_status"] == "PendingManualApproval"
    time.sleep(1.0)
    assert reg_get(registry, mdeployment, "/models/champion").json()["version"] == 1
    assert tap.of("ModelApproved", version=2) == []


def test_unchanged_manifest_starts_nothing(mdeployment, orchestrator, tap):
    before = len(tap.of("TrainingStarted"))
    r = trigger(orchestrator, mdeployment, {"reason": "again"})
    assert r.status_code == 200 and r.json()["outcome"] == "unchanged", r.text
    time.sleep(2.0)
    assert len(tap.of("TrainingStarted")) == before
    assert orch_get(orchestrator, mdeployment)["active_run"] is None


def test_failing_pipeline_reports_failed_with_reason(mdeployment, orchestrator, registry, tap):
    # An impossible floor makes the pipeline's condition fail: the Fail step ends it, and no package is made.
    r = trigger(orchestrator, mdeployment, {"reason": "gate check", "force": True, "parameters": {"AucFloor": 1.01}})
    assert r.status_code == 202 and r.json()["outcome"] == "started", r.text
    run_id = r.json()["run_id"]
    run = wait_run(orchestrator, mdeployment, run_id)
    assert run["status"] == "Failed" and run["failure_reason"]
    completed = tap.wait_for("TrainingCompleted", run_id=run_id, timeout_s=30)[0]
    assert completed["status"] == "Failed" and run["failure_reason"].startswith(completed["failure_reason"][:200])
    assert completed["model_package_arn"] is None
    time.sleep(1.0)
    assert tap.of("ModelRegistered", run_id=run_id) == []
    assert orch_get(orchestrator, mdeployment)["active_run"] is None


def test_restart_mid_run_resumes_tracking_without_duplicates(mdeployment, orchestrator, registry, tap, logs_dir):
    r = trigger(orchestrator, mdeployment, {"reason": "after the failure", "force": True})
    assert r.status_code == 202 and r.json()["outcome"] == "started", r.text
    run_id = r.json()["run_id"]
    wait_until(lambda: any(s["status"] == "Executing" or s["status"] == "Succeeded"
                           for s in orch_get(orchestrator, mdeployment, f"/{run_id}")["steps"]), 60,
               "a step to be running")
    orchestrator["svc"].kill()
    orchestrator["svc"] = ServiceProcess("pipeline_orchestrator", mdeployment, logs_dir / "orchestrator-2.log",
                                         env_extra=ORCH_ENV).start()
    run = wait_run(orchestrator, mdeployment, run_id)
    assert run["status"] == "Succeeded", run.get("failure_reason")
    completed = tap.wait_for("TrainingCompleted", run_id=run_id, timeout_s=30)
    registered = tap.wait_for("ModelRegistered", run_id=run_id, timeout_s=30)[0]
    # Duplicated events: the same completion again with a new event id (as a crash before the "published" mark
    # would cause). The registry keeps one version per model package.
    dup = TrainingCompleted.model_validate({k: v for k, v in completed[0].items() if k not in ("type", "source")})
    publish(mdeployment, [dup.model_copy(update={"event_id": uuid.uuid4().hex})], "radloop.pipeline_orchestrator")
    time.sleep(3.0)
    models = reg_get(registry, mdeployment, "/models").json()["models"]
    assert [m["version"] for m in models if m["run_id"] == run_id] == [registered["version"]]
    assert len(tap.of("ModelRegistered", run_id=run_id)) == 1
    assert len(tap.of("TrainingStarted", run_id=run_id)) == 1
    assert len(tap.of("TrainingCompleted", run_id=run_id)) == 1
    runs = orch_get(orchestrator, mdeployment)["runs"]
    assert len(runs) == 4 and sum(r["status"] == "Failed" for r in runs) == 1
