"""The docker-free local executor running the SDK-generated definition against the moto server, end to end."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.settings import Settings
from tests.training.conftest import REPO, env_for
from training.local_executor import Executor, UnsupportedConstruct


def _run(definition_file: Path, deployment: Settings, tmp: Path, execution_id: str,
         params: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    pf = tmp / f"{execution_id}-params.json"
    pf.write_text(json.dumps(params))
    status = tmp / f"{execution_id}-status.json"
    cmd = [sys.executable, "-m", "training.local_executor", "run", "--definition", str(definition_file),
           "--parameters", str(pf), "--execution-id", execution_id, "--status-file", str(status)]
    env = env_for(deployment.prefix, AWS_ENDPOINT_URL=deployment.aws_endpoint_url, AWS_ACCESS_KEY_ID="testing",
                  AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=420)
    return r.returncode, json.loads(status.read_text()), r.stderr


def _packages(boto: Callable[[str], Any], deployment: Settings) -> list[dict[str, Any]]:
    sm = boto("sagemaker")
    return sm.list_model_packages(ModelPackageGroupName=deployment.topology.model_package_group)[
        "ModelPackageSummaryList"]


TINY = {"Epochs": 1, "ImageSize": 48, "BatchSize": 16, "Arch": "resnet18"}


def test_passing_condition_registers_a_model_package(definition_file: Path, pipeline_deployment: Settings,
                                                     published_manifest: tuple[str, str, str], boto: Callable[[str], Any],
                                                     tmp_path: Path) -> None:
    uri, sha, locked = published_manifest
    rc, st, err = _run(definition_file, pipeline_deployment, tmp_path, "exec-pass",
                       {**TINY, "ManifestUri": uri, "LockedSetUri": locked, "AucFloor": 0.0, "ChampionAuc": 0.0,
                        "AucMargin": 0.0})
    assert rc == 0, (st.get("failure_reason"), [s["log_tail"] for s in st["steps"]], err[-2000:])
    assert st["status"] == "Succeeded" and st["execution_id"] == "exec-pass" and st["ended_at"]
    assert [(s["name"], s["status"]) for s in st["steps"]] == [
        ("Preprocess", "Succeeded"), ("Train", "Succeeded"), ("Evaluate", "Succeeded"), ("CheckQuality", "Succeeded"),
        ("Register", "Succeeded")]
    assert all(s["started_at"] and s["ended_at"] for s in st["steps"])
    out = st["outputs"]
    assert 0.0 <= out["metrics"]["auc"] <= 1.0 and "sensitivity" in out["metrics"] and "specificity" in out["metrics"]
    arn = out["model_package_arn"]
    assert arn in [p["ModelPackageArn"] for p in _packages(boto, pipeline_deployment)]
    sm = boto("sagemaker")
    pkg = sm.describe_model_package(ModelPackageName=arn)
    assert pkg["ModelApprovalStatus"] == "PendingManualApproval"
    assert pkg["CustomerMetadataProperties"]["run_id"] == "exec-pass"
    assert pkg["CustomerMetadataProperties"]["manifest_sha256"] == sha
    # judged on the locked set, whose patients the training manifest does not hold
    bucket, prefix = locked[5:].split("/", 1)
    summary = json.loads(boto("s3").get_object(Bucket=bucket, Key=prefix + "version.json")["Body"].read())
    assert pkg["CustomerMetadataProperties"]["locked_set_sha256"] == summary["sha256"]
    assert pkg["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == out["evaluation_uri"]
    assert pkg["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == out["model_artifact_uri"]
    # the artefacts are really there
    s3 = boto("s3")
    bucket, key = out["evaluation_uri"][5:].split("/", 1)
    report = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert report["binary_classification_metrics"]["auc"]["value"] == pytest.approx(out["metrics"]["auc"])
    assert report["binary_classification_metrics"]["n"]["value"] == summary["n"]
    assert report["promotion"]["locked_set"] == summary and report["promotion"]["verdict"]["decision"] in (
        "approved", "pending")
    bucket, key = out["model_artifact_uri"][5:].split("/", 1)
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    tar = tmp_path / "model.tar.gz"
    tar.write_bytes(body)
    from training.model import load_model_dir

    _model, cfg = load_model_dir(tar)
    assert cfg["input_size"] == 48 and 0.0 <= cfg["threshold"] <= 1.0


def test_failing_condition_runs_fail_and_registers_nothing(definition_file: Path, pipeline_deployment: Settings,
                                                           published_manifest: tuple[str, str, str],
                                                           boto: Callable[[str], Any], tmp_path: Path) -> None:
    uri, _, locked = published_manifest
    before = _packages(boto, pipeline_deployment)
    rc, st, _ = _run(definition_file, pipeline_deployment, tmp_path, "exec-fail",
                     {**TINY, "ManifestUri": uri, "LockedSetUri": locked, "AucFloor": 0.0, "ChampionAuc": 0.99,
                      "AucMargin": 0.02})
    assert rc == 1
    assert st["status"] == "Failed"
    names = [(s["name"], s["status"]) for s in st["steps"]]
    assert names[-2:] == [("CheckQuality", "Succeeded"), ("Fail", "Failed")]
    assert "Register" not in [n for n, _ in names]
    assert "below the champion" in st["failure_reason"] and "1.01" in st["failure_reason"]
    assert st["outputs"]["model_package_arn"] is None
    assert _packages(boto, pipeline_deployment) == before


def test_crashing_script_fails_its_step_with_the_log_tail(definition_file: Path, pipeline_deployment: Settings,
                                                          published_manifest: tuple[str, str, str], tmp_path: Path) -> None:
    uri, _, locked = published_manifest
    rc, st, _ = _run(definition_file, pipeline_deployment, tmp_path, "exec-crash",
                     {**TINY, "ManifestUri": uri, "LockedSetUri": locked, "Arch": "vgg11"})
    assert rc == 1 and st["status"] == "Failed"
    train = [s for s in st["steps"] if s["name"] == "Train"][0]
    assert train["status"] == "Failed"
    assert "vgg11" in train["failure_reason"] and "Traceback" in train["log_tail"]
    assert [s["name"] for s in st["steps"]] == ["Preprocess", "Train"]
    assert "vgg11" in st["failure_reason"]


# -- refusals and expression handling, without running jobs -----------------------------------------------------------


def test_unsupported_constructs_are_refused_by_name(definition: dict[str, Any], tmp_path: Path) -> None:
    d = copy.deepcopy(definition)
    d["Steps"].append({"Name": "Batch", "Type": "Transform", "Arguments": {}})
    with pytest.raises(UnsupportedConstruct, match="Transform"):
        Executor(d, {}, "x", tmp_path / "s.json")
    d = copy.deepcopy(definition)
    d["Steps"][3]["Arguments"]["Conditions"][0]["Type"] = "In"
    ex = Executor(d, {}, "x", tmp_path / "s.json")
    with pytest.raises(UnsupportedConstruct, match="'In'"):
        ex._condition(d["Steps"][3]["Arguments"]["Conditions"][0])
    with pytest.raises(UnsupportedConstruct, match="Std:Concat"):
        ex.resolve({"Std:Concat": {"Values": []}})
    with pytest.raises(ValueError, match="NoSuchParam"):
        Executor(definition, {"NoSuchParam": 1}, "x", tmp_path / "s.json")
    with pytest.raises(ValueError, match="Epochs"):
        Executor(definition, {"Epochs": "many"}, "x", tmp_path / "s.json")


def test_expressions_resolve_like_sagemaker(definition: dict[str, Any], tmp_path: Path) -> None:
    ex = Executor(definition, {"Epochs": 3, "AucFloor": 0.7}, "run-7", tmp_path / "s.json")
    assert ex.resolve({"Get": "Parameters.Epochs"}) == 3
    assert ex.resolve({"Std:Join": {"On": "/", "Values": ["s3://b", {"Get": "Execution.PipelineExecutionId"}, 1.5]}}) \
        == "s3://b/run-7/1.5"
    order = [s["Name"] for s in ex.topo(definition["Steps"], set())]
    assert order == ["Preprocess", "Train", "Evaluate", "CheckQuality"]
    cyc = copy.deepcopy(definition)
    cyc["Steps"][0]["DependsOn"] = ["Evaluate"]
    with pytest.raises(UnsupportedConstruct, match="cycle"):
        Executor(cyc, {}, "x", tmp_path / "s.json").topo(cyc["Steps"], set())


def test_cli_reports_a_bad_definition_in_the_status_file(tmp_path: Path) -> None:
    bad = tmp_path / "def.json"
    bad.write_text(json.dumps({"Version": "2020-12-01", "Steps": [{"Name": "L", "Type": "Lambda", "Arguments": {}}]}))
    status = tmp_path / "status.json"
    r = subprocess.run([sys.executable, "-m", "training.local_executor", "run", "--definition", str(bad),
                        "--execution-id", "bad-1", "--status-file", str(status)], env=env_for("x"), cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    st = json.loads(status.read_text())
    assert st["status"] == "Failed" and "Lambda" in st["failure_reason"] and st["steps"] == []


def test_no_job_directory_is_left_behind(definition: dict[str, Any], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The job trees' temporary directory exists only while a run runs: an executor refused at construction (a bad
    definition or parameter), or built and never run, leaves nothing in the temporary folder (they did: CI's machine
    kept a `radloop-pipeline-*` directory for each)."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    d = copy.deepcopy(definition)
    d["Steps"].append({"Name": "Batch", "Type": "Transform", "Arguments": {}})
    with pytest.raises(UnsupportedConstruct):
        Executor(d, {}, "refused", tmp_path / "s.json")
    with pytest.raises(ValueError):
        Executor(definition, {"Epochs": "many"}, "bad-param", tmp_path / "s.json")
    ex = Executor(definition, {"Epochs": 3}, "never-run", tmp_path / "s.json")
    assert ex.resolve({"Get": "Parameters.Epochs"}) == 3
    assert list(scratch.iterdir()) == []
    # A run makes its private directory and removes it when it ends (here it fails at once: no S3 behind it).
    seen: list[Path] = []
    ex = Executor({"Version": "2020-12-01", "Steps": [{"Name": "C", "Type": "Condition", "Arguments": {
        "Conditions": [], "IfSteps": [], "ElseSteps": []}}]}, {}, "one-step", tmp_path / "s2.json",
        on_update=lambda snap: seen.extend(p for p in scratch.iterdir() if p.stat().st_mode & 0o777 == 0o700))
    assert ex.run() == 0, ex.failure_reason
    assert seen and all(p.name.startswith("radloop-pipeline-one-step-") for p in seen)
    assert list(scratch.iterdir()) == []
