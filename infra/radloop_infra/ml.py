"""SageMaker: the pipeline execution role (least privilege), the model package group, the training image repository
and, when a definition is supplied, the training pipeline itself (CloudFormation creates or updates it: an upsert).
"""

from __future__ import annotations

import json
from pathlib import Path

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_iam as iam
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from infra.radloop_infra import needs as N
from infra.radloop_infra.config import DeployParams
from infra.radloop_infra.data import FRAMES_PREFIX, Data
from infra.radloop_infra.healthimaging import HealthImagingStore
from infra.radloop_infra.security import Keys, Network
from shared.topology import Topology

#: The training package's GPU image; CI builds it and pushes it to the repository below (docs/deploy.md).
TRAINING_DOCKERFILE = "training/Dockerfile"
#: Where pipeline steps read and write in the ml bucket.
ML_PREFIXES = ("datasets/", "locked-eval/", "models/", "pipelines/")


def pipeline_name(topology: Topology) -> str:
    """The SageMaker pipeline's name, as the training package names it when it upserts the pipeline."""
    from training.pipeline import PipelineConfig  # the package that creates the pipeline owns its name

    return PipelineConfig(prefix=topology.prefix).pipeline_name


class Ml(Construct):
    def __init__(self, scope: Construct, cid: str, *, params: DeployParams, topology: Topology, keys: Keys,
                 data: Data, network: Network, image_store: HealthImagingStore | None = None) -> None:
        super().__init__(scope, cid)
        stack = Stack.of(self)
        removal = RemovalPolicy.RETAIN if params.env.retain_data else RemovalPolicy.DESTROY
        group = topology.model_package_group
        self.pipeline_name = pipeline_name(topology)

        self.training_repo = ecr.Repository(
            self, "TrainingRepo", repository_name=f"{topology.prefix}-training",
            image_scan_on_push=True, image_tag_mutability=ecr.TagMutability.IMMUTABLE,
            encryption=ecr.RepositoryEncryption.KMS, encryption_key=keys.data, removal_policy=removal,
            lifecycle_rules=[ecr.LifecycleRule(description="keep the last 30 training images", max_image_count=30)],
        )

        self.group = sagemaker.CfnModelPackageGroup(
            self, "ModelPackageGroup", model_package_group_name=group,
            model_package_group_description=f"{topology.prefix}: pneumonia triage models (champion/challenger)",
        )

        # Processing and training jobs run in the private subnets (``training.pipeline --subnet/--security-group``):
        # they reach S3, ECR, Logs and STS through the VPC endpoints, and each other for distributed training.
        vpc = network.vpc
        self.jobs_sg = ec2.SecurityGroup(self, "JobsSg", vpc=vpc, allow_all_outbound=False,
                                         description="SageMaker pipeline jobs: HTTPS to endpoints, each other")
        self.jobs_sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to VPC endpoints (no internet route)")
        self.jobs_sg.add_ingress_rule(self.jobs_sg, ec2.Port.all_tcp(), "between the jobs' containers")
        self.jobs_sg.add_egress_rule(self.jobs_sg, ec2.Port.all_tcp(), "between the jobs' containers")
        vpc_arn = stack.format_arn(service="ec2", resource="vpc", resource_name=vpc.vpc_id)

        self.role = iam.Role(self, "PipelineRole", assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
                             description=f"{topology.prefix}: SageMaker pipeline execution (least privilege)")
        ml, images = data.buckets["ml"], data.buckets["images"]
        region_acct = f"arn:{stack.partition}:sagemaker:{stack.region}:{stack.account}"
        statements = [
            iam.PolicyStatement(sid="MlArtifacts", actions=["s3:GetObject", "s3:PutObject"],
                                resources=[ml.arn_for_objects(f"{p}*") for p in ML_PREFIXES]),
            iam.PolicyStatement(sid="MlList", actions=["s3:ListBucket"], resources=[ml.bucket_arn],
                                conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in ML_PREFIXES]}}),
            iam.PolicyStatement(sid="ReadFrames", actions=["s3:GetObject"],
                                resources=[images.arn_for_objects(f"{FRAMES_PREFIX}*"),
                                           images.arn_for_objects("metadata/*")]),
            # Triage's re-scoring Batch Transform jobs run as this role: they read the originals (dicom/) listed in a
            # manifest under transforms/ and write one result per original there (services/triage/adapters/transform.py).
            iam.PolicyStatement(sid="RescoreOriginals", actions=["s3:GetObject"],
                                resources=[images.arn_for_objects("dicom/*")]),
            iam.PolicyStatement(sid="RescoreTransforms", actions=["s3:GetObject", "s3:PutObject"],
                                resources=[images.arn_for_objects("transforms/*")]),
            iam.PolicyStatement(sid="DataKey",
                                actions=["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
                                resources=[keys.data.key_arn]),
            # Job volumes are encrypted with the data key: SageMaker creates grants for its own resources only.
            iam.PolicyStatement(sid="DataKeyGrantsForJobVolumes", actions=["kms:CreateGrant"],
                                resources=[keys.data.key_arn],
                                conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}}),
            # Describe calls have no resource-level permissions; ENI changes are limited to this VPC.
            iam.PolicyStatement(sid="JobNetworkDescribe",
                                actions=["ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                                         "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"],
                                resources=["*"]),
            iam.PolicyStatement(sid="JobNetworkInterfaces",
                                actions=["ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                                         "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission"],
                                resources=["*"], conditions={"ArnEquals": {"ec2:Vpc": vpc_arn}}),
            iam.PolicyStatement(sid="PullTrainingImage",
                                actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer",
                                         "ecr:BatchCheckLayerAvailability"],
                                resources=[self.training_repo.repository_arn]),
            # GetAuthorizationToken has no resource-level permissions; it reveals no data.
            iam.PolicyStatement(sid="EcrToken", actions=["ecr:GetAuthorizationToken"], resources=["*"]),
            iam.PolicyStatement(sid="JobLogs",
                                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                                         "logs:DescribeLogStreams"],
                                resources=[stack.format_arn(service="logs", resource="log-group",
                                                            resource_name="/aws/sagemaker/*",
                                                            arn_format=ArnFormat.COLON_RESOURCE_NAME),
                                           stack.format_arn(service="logs", resource="log-group",
                                                            resource_name="/aws/sagemaker/*:log-stream:*",
                                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)]),
            iam.PolicyStatement(sid="JobMetrics", actions=["cloudwatch:PutMetricData"], resources=["*"],
                                conditions={"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}),
            iam.PolicyStatement(
                sid="PipelineJobs",
                actions=["sagemaker:CreateProcessingJob", "sagemaker:DescribeProcessingJob",
                         "sagemaker:StopProcessingJob", "sagemaker:CreateTrainingJob",
                         "sagemaker:DescribeTrainingJob", "sagemaker:StopTrainingJob", "sagemaker:AddTags"],
                resources=[f"{region_acct}:processing-job/pipelines-*", f"{region_acct}:training-job/pipelines-*"],
            ),
            iam.PolicyStatement(
                sid="RegisterModel",
                actions=["sagemaker:CreateModelPackage", "sagemaker:DescribeModelPackage",
                         "sagemaker:DescribeModelPackageGroup", "sagemaker:AddTags"],
                resources=[f"{region_acct}:model-package/{group}/*", f"{region_acct}:model-package-group/{group}"],
            ),
            iam.PolicyStatement(
                sid="PassSelfToJobs", actions=["iam:PassRole"], resources=[self.role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            ),
        ]
        if image_store is not None:
            # image_store=healthimaging: the preprocess step reads each record's frame and its image set's metadata
            # from HealthImaging (training/preprocess.py, FrameReader), on this datastore's image sets only. The data
            # key's Decrypt is granted above.
            statements.append(iam.PolicyStatement(
                sid="ReadHealthImagingFrames", actions=list(N.HEALTHIMAGING_ACTIONS["read"]),
                resources=[image_store.datastore_arn, image_store.image_set_arns]))
            # ... and re-scoring transforms read the originals where HealthImaging keeps them: the staged imports.
            statements.append(iam.PolicyStatement(
                sid="RescoreStagedOriginals", actions=["s3:GetObject"],
                resources=[data.buckets["ingestion"].arn_for_objects(f"{N.HEALTHIMAGING_IMPORT_PREFIX}*")]))
        # Attached from the policy side (its Roles property): the policy names the role's own ARN for PassRole,
        # so the role must not depend on the policy.
        iam.ManagedPolicy(self, "PipelinePolicy", statements=statements, roles=[self.role],
                          description="SageMaker pipeline steps (least privilege)")

        self.pipeline: sagemaker.CfnPipeline | None = None
        if params.pipeline_definition:
            definition = json.loads(Path(params.pipeline_definition).read_text())
            self.pipeline = sagemaker.CfnPipeline(
                self, "Pipeline", pipeline_name=self.pipeline_name, role_arn=self.role.role_arn,
                pipeline_description=f"{topology.prefix}: preprocess, train, evaluate, register (training/pipeline.py)",
                pipeline_definition={"PipelineDefinitionBody": json.dumps(definition, sort_keys=True)},
            )
