"""Security foundation: customer-managed KMS keys (rotation on) and a private VPC with endpoints and flow logs."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.radloop_infra.config import DeployParams

#: Interface endpoints the tasks and SageMaker jobs need; with the S3 and DynamoDB gateway endpoints, tasks need no
#: internet egress (no NAT gateway, no internet gateway).
INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
    "Events": ec2.InterfaceVpcEndpointAwsService.EVENTBRIDGE,
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Monitoring": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_MONITORING,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "SageMakerApi": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_API,
    "SageMakerRuntime": ec2.InterfaceVpcEndpointAwsService.SAGEMAKER_RUNTIME,
    "Kms": ec2.InterfaceVpcEndpointAwsService.KMS,
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,
    "XRay": ec2.InterfaceVpcEndpointAwsService.XRAY,
}

#: With ``image_store=healthimaging`` only: the HealthImaging control plane (import jobs) and its runtime (frames and
#: metadata). The DICOMweb endpoint (``HEALTH_IMAGING_DICOM``) is not added: no service calls HealthImaging's DICOMweb
#: APIs (the gateway serves its own, from GetImageFrame and GetImageSetMetadata).
HEALTHIMAGING_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "HealthImaging": ec2.InterfaceVpcEndpointAwsService.HEALTH_IMAGING,
    "HealthImagingRuntime": ec2.InterfaceVpcEndpointAwsService.HEALTH_IMAGING_RUNTIME,
}


class Keys(Construct):
    """Three CMKs, each for one kind of data, so that key policies stay narrow.

    - ``data``: PHI at rest (S3 buckets, DynamoDB tables, backups, the pseudonym secret, ECR);
    - ``messaging``: SQS queues and the alarm SNS topic (EventBridge and CloudWatch must use it to deliver);
    - ``logs``: CloudWatch log groups, VPC flow logs, CloudTrail.
    """

    def __init__(self, scope: Construct, cid: str, *, params: DeployParams) -> None:
        super().__init__(scope, cid)
        stack = Stack.of(self)
        removal = RemovalPolicy.RETAIN if params.env.retain_data else RemovalPolicy.DESTROY
        prefix = params.prefix

        def key(name: str, description: str) -> kms.Key:
            return kms.Key(
                self, name.capitalize(),
                alias=f"alias/{prefix}-{name}",
                description=description,
                enable_key_rotation=True,
                rotation_period=Duration.days(365),
                pending_window=Duration.days(30 if params.env.retain_data else 7),
                removal_policy=removal,
            )

        self.data = key("data", f"{prefix}: PHI at rest (S3, DynamoDB, backups, secrets)")
        self.messaging = key("messaging", f"{prefix}: SQS queues and SNS alarm topic")
        self.logs = key("logs", f"{prefix}: CloudWatch Logs, VPC flow logs and CloudTrail")

        # EventBridge encrypts messages it sends to the KMS-encrypted queues and topic; CloudWatch alarms publish to
        # the encrypted topic. Both are limited to this account.
        for principal in ("events.amazonaws.com", "cloudwatch.amazonaws.com"):
            self.messaging.add_to_resource_policy(iam.PolicyStatement(
                sid=f"Allow{principal.split('.')[0].capitalize()}ToUseKey",
                principals=[iam.ServicePrincipal(principal)],
                actions=["kms:GenerateDataKey", "kms:Decrypt"],
                resources=["*"],  # in a key policy "*" means this key
                conditions={"StringEquals": {"aws:SourceAccount": stack.account}},
            ))
        self.logs.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchLogs",
            principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
            actions=["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            resources=["*"],
            conditions={"ArnLike": {
                "kms:EncryptionContext:aws:logs:arn": f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:*"
            }},
        ))
        self.logs.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudTrailEncrypt",
            principals=[iam.ServicePrincipal("cloudtrail.amazonaws.com")],
            actions=["kms:GenerateDataKey*", "kms:DescribeKey"],
            resources=["*"],
            conditions={"StringLike": {
                "kms:EncryptionContext:aws:cloudtrail:arn": f"arn:{stack.partition}:cloudtrail:*:{stack.account}:trail/*"
            }},
        ))


class Network(Construct):
    """Two AZs, private isolated subnets only, gateway + interface endpoints, flow logs of all traffic."""

    def __init__(self, scope: Construct, cid: str, *, params: DeployParams, keys: Keys) -> None:
        super().__init__(scope, cid)
        self.vpc = ec2.Vpc(
            self, "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(params.vpc_cidr),
            max_azs=2,
            nat_gateways=0,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="app", subnet_type=ec2.SubnetType.PRIVATE_ISOLATED, cidr_mask=20),
            ],
            restrict_default_security_group=True,
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDb": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.DYNAMODB),
            },
        )
        flow_log_group = logs.LogGroup(
            self, "FlowLogs",
            encryption_key=keys.logs,
            retention=_retention(params.env.log_retention_days),
            removal_policy=RemovalPolicy.RETAIN if params.env.retain_data else RemovalPolicy.DESTROY,
        )
        self.vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_log_group),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        self.endpoint_sg = ec2.SecurityGroup(
            self, "EndpointSg", vpc=self.vpc, allow_all_outbound=False,
            description="Interface endpoints: HTTPS from inside the VPC only",
        )
        self.endpoint_sg.add_ingress_rule(ec2.Peer.ipv4(params.vpc_cidr), ec2.Port.tcp(443),
                                          "HTTPS from the VPC")
        endpoints = {**INTERFACE_ENDPOINTS, **(HEALTHIMAGING_ENDPOINTS if params.healthimaging else {})}
        for name, service in endpoints.items():
            self.vpc.add_interface_endpoint(
                name, service=service, private_dns_enabled=True, security_groups=[self.endpoint_sg], open=False,
                subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            )


_RETENTION: dict[int, logs.RetentionDays] = {
    7: logs.RetentionDays.ONE_WEEK,
    30: logs.RetentionDays.ONE_MONTH,
    90: logs.RetentionDays.THREE_MONTHS,
    365: logs.RetentionDays.ONE_YEAR,
    2557: logs.RetentionDays.SEVEN_YEARS,
}


def _retention(days: int) -> logs.RetentionDays:
    """The CloudWatch retention enum member for ``days``."""
    try:
        return _RETENTION[days]
    except KeyError:
        raise ValueError(f"log retention of {days} days is not one of {sorted(_RETENTION)}") from None


retention = _retention
