"""The generated SageMaker pipeline definition: steps, dependencies, parameters, security settings."""

from __future__ import annotations

import re
from typing import Any

from shared.topology import build_topology
from tests.training.conftest import KMS_KEY, SECURITY_GROUPS, SUBNETS
from training.sm import METRIC_DEFINITIONS

CONTRACT_PARAMETERS = {"ManifestUri": "String", "ChampionAuc": "Float", "ChampionModelUri": "String", "AucFloor": "Float",
                       "AucMargin": "Float", "Epochs": "Integer", "ImageSize": "Integer", "Arch": "String",
                       "BatchSize": "Integer", "LockedSetUri": "String", "Comparison": "String"}


def _steps(defn: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for s in defn["Steps"]:
        out[s["Name"]] = s
        if s["Type"] == "Condition":
            for b in s["Arguments"]["IfSteps"] + s["Arguments"]["ElseSteps"]:
                out[b["Name"]] = b
    return out


def _refs(obj: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(obj, dict):
        g = obj.get("Get")
        if isinstance(g, str) and g.startswith("Steps."):
            found.add(g.split(".")[1].split("[")[0])
        for v in obj.values():
            found |= _refs(v)
    elif isinstance(obj, list):
        for v in obj:
            found |= _refs(v)
    return found


def test_steps_and_dependencies(definition: dict[str, Any]) -> None:
    top = [(s["Name"], s["Type"]) for s in definition["Steps"]]
    assert top == [("Preprocess", "Processing"), ("Train", "Training"), ("Evaluate", "Processing"),
                   ("CheckQuality", "Condition")]
    steps = _steps(definition)
    assert steps["Register"]["Type"] == "RegisterModel" and steps["Fail"]["Type"] == "Fail"
    cond = steps["CheckQuality"]["Arguments"]
    assert [s["Name"] for s in cond["IfSteps"]] == ["Register"] and [s["Name"] for s in cond["ElseSteps"]] == ["Fail"]
    assert _refs(steps["Preprocess"]["Arguments"]) == set()
    assert _refs(steps["Train"]["Arguments"]) == {"Preprocess"}
    assert _refs(steps["Evaluate"]["Arguments"]) == {"Preprocess", "Train"}
    assert _refs(cond["Conditions"]) == {"Evaluate"}
    assert _refs(steps["Register"]["Arguments"]) == {"Preprocess", "Train", "Evaluate"}
    # the condition: AUC >= floor and AUC >= champion + margin (computed by evaluate into the property file)
    kinds = [(c["Type"], c["RightValue"].get("Get") or c["RightValue"]["Std:JsonGet"]["Path"]) for c in cond["Conditions"]]
    assert kinds == [("GreaterThanOrEqualTo", "Parameters.AucFloor"), ("GreaterThanOrEqualTo", "gate.champion_bar")]
    ev = steps["Evaluate"]
    assert ev["PropertyFiles"] == [{"PropertyFileName": "EvaluationReport", "OutputName": "evaluation",
                                    "FilePath": "evaluation.json"}]
    args = ev["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert "--champion-auc" in args and "--auc-margin" in args and "--champion-dir" in args
    assert args[args.index("--comparison") + 1] == {"Get": "Parameters.Comparison"}
    # the locked evaluation set is an input of Preprocess (written as the test split Evaluate scores)
    pre = {i["InputName"]: i["S3Input"] for i in steps["Preprocess"]["Arguments"]["ProcessingInputs"]}
    assert pre["locked"]["S3Uri"] == {"Get": "Parameters.LockedSetUri"}
    # the champion's model is an input of Evaluate, re-scored on the same test split as the challenger
    inputs = {i["InputName"]: i["S3Input"] for i in ev["Arguments"]["ProcessingInputs"]}
    assert inputs["champion"]["S3Uri"] == {"Get": "Parameters.ChampionModelUri"}
    assert inputs["champion"]["LocalPath"] == args[args.index("--champion-dir") + 1]


def test_parameters_follow_the_contract(definition: dict[str, Any]) -> None:
    params = {p["Name"]: p["Type"] for p in definition["Parameters"]}
    for name, typ in CONTRACT_PARAMETERS.items():
        assert params.get(name) == typ, name
    for extra in ("TrainingInstanceType", "ProcessingInstanceType", "KmsKeyId", "TrainingImageUri"):
        assert extra in params
    defaults = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    assert defaults["TrainingInstanceType"].startswith(("ml.g", "ml.p"))  # a GPU instance by default
    assert defaults["KmsKeyId"] == KMS_KEY and defaults["ChampionAuc"] == 0.0
    assert defaults["ChampionModelUri"].endswith("/models/no-champion/")
    assert defaults["Comparison"] == "superiority"


def test_every_job_is_encrypted_in_the_vpc(definition: dict[str, Any]) -> None:
    steps = _steps(definition)
    kms = {"Get": "Parameters.KmsKeyId"}
    for name in ("Preprocess", "Evaluate"):
        a = steps[name]["Arguments"]
        assert a["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == kms
        assert a["ProcessingOutputConfig"]["KmsKeyId"] == kms
        net = a["NetworkConfig"]
        assert net["VpcConfig"] == {"SecurityGroupIds": list(SECURITY_GROUPS), "Subnets": list(SUBNETS)}
        assert net["EnableInterContainerTrafficEncryption"] is True
    # preprocess must reach the images bucket (through the VPC's S3 endpoint); evaluate needs no network
    assert steps["Preprocess"]["Arguments"]["NetworkConfig"]["EnableNetworkIsolation"] is False
    assert steps["Evaluate"]["Arguments"]["NetworkConfig"]["EnableNetworkIsolation"] is True
    t = steps["Train"]["Arguments"]
    assert t["ResourceConfig"]["VolumeKmsKeyId"] == kms and t["OutputDataConfig"]["KmsKeyId"] == kms
    assert t["VpcConfig"] == {"SecurityGroupIds": list(SECURITY_GROUPS), "Subnets": list(SUBNETS)}
    assert t["EnableNetworkIsolation"] is True and t["EnableInterContainerTrafficEncryption"] is True


def test_training_uses_spot_with_checkpoints_and_scrapeable_metrics(definition: dict[str, Any]) -> None:
    t = _steps(definition)["Train"]["Arguments"]
    assert t["EnableManagedSpotTraining"] is True
    assert t["StoppingCondition"]["MaxWaitTimeInSeconds"] >= t["StoppingCondition"]["MaxRuntimeInSeconds"]
    assert t["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert t["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    assert {c["ChannelName"] for c in t["InputDataConfig"]} == {"train", "val"}
    assert t["AlgorithmSpecification"]["MetricDefinitions"] == METRIC_DEFINITIONS
    line = "METRIC epoch=3 train_loss=0.412 val_loss=0.38 val_auc=0.9125 images_per_s=123.4 seconds=2.0"
    for md in t["AlgorithmSpecification"]["MetricDefinitions"]:
        assert re.search(md["Regex"], line), md


def test_register_step_is_pending_approval_with_metrics(definition: dict[str, Any], pipeline_prefix: str) -> None:
    r = _steps(definition)["Register"]["Arguments"]
    assert r["ModelPackageGroupName"] == build_topology(pipeline_prefix).model_package_group
    assert r["ModelApprovalStatus"] == "PendingManualApproval"
    stats = r["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert stats["ContentType"] == "application/json"
    assert stats["S3Uri"]["Std:Join"]["Values"][-1] == "evaluation.json"
    meta = r["CustomerMetadataProperties"]
    assert meta["run_id"] == {"Get": "Execution.PipelineExecutionId"}
    assert meta["manifest_sha256"]["Std:JsonGet"]["Path"] == "manifest_sha256"
    container = r["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    fail = _steps(definition)["Fail"]["Arguments"]["ErrorMessage"]
    assert "Std:Join" in fail
