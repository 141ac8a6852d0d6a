"""The training pipeline as a SageMaker Pipeline (SageMaker Python SDK v3).

Preprocess (ProcessingStep) -> Train (TrainingStep, GPU, Spot + checkpoints) -> Evaluate (ProcessingStep with a
PropertyFile) -> CheckQuality (ConditionStep: test AUC >= AucFloor and >= ChampionAuc + AucMargin) -> Register
(ModelStep, PendingManualApproval, ModelMetrics -> evaluation.json) or Fail (FailStep with the reason).

Pipeline definitions cannot do arithmetic, so Evaluate receives ChampionAuc and AucMargin as arguments and writes
``gate.champion_bar`` (= champion + margin) into evaluation.json; the condition compares two numbers from there.

The defaults of ``AucFloor`` and ``AucMargin`` are the approval policy's (:mod:`shared.approval`: the packaged
document, ``RADLOOP_APPROVAL_POLICY_FILE`` or ``--approval-policy``), the same numbers the orchestrator passes to
every execution and the registry decides with: the gate is never configured anywhere else.

Security, on every step: KMS keys for volumes and outputs (``KmsKeyId`` parameter), the VPC (``--subnet`` /
``--security-group``, SageMaker parameters cannot be lists), network isolation for Train and Evaluate (``Preprocess``
must reach the images bucket through the VPC's S3 endpoint, because the manifest names objects), and inter-container
traffic encryption.

``python -m training.pipeline definition [--out FILE]`` prints the definition JSON without an AWS account: the SDK
is run against ``AWS_ENDPOINT_URL`` when set (the embedded endpoint), otherwise inside moto's in-process ``mock_aws``.
``python -m training.pipeline upsert --role-arn ARN`` creates/updates the pipeline in a real account.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.approval import ApprovalPolicy, load_policy
from shared.storage import NO_CHAMPION_PREFIX
from training.sm import AUC_PATH, CHAMPION_BAR_PATH, METRIC_DEFINITIONS

PIPELINE_NAME_SUFFIX = "training"
STEP_PREPROCESS, STEP_TRAIN, STEP_EVALUATE = "Preprocess", "Train", "Evaluate"
STEP_CONDITION, STEP_REGISTER, STEP_FAIL = "CheckQuality", "Register", "Fail"
EVALUATION_PROPERTY_FILE = "EvaluationReport"
DATASET_PROPERTY_FILE = "DatasetMeta"
MANIFEST_SHA_PATH = "manifest_sha256"
SPLITS = ("train", "val", "test")
PROCESSING_ROOT = "/opt/ml/processing"


@dataclass(frozen=True)
class PipelineConfig:
    """Build-time settings (things SageMaker parameters cannot express, or that name the deployment)."""

    prefix: str = "radloop"
    region: str = "us-east-1"
    role_arn: str = "arn:aws:iam::000000000000:role/radloop-sagemaker-execution"
    image_uri: str = "000000000000.dkr.ecr.us-east-1.amazonaws.com/radloop-training:latest"
    kms_key_id: str = "alias/radloop-ml"
    subnets: tuple[str, ...] = ()
    security_groups: tuple[str, ...] = ()
    training_instance_type: str = "ml.g5.xlarge"
    processing_instance_type: str = "ml.m5.xlarge"
    use_spot: bool = True
    network_isolation: bool = True
    max_runtime_s: int = 4 * 3600
    max_wait_s: int = 8 * 3600
    tags: dict[str, str] = field(default_factory=lambda: {"project": "radloop", "data-classification": "phi-derived"})
    #: The floors and margin of the gate's defaults (None: the policy named by the environment, else the default).
    approval: ApprovalPolicy | None = None

    @property
    def policy(self) -> ApprovalPolicy:
        """The approval policy the condition's defaults come from."""
        return self.approval or load_policy()

    @property
    def ml_bucket(self) -> str:
        from shared.topology import build_topology

        return build_topology(self.prefix).bucket("ml")

    @property
    def model_package_group(self) -> str:
        from shared.topology import build_topology

        return build_topology(self.prefix).model_package_group

    @property
    def pipeline_name(self) -> str:
        return f"{self.prefix}-{PIPELINE_NAME_SUFFIX}"


def _quiet_sdk() -> None:
    _validate_config_once()
    os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")
    warnings.filterwarnings("ignore", module="sagemaker")
    for name in ("sagemaker", "sagemaker.config", "botocore.credentials", "sagemaker.core", "sagemaker.mlops",
                 "sagemaker.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)


SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


def _validate_config_once() -> None:
    """The SDK validates its config against the JSON schema (and checks the schema itself) at every config lookup:
    43 times for one definition, 11 of its 22 s. Validation is a pure function of the config, so each distinct config
    is validated once; an invalid one still raises every time."""
    from sagemaker.core.config.config_manager import SageMakerConfig

    original = SageMakerConfig.validate_sagemaker_config
    if getattr(original, "__radloop_once__", False):
        return
    valid: set[str] = set()

    def validate_sagemaker_config(sagemaker_config: dict[str, Any] | None = None) -> None:
        key = json.dumps(sagemaker_config, sort_keys=True, default=str)
        if key not in valid:
            original(sagemaker_config)
            valid.add(key)

    validate_sagemaker_config.__radloop_once__ = True  # type: ignore[attr-defined]
    SageMakerConfig.validate_sagemaker_config = staticmethod(validate_sagemaker_config)  # type: ignore[method-assign]


def build_pipeline(cfg: PipelineConfig, session: Any) -> Any:
    """Build the SDK ``Pipeline`` object (no AWS call is made until ``definition()`` / ``upsert()``)."""
    _quiet_sdk()
    from sagemaker.core.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.core.network import NetworkConfig
    from sagemaker.core.processing import Processor
    from sagemaker.core.shapes import ProcessingInput, ProcessingOutput, ProcessingS3Input, ProcessingS3Output
    from sagemaker.core.workflow.conditions import ConditionGreaterThanOrEqualTo
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.functions import Join, JsonGet
    from sagemaker.core.workflow.parameters import (
        ParameterFloat,
        ParameterInteger,
        ParameterString,
    )
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow.condition_step import ConditionStep
    from sagemaker.mlops.workflow.fail_step import FailStep
    from sagemaker.mlops.workflow.model_step import ModelStep
    from sagemaker.mlops.workflow.pipeline import Pipeline
    from sagemaker.mlops.workflow.steps import ProcessingStep, TrainingStep
    from sagemaker.serve.model_builder import ModelBuilder
    from sagemaker.train import ModelTrainer
    from sagemaker.train.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        Networking,
        OutputDataConfig,
        StoppingCondition,
    )

    # --- parameters (names are a contract with the orchestrator: contracts_ml.md)
    manifest = ParameterString("ManifestUri", default_value=f"s3://{cfg.ml_bucket}/datasets/latest/manifest.json")
    #: the locked evaluation set (its versioned manifest): Preprocess writes it as the test split, so every candidate
    #: and the champion are scored on the same cases, and none of them is in the training manifest
    locked = ParameterString("LockedSetUri", default_value=f"s3://{cfg.ml_bucket}/locked-eval/none/")
    #: "superiority" (the default) or "non-inferiority" (a declared refresh): how the challenger must compare
    comparison = ParameterString("Comparison", default_value="superiority")
    champion = ParameterFloat("ChampionAuc", default_value=0.0)
    #: the champion's model.tar.gz, re-scored by Evaluate on the same test split (default: the "no champion" marker)
    champion_model = ParameterString("ChampionModelUri", default_value=f"s3://{cfg.ml_bucket}/{NO_CHAMPION_PREFIX}")
    # the gate's defaults are the approval policy's numbers (the orchestrator passes the same ones to each execution)
    policy = cfg.policy
    floor = ParameterFloat("AucFloor", default_value=policy.auc_floor)
    margin = ParameterFloat("AucMargin", default_value=policy.auc_margin)
    epochs = ParameterInteger("Epochs", default_value=20)
    image_size = ParameterInteger("ImageSize", default_value=224)
    arch = ParameterString("Arch", default_value="resnet18")
    batch_size = ParameterInteger("BatchSize", default_value=32)
    sens_target = ParameterFloat("SensitivityTarget", default_value=0.9)
    seed = ParameterInteger("Seed", default_value=0)
    train_type = ParameterString("TrainingInstanceType", default_value=cfg.training_instance_type)
    proc_type = ParameterString("ProcessingInstanceType", default_value=cfg.processing_instance_type)
    image = ParameterString("TrainingImageUri", default_value=cfg.image_uri)
    kms = ParameterString("KmsKeyId", default_value=cfg.kms_key_id)
    params = [manifest, locked, champion, champion_model, floor, margin, comparison, epochs, image_size, arch,
              batch_size, sens_target, seed, train_type, proc_type, image, kms]

    run_root = Join(on="/", values=[f"s3://{cfg.ml_bucket}/pipelines", ExecutionVariables.PIPELINE_EXECUTION_ID])
    subnets, sgs = list(cfg.subnets), list(cfg.security_groups)
    vpc = bool(subnets and sgs)

    def processor(name: str, module: str, isolated: bool) -> Processor:
        net = NetworkConfig(enable_network_isolation=cfg.network_isolation and isolated,
                            security_group_ids=sgs if vpc else None, subnets=subnets if vpc else None,
                            encrypt_inter_container_traffic=True)
        return Processor(role=cfg.role_arn, image_uri=image, instance_count=1, instance_type=proc_type,
                         entrypoint=["python3", "-m", module], volume_size_in_gb=50, volume_kms_key=kms,
                         output_kms_key=kms, max_runtime_in_seconds=cfg.max_runtime_s, base_job_name=f"{cfg.prefix}-{name}",
                         network_config=net, sagemaker_session=session,
                         env={"RADLOOP_PREFIX": cfg.prefix, "PYTHONUNBUFFERED": "1"})

    def s3_in(name: str, uri: Any, local: str) -> Any:
        return ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
            s3_uri=uri, local_path=local, s3_data_type="S3Prefix", s3_input_mode="File"))

    def s3_out(name: str, uri: Any, local: str) -> Any:
        return ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
            s3_uri=uri, local_path=local, s3_upload_mode="EndOfJob"))

    # --- 1. preprocess
    dataset_meta = PropertyFile(name=DATASET_PROPERTY_FILE, output_name="train", path="meta.json")
    pre_args = processor("preprocess", "training.preprocess", isolated=False).run(
        inputs=[s3_in("manifest", manifest, f"{PROCESSING_ROOT}/input/manifest"),
                s3_in("locked", locked, f"{PROCESSING_ROOT}/input/locked")],
        outputs=[s3_out(s, Join(on="/", values=[run_root, "data", s]), f"{PROCESSING_ROOT}/output/{s}") for s in SPLITS],
        arguments=["--image-size", image_size.to_string()],
        wait=False,
    )
    step_pre = ProcessingStep(name=STEP_PREPROCESS, step_args=pre_args, property_files=[dataset_meta],
                              description="Fetch the manifest's HTJ2K frames and write preprocessed shards")

    def pre_out(split: str) -> Any:
        return step_pre.properties.ProcessingOutputConfig.Outputs[split].S3Output.S3Uri

    # --- 2. train
    trainer = ModelTrainer(
        training_image=image,
        role=cfg.role_arn,
        sagemaker_session=session,
        base_job_name=f"{cfg.prefix}-train",
        compute=Compute(instance_type=train_type, instance_count=1, volume_size_in_gb=50, volume_kms_key_id=kms,
                        enable_managed_spot_training=cfg.use_spot),
        networking=Networking(enable_network_isolation=cfg.network_isolation, security_group_ids=sgs if vpc else None,
                              subnets=subnets if vpc else None, enable_inter_container_traffic_encryption=True),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=cfg.max_runtime_s,
                                             max_wait_time_in_seconds=cfg.max_wait_s),
        output_data_config=OutputDataConfig(s3_output_path=Join(on="/", values=[f"s3://{cfg.ml_bucket}/models",
                                                                                 ExecutionVariables.PIPELINE_EXECUTION_ID]),
                                            kms_key_id=kms),
        checkpoint_config=CheckpointConfig(
            s3_uri=Join(on="/", values=[run_root, "checkpoints"]), local_path="/opt/ml/checkpoints"),
        hyperparameters={
            "arch": arch, "epochs": epochs.to_string(), "batch_size": batch_size.to_string(),
            "sensitivity_target": sens_target.to_string(), "seed": seed.to_string(), "precision": "auto",
        },
        environment={"RADLOOP_PREFIX": cfg.prefix, "PYTHONUNBUFFERED": "1"},
    )
    train_args = trainer.train(
        input_data_config=[InputData(channel_name="train", data_source=pre_out("train")),
                           InputData(channel_name="val", data_source=pre_out("val"))],
        wait=False,
    )
    step_train = TrainingStep(name=STEP_TRAIN, step_args=train_args,
                              description="Train the ResNet on GPU (Spot, checkpointed every epoch)")
    model_uri = step_train.properties.ModelArtifacts.S3ModelArtifacts

    # --- 3. evaluate
    evaluation = PropertyFile(name=EVALUATION_PROPERTY_FILE, output_name="evaluation", path="evaluation.json")
    eval_args = processor("evaluate", "training.evaluate", isolated=True).run(
        inputs=[s3_in("model", model_uri, f"{PROCESSING_ROOT}/model"),
                s3_in("val", pre_out("val"), f"{PROCESSING_ROOT}/val"),
                s3_in("test", pre_out("test"), f"{PROCESSING_ROOT}/test"),
                s3_in("champion", champion_model, f"{PROCESSING_ROOT}/champion")],
        outputs=[s3_out("evaluation", Join(on="/", values=[run_root, "evaluation"]), f"{PROCESSING_ROOT}/evaluation")],
        arguments=["--sensitivity-target", sens_target.to_string(), "--champion-auc", champion.to_string(),
                   "--auc-margin", margin.to_string(), "--champion-dir", f"{PROCESSING_ROOT}/champion",
                   "--comparison", comparison],
        wait=False,
    )
    step_eval = ProcessingStep(name=STEP_EVALUATE, step_args=eval_args, property_files=[evaluation],
                               description="Locked-set metrics at the threshold chosen on validation; the champion "
                                           "re-scored on the same cases; the approval policy's verdict")
    evaluation_uri = Join(on="/", values=[
        step_eval.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri, "evaluation.json"])
    auc = JsonGet(step_name=step_eval.name, property_file=evaluation, json_path=AUC_PATH)
    bar = JsonGet(step_name=step_eval.name, property_file=evaluation, json_path=CHAMPION_BAR_PATH)

    # --- 4. register, or fail
    builder = ModelBuilder(s3_model_data_url=model_uri, image_uri=image, sagemaker_session=session,
                           role_arn=cfg.role_arn)
    reg_args = builder.register(
        model_package_group_name=cfg.model_package_group,
        content_types=["application/dicom", "application/octet-stream"],
        response_types=["application/json"],
        inference_instances=["ml.g5.xlarge", "ml.m5.xlarge"],
        transform_instances=["ml.g5.xlarge"],
        model_metrics=ModelMetrics(model_statistics=MetricsSource(s3_uri=evaluation_uri,
                                                                  content_type="application/json")),
        approval_status="PendingManualApproval",
        description="radloop pneumonia triage model (ResNet, 1-channel); see model_card.json in the artefact",
        customer_metadata_properties={
            "run_id": ExecutionVariables.PIPELINE_EXECUTION_ID,
            "manifest_sha256": JsonGet(step_name=step_pre.name, property_file=dataset_meta, json_path=MANIFEST_SHA_PATH),
            "manifest_uri": manifest,
            "test_auc": auc.to_string() if hasattr(auc, "to_string") else auc,
            "locked_set_sha256": JsonGet(step_name=step_pre.name, property_file=dataset_meta,
                                         json_path="locked_set.sha256"),
        },
    )
    step_register = ModelStep(name=STEP_REGISTER, step_args=reg_args)
    step_fail = FailStep(name=STEP_FAIL, error_message=Join(on=" ", values=[
        "The model was not registered: its test AUC", auc, "is below the floor", floor,
        "or below the champion's AUC plus the margin", bar]))
    step_cond = ConditionStep(
        name=STEP_CONDITION,
        conditions=[ConditionGreaterThanOrEqualTo(left=auc, right=floor),
                    ConditionGreaterThanOrEqualTo(left=auc, right=bar)],
        if_steps=[step_register],
        else_steps=[step_fail],
        description="Register only a model at least as good as the floor and the champion plus the margin",
    )
    return Pipeline(name=cfg.pipeline_name, parameters=params,
                    steps=[step_pre, step_train, step_eval, step_cond], sagemaker_session=session)


def _metric_definitions_patch(defn: dict[str, Any], cfg: PipelineConfig) -> dict[str, Any]:
    """Add the metric definitions (and tags) the SDK's ModelTrainer does not expose publicly."""
    for st in defn.get("Steps", []):
        if st.get("Type") == "Training":
            st["Arguments"].setdefault("AlgorithmSpecification", {})["MetricDefinitions"] = METRIC_DEFINITIONS
    return defn


@contextlib.contextmanager
def offline_aws(region: str) -> Iterator[None]:
    """Point boto at the embedded endpoint (``AWS_ENDPOINT_URL``) or, without one, at moto's in-process mock."""
    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    if os.environ.get("AWS_ENDPOINT_URL"):
        yield
        return
    from moto import mock_aws

    with mock_aws():
        yield


def make_session(cfg: PipelineConfig) -> Any:
    import boto3
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    session = PipelineSession(boto_session=boto3.Session(region_name=cfg.region), sagemaker_config=SDK_CONFIG)
    session._default_bucket = cfg.ml_bucket  # no bucket lookup/creation: nothing is uploaded (image-based steps)
    return session


def definition(cfg: PipelineConfig | None = None) -> dict[str, Any]:
    """The pipeline definition as a dict (offline-safe, see :func:`offline_aws`)."""
    cfg = cfg or config_from_env()
    _quiet_sdk()
    with offline_aws(cfg.region), contextlib.redirect_stdout(sys.stderr):
        pipe = build_pipeline(cfg, make_session(cfg))
        defn = json.loads(pipe.definition())
    return _metric_definitions_patch(defn, cfg)


def config_from_env(**overrides: Any) -> PipelineConfig:
    """PipelineConfig from ``RADLOOP_*`` variables (prefix, role, image, KMS key, subnets, security groups, approval
    policy document)."""
    env = os.environ
    kw: dict[str, Any] = {
        "prefix": env.get("RADLOOP_PREFIX", "radloop"),
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    for key, var in (("role_arn", "RADLOOP_SAGEMAKER_ROLE_ARN"), ("image_uri", "RADLOOP_TRAINING_IMAGE_URI"),
                     ("kms_key_id", "RADLOOP_ML_KMS_KEY_ID"), ("training_instance_type", "RADLOOP_TRAINING_INSTANCE_TYPE")):
        if env.get(var):
            kw[key] = env[var]
    if env.get("RADLOOP_SUBNET_IDS"):
        kw["subnets"] = tuple(s for s in env["RADLOOP_SUBNET_IDS"].split(",") if s)
    if env.get("RADLOOP_SECURITY_GROUP_IDS"):
        kw["security_groups"] = tuple(s for s in env["RADLOOP_SECURITY_GROUP_IDS"].split(",") if s)
    kw.update({k: v for k, v in overrides.items() if v not in (None, (), "")})
    if kw.get("approval") is None:
        kw["approval"] = load_policy()  # RADLOOP_APPROVAL_POLICY_FILE, else the packaged policy
    return PipelineConfig(**kw)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.pipeline")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("definition", "upsert"):
        p = sub.add_parser(name)
        p.add_argument("--prefix", default=None)
        p.add_argument("--role-arn", default=None)
        p.add_argument("--image-uri", default=None)
        p.add_argument("--kms-key-id", default=None)
        p.add_argument("--subnet", action="append", default=None, help="VPC subnet id (repeat)")
        p.add_argument("--security-group", action="append", default=None, help="VPC security group id (repeat)")
        p.add_argument("--training-instance-type", default=None)
        p.add_argument("--approval-policy", default=None,
                       help="approval policy document for the gate's defaults (default: RADLOOP_APPROVAL_POLICY_FILE, "
                            "else shared/approval_policy.json)")
        if name == "definition":
            p.add_argument("--out", default=None, help="write the JSON here instead of stdout")
    a = ap.parse_args(argv)
    cfg = config_from_env(prefix=a.prefix, role_arn=a.role_arn, image_uri=a.image_uri, kms_key_id=a.kms_key_id,
                          subnets=tuple(a.subnet or ()), security_groups=tuple(a.security_group or ()),
                          training_instance_type=a.training_instance_type,
                          approval=load_policy(a.approval_policy) if a.approval_policy else None)
    if a.cmd == "definition":
        text = json.dumps(definition(cfg), indent=2)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text + "\n")
        else:
            sys.stdout.write(text + "\n")
        return 0
    # upsert: a real account (credentials and region from the environment)
    _quiet_sdk()
    pipe = build_pipeline(cfg, make_session(cfg))
    defn = _metric_definitions_patch(json.loads(pipe.definition()), cfg)
    import boto3

    sm = boto3.client("sagemaker", region_name=cfg.region)
    body = json.dumps(defn)
    try:
        sm.create_pipeline(PipelineName=cfg.pipeline_name, PipelineDefinition=body, RoleArn=cfg.role_arn,
                           Tags=[{"Key": k, "Value": v} for k, v in cfg.tags.items()])
    except sm.exceptions.ResourceInUse:
        sm.update_pipeline(PipelineName=cfg.pipeline_name, PipelineDefinition=body, RoleArn=cfg.role_arn)
    sys.stdout.write(json.dumps({"pipeline": cfg.pipeline_name}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
