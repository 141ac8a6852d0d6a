"""The whole loop over real HTTP and the real bus: ImageVerified -> orchestrator (policy, snapshot, the real local
executor as a subprocess) -> TrainingCompleted -> registry (policy, champion) -> ModelApproved.

One deployment for the module; the tests run in order and build on each other (each asserts its own claim):
1. a failing pipeline (a verified image whose frame is missing) reports Failed with its reason, registers nothing;
2. the full loop on tiny synthetic data, started by the label policy after that failure (a later trigger works),
   with manual triggers during the run coalescing into exactly one follow-up;
3. the follow-up is a worse challenger (its training labels were amended to the opposite class) and stays pending;
   the orchestrator is SIGKILLed during it, restarted, re-attaches and completes tracking, with no duplicate
   executions and no duplicate registrations from duplicated events;
4. an unchanged manifest starts nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from radloop.local.embedded_aws import EmbeddedAws
from shared.auth import mint_token
from shared.aws import boto3_client
from shared.events import TrainingCompleted
from shared.settings import Settings
from shared.storage import frame_key
from tests.mlops.conftest import LOOP_POLICY, _bootstrap
from tests.mlops.support import EventTap, ServiceProcess, publish, splits, store_cases, verified, wait_until

#: Real service processes, the real local executor and real (tiny) trainings.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_SPLIT = {"train": 16, "val": 6, "test": 6}
N_LABELS = sum(PER_SPLIT.values())
#: The held-out patients' labels become the locked evaluation set, published with the failing run's label (a run
#: needs a locked set to be judged on); the rest are the training labels that trigger the full loop.
N_TRAINING = N_LABELS - PER_SPLIT["test"]
RUN_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def mdeployment(moto: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory, loop_prefix: str) -> Settings:
    """This module's deployment uses the prefix the pipeline definition was generated for."""
    import asyncio

    s = Settings(aws_endpoint_url=moto.endpoint, prefix=loop_prefix, var_dir=tmp_path_factory.mktemp("var"),
                 aws_max_attempts=2)
    asyncio.run(_bootstrap(s))
    return s


@pytest.fixture(scope="module")
def orch_env(pipeline_definition: Path, loop_policy: Path) -> dict[str, str]:
    return {
        "RADLOOP_PIPELINE_DEFINITION": str(pipeline_definition),
        "RADLOOP_APPROVAL_POLICY_FILE": str(loop_policy),
        "RADLOOP_TRIGGER_MIN_NEW_LABELS": str(N_TRAINING),
        "RADLOOP_TRIGGER_MIN_PER_CLASS": "10",
        "RADLOOP_TRIGGER_COOLDOWN_S": "0",
        "RADLOOP_POLL_INTERVAL_S": "0.5",
        "RADLOOP_TRAIN_EPOCHS": "1",
        "RADLOOP_TRAIN_IMAGE_SIZE": "32",
        # 17 training images: a batch size that leaves no final batch of one (BatchNorm cannot train on one).
        "RADLOOP_TRAIN_BATCH_SIZE": "10",
    }


@pytest.fixture(scope="module")
def tap(mdeployment: Settings) -> EventTap:
    return EventTap(mdeployment)


@pytest.fixture(scope="module")
def registry(mdeployment: Settings, logs_dir: Path, loop_policy: Path) -> Iterator[ServiceProcess]:
    env = {"RADLOOP_APPROVAL_POLICY_FILE": str(loop_policy), "RADLOOP_CARD_BOOTSTRAP_RESAMPLES": "200"}
    svc = ServiceProcess("registry", mdeployment, logs_dir / "registry.log", env_extra=env).start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def orchestrator(mdeployment: Settings, logs_dir: Path, orch_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A mutable holder, so the restart test can replace the process."""
    holder: dict[str, Any] = {"svc": ServiceProcess("pipeline_orchestrator", mdeployment,
                                                    logs_dir / "orchestrator.log", env_extra=orch_env).start()}
    try:
        yield holder
    finally:
        holder["svc"].stop()
        _stop_leftover_executions(mdeployment)


def _stop_leftover_executions(settings: Settings) -> None:
    """A failed test may leave a detached executor running: stop it by the pid its run recorded."""
    import os
    import signal

    from services.pipeline_orchestrator.adapters.executors import process_alive

    ddb = boto3_client(settings, "dynamodb")
    for item in ddb.scan(TableName=settings.topology.table("runs")).get("Items", []):
        pid, run_id = int(item.get("pid", {"N": "0"})["N"]), item["run_id"]["S"]
        if pid and process_alive(pid, run_id):
            os.killpg(pid, signal.SIGTERM)


@pytest.fixture(scope="module")
def cases(mdeployment: Settings) -> list:
    return store_cases(mdeployment, PER_SPLIT, seed=7)


@pytest.fixture(scope="module")
def lost_case(mdeployment: Settings) -> dict[str, Any]:
    """One more stored case whose HTJ2K frame is then deleted (and kept here to be restored)."""
    case = store_cases(mdeployment, {"train": 1}, seed=8)[0]
    key = frame_key(case.study_uid, case.series_uid, case.sop_uid, 1)
    s3 = boto3_client(mdeployment, "s3")
    bucket = mdeployment.topology.bucket("images")
    frame = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=key)
    return {"case": case, "key": key, "frame": frame}


def auth(settings: Settings, role: str = "ml") -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(settings, role, subject=f'user-{role}')}"}


def orch_get(holder: dict[str, Any], settings: Settings, path: str = "") -> Any:
    r = httpx.get(f"{holder['svc'].url}/orchestrator/trainings{path}", headers=auth(settings, "viewer"), timeout=10)
    r.raise_for_status()
    return r.json()


def trigger(holder: dict[str, Any], settings: Settings, body: dict | None = None) -> httpx.Response:
    return httpx.post(f"{holder['svc'].url}/orchestrator/trainings", json=body, headers=auth(settings), timeout=30)


def wait_run(holder: dict[str, Any], settings: Settings, run_id: str, timeout_s: float = RUN_TIMEOUT_S
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


def test_the_definition_gate_defaults_are_the_policy_documents(pipeline_definition: Path):
    """``training.pipeline definition`` took AucFloor/AucMargin from the document RADLOOP_APPROVAL_POLICY_FILE names
    (the loop's, whose numbers differ from the packaged default's), not from a default of its own."""
    import json

    defaults = {p["Name"]: p.get("DefaultValue") for p in json.loads(pipeline_definition.read_text())["Parameters"]}
    assert (defaults["AucFloor"], defaults["AucMargin"]) == (LOOP_POLICY.auc_floor, LOOP_POLICY.auc_margin)


def test_failing_pipeline_reports_failed_with_reason(mdeployment, orchestrator, registry, tap, lost_case, cases):
    # A verified image whose frame is gone from the images bucket: Preprocess cannot read it and the run fails.
    publish(mdeployment, [verified(lost_case["case"])], "radloop.verification")
    wait_until(lambda: sum(orch_get(orchestrator, mdeployment)["new_labels"].values()) == 1, 30, "the label")
    assert orch_get(orchestrator, mdeployment)["runs"] == []  # 1 label is below the policy's N
    # no held-out labels yet: no locked evaluation set, so no run can be judged, and none starts
    r = trigger(orchestrator, mdeployment, {"reason": "too early"})
    assert r.status_code == 409 and "no locked evaluation set" in r.json()["detail"], r.text
    held = splits(cases)["test"]
    publish(mdeployment, [verified(c) for c in held], "radloop.verification")
    wait_until(lambda: sum(orch_get(orchestrator, mdeployment)["new_labels"].values()) == 1 + len(held), 30,
               "the held-out labels")
    r = trigger(orchestrator, mdeployment, {"reason": "first look"})
    assert r.status_code == 202 and r.json()["outcome"] == "started", r.text
    run_id = r.json()["run_id"]
    run = wait_run(orchestrator, mdeployment, run_id)
    assert run["locked_set"]["version"] == 1 and run["locked_set"]["n"] == len(held)
    assert run["status"] == "Failed" and run["failure_reason"], run
    failed_steps = [s for s in run["steps"] if s["status"] == "Failed"]
    assert [s["name"] for s in failed_steps] == ["Preprocess"], run["steps"]
    assert failed_steps[0]["log_tail"]
    completed = tap.wait_for("TrainingCompleted", run_id=run_id, timeout_s=30)[0]
    assert completed["status"] == "Failed" and run["failure_reason"].startswith(completed["failure_reason"][:200])
    assert completed["model_package_arn"] is None
    time.sleep(1.0)
    assert tap.of("ModelRegistered") == []
    assert orch_get(orchestrator, mdeployment)["active_run"] is None


def test_full_loop_with_coalesced_triggers(mdeployment, orchestrator, registry, tap, cases, lost_case):
    # The frame is back; the failed run did not block anything: enough new labels start the next run by policy.
    boto3_client(mdeployment, "s3").put_object(Bucket=mdeployment.topology.bucket("images"), Key=lost_case["key"],
                                               Body=lost_case["frame"])
    by_split = splits(cases)
    assert {k: len(v) for k, v in by_split.items()} == PER_SPLIT
    publish(mdeployment, [verified(c) for c in cases], "radloop.verification")

    started = tap.wait_for("TrainingStarted", count=2, timeout_s=60)[1:]
    run_id = started[0]["run_id"]
    assert started[0]["trigger"] == "policy" and started[0]["label_count"] == N_TRAINING + 1
    assert started[0]["champion_version"] is None
    listing = orch_get(orchestrator, mdeployment)
    assert listing["active_run"] == run_id and [r["run_id"] for r in listing["runs"]][0] == run_id
    assert listing["new_labels"] == {"normal": 0, "pneumonia": 0}

    # The manifest is in the ml bucket under its own hash, with every label exactly once.
    s3 = boto3_client(mdeployment, "s3")
    key = f"datasets/{started[0]['manifest_sha256']}/manifest.json"
    body = s3.get_object(Bucket=mdeployment.topology.bucket("ml"), Key=key)["Body"].read()
    assert len(body.splitlines()) == N_TRAINING + 1
    held = {c.patient for c in by_split["test"]}
    assert not held & {json.loads(line)["patient_pseudo_id"] for line in body.splitlines()}

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
    steps = {s["name"]: s for s in run["steps"]}
    assert all(steps[n]["status"] == "Succeeded" and steps[n]["started_at"] and steps[n]["ended_at"]
               for n in ("Preprocess", "Train", "Evaluate")), run["steps"]
    assert run["parameters"]["ImageSize"] == 32 and run["parameters"]["ManifestUri"].endswith(key)
    # One policy document: the pipeline's gate got its numbers, and the registry decided with the same ones.
    assert (run["parameters"]["AucFloor"], run["parameters"]["AucMargin"]) == (LOOP_POLICY.auc_floor,
                                                                               LOOP_POLICY.auc_margin)

    completed = tap.wait_for("TrainingCompleted", run_id=run_id, timeout_s=30)[0]
    assert completed["status"] == "Succeeded" and completed["model_package_arn"]
    registered = tap.wait_for("ModelRegistered", run_id=run_id, timeout_s=30)[0]
    assert registered["decision"] == "approved", registered["reason"]
    version = registered["version"]
    approved = tap.wait_for("ModelApproved", version=version, timeout_s=30)[0]
    assert approved["approved_by"] == "policy" and approved["model_package_arn"] == completed["model_package_arn"]
    champion = reg_get(registry, mdeployment, "/models/champion").json()
    assert champion["version"] == version and champion["model_artifact_uri"] == completed["model_artifact_uri"]
    model = reg_get(registry, mdeployment, f"/models/{version}").json()
    assert model["lineage"]["manifest_sha256"] == started[0]["manifest_sha256"]
    assert model["lineage"]["label_counts"] == {"normal": N_TRAINING // 2, "pneumonia": N_TRAINING // 2 + 1}
    # judged on the locked set drawn before the failed run (nothing new was held out since)
    assert model["lineage"]["locked_set"]["version"] == 1 and model["lineage"]["locked_set"]["n"] == len(held)
    assert "first model" in registered["reason"]
    assert model["lineage"]["pipeline_execution"] == run_id and model["lineage"]["code_version"]
    assert model["model_package"]["approval_status"] == "Approved"
    assert model["policy"] == LOOP_POLICY.as_dict()
    assert model["metrics"]["auc"] == pytest.approx(completed["metrics"]["auc"])
    assert len(tap.of("TrainingStarted", run_id=run_id)) == 1


def test_worse_follow_up_survives_a_restart_and_stays_pending(
    mdeployment, orchestrator, registry, tap, logs_dir, orch_env
):
    started = tap.wait_for("TrainingStarted", count=3, timeout_s=30)
    assert len(started) == 3  # the failed run, the first model, exactly one follow-up
    follow = started[2:]
    assert follow[0]["trigger"] == "manual"  # the coalesced manual requests win the merge
    run_id = follow[0]["run_id"]
    # (The follow-up may start before the registry approved the first model: its TrainingStarted then names no
    # champion. The registry's lineage records the champion at registration, which is what counts.)
    champion_version = reg_get(registry, mdeployment, "/models/champion").json()["version"]

    # Kill the orchestrator (SIGKILL: no drain) while the execution is training, then start a new one.
    wait_until(lambda: any(s["name"] == "Train" for s in orch_get(orchestrator, mdeployment, f"/{run_id}")["steps"]),
               120, "the Train step to start")
    orchestrator["svc"].kill()
    orchestrator["svc"] = ServiceProcess("pipeline_orchestrator", mdeployment, logs_dir / "orchestrator-2.log",
                                         env_extra=orch_env).start()
    run = wait_run(orchestrator, mdeployment, run_id)
    assert run["status"] == "Succeeded", run.get("failure_reason")
    completed = tap.wait_for("TrainingCompleted", run_id=run_id, timeout_s=30)
    registered = tap.wait_for("ModelRegistered", run_id=run_id, timeout_s=30)[0]
    assert registered["decision"] == "pending", registered
    # the paired comparison with the champion on the locked set; or, when the follow-up started before the first
    # model was approved, the reason that there is none
    assert (f"is not above +{LOOP_POLICY.auc_margin:.4f}" in registered["reason"]
            or "could not be re-scored on the locked set" in registered["reason"]), registered["reason"]
    version = registered["version"]
    m_new = reg_get(registry, mdeployment, f"/models/{version}").json()
    m_champ = reg_get(registry, mdeployment, f"/models/{champion_version}").json()
    assert m_new["metrics"]["auc"] < m_champ["metrics"]["auc"], (m_champ["metrics"], m_new["metrics"])
    assert m_new["lineage"]["parent_version"] == champion_version and m_new["status"] == "pending"
    assert m_new["model_package"]["approval_status"] == "PendingManualApproval"

    # Duplicated events: the same completion again with a new event id. One version per model package.
    dup = TrainingCompleted.model_validate({k: v for k, v in completed[0].items() if k not in ("type", "source")})
    dup = dup.model_copy(update={"event_id": uuid.uuid4().hex})
    publish(mdeployment, [dup], "radloop.pipeline_orchestrator")
    time.sleep(3.0)
    models = reg_get(registry, mdeployment, "/models").json()["models"]
    assert [m["version"] for m in models if m["run_id"] == run_id] == [version]
    assert len(tap.of("ModelRegistered", run_id=run_id)) == 1
    # The restarted orchestrator neither started another execution nor announced this one twice.
    assert len(tap.of("TrainingStarted")) == 3
    assert [e["event_id"] for e in tap.of("TrainingCompleted", run_id=run_id) if e["event_id"] != dup.event_id] == [
        f"{run_id}-completed"]
    assert reg_get(registry, mdeployment, "/models/champion").json()["version"] == champion_version
    assert tap.of("ModelApproved", version=version) == []


def test_unchanged_manifest_starts_nothing(mdeployment, orchestrator, tap):
    before = len(tap.of("TrainingStarted"))
    r = trigger(orchestrator, mdeployment, {"reason": "again"})
    assert r.status_code == 200 and r.json()["outcome"] == "unchanged", r.text
    time.sleep(2.0)
    assert len(tap.of("TrainingStarted")) == before
    body = orch_get(orchestrator, mdeployment)
    assert body["active_run"] is None and body["pending"] is None
    assert [r["status"] for r in body["runs"]] == ["Succeeded", "Succeeded", "Failed"]
