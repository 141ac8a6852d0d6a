"""ECS Fargate: one cluster, one service per radloop service, the internal ALB (HTTPS) and the DIMSE NLB.

The ALB's listener rules are ``shared.topology.ROUTES`` in order (the local entry proxy reads the same tuple, so both
route the same paths to the same services); ports are ``shared.settings.DEFAULT_PORTS``; each task role is rendered from
:mod:`.needs`.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any

import yaml
from aws_cdk import ArnFormat, CfnParameter, Duration, Fn, RemovalPolicy, Stack
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from infra.radloop_infra import needs as N
from infra.radloop_infra.config import DeployParams
from infra.radloop_infra.dashboards import metrics_log_group_name, with_emf_metrics
from infra.radloop_infra.data import Data
from infra.radloop_infra.healthimaging import HealthImagingStore
from infra.radloop_infra.messaging import Messaging
from infra.radloop_infra.security import Keys, Network, retention
from shared.settings import DEFAULT_PORTS, Settings
from shared.topology import ROUTES, SERVICES, Topology, routed_services

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTOR_CONFIG = REPO_ROOT / "infra" / "otel-collector.yaml"
#: The ADOT collector, pulled through an ECR pull-through cache of ECR Public (tasks have no internet egress).
ADOT_UPSTREAM_REPOSITORY = "aws-observability/aws-otel-collector"
ADOT_TAG = "v0.43.3"
PULL_THROUGH_PREFIX = "ecr-public"
DIMSE_PORT = DEFAULT_PORTS["dimse"]
#: The services that name their own origin in responses (their settings are shared.forwarded.ForwardingSettings:
#: STOW-RS and QIDO-RS RetrieveURLs); they are told the ALB's HTTPS origin (DeployParams.public_base_url).
PUBLIC_ORIGIN_SERVICES: tuple[str, ...] = ("ingestion", "streaming_gateway")
#: The NLB terminates DICOM TLS on its registered port (2762) and forwards plain DIMSE to the task inside the VPC.
DICOM_TLS_PORT = 2762
#: The interop task's Query/Retrieve SCP, and the NLB's DICOM TLS port for it (next to the registered 2762; only with
#: the deploy parameter qr_calling_aes).
QR_PORT = DEFAULT_PORTS["qr"]
QR_TLS_PORT = 2763
HEALTH_PATH = "/healthz"
#: Backlog each triage task should carry (messages visible per running task) before scaling out.
BACKLOG_PER_TASK = 20
#: ECS waits this much longer than the process's own drain (``drain_timeout_s``) before SIGKILL: the time to exit
#: after the drain's deadline (interpreter shutdown, flushing logs and spans).
STOP_MARGIN_S = 5
#: Fargate's longest stopTimeout.
FARGATE_MAX_STOP_TIMEOUT_S = 120


def settings_class(service: str) -> type[Settings]:
    """The service's settings class (the most derived Settings subclass in services/<name>/settings.py) or the
    shared one."""
    try:
        mod = importlib.import_module(f"services.{service}.settings")
    except ModuleNotFoundError:
        return Settings
    classes = [v for v in vars(mod).values() if isinstance(v, type) and issubclass(v, Settings)]
    return max(classes, key=lambda c: len(c.__mro__)) if classes else Settings


def drain_timeout_s(service: str) -> float:
    """The service's ``drain_timeout_s`` default: the one source of its shutdown budget."""
    return float(settings_class(service).model_fields["drain_timeout_s"].default)


def stop_timeout_s(service: str) -> int:
    """ECS ``stopTimeout``: SIGTERM to SIGKILL. The drain (stop receiving, finish in-flight work, drain HTTP and the
    outbox) ends within ``drain_timeout_s``; ECS waits :data:`STOP_MARGIN_S` more."""
    stop = math.ceil(drain_timeout_s(service)) + STOP_MARGIN_S
    if stop > FARGATE_MAX_STOP_TIMEOUT_S:
        raise ValueError(f"{service}: drain_timeout_s={drain_timeout_s(service)} needs a stopTimeout of {stop} s, "
                         f"more than Fargate's {FARGATE_MAX_STOP_TIMEOUT_S} s")
    return stop


def http_services() -> list[str]:
    """Services the ALB routes to, in ROUTES order (unique)."""
    return list(routed_services())


def ecs_collector_config(region: str, prefix: str) -> dict[str, Any]:
    """infra/otel-collector.yaml with its exporters swapped for AWS: traces to X-Ray, metrics to CloudWatch EMF
    (:func:`~infra.radloop_infra.dashboards.with_emf_metrics`); receivers and processors are shared.

    X-Ray takes traces only: a metrics pipeline naming ``awsxray`` makes the collector refuse its configuration, so
    the sidecar would not start and the task would send neither traces nor metrics.
    """
    cfg = yaml.safe_load(COLLECTOR_CONFIG.read_text())
    cfg["exporters"] = {"awsxray": {"region": region, "indexed_attributes": ["radloop.study_uid"]}}
    for name, pipeline in cfg["service"]["pipelines"].items():
        if name == "traces" or name.startswith("traces/"):
            pipeline["exporters"] = ["awsxray"]
    return with_emf_metrics(cfg, region, prefix)


def _cid(name: str) -> str:
    return "".join(p.capitalize() for p in name.replace("_", "-").split("-"))


class Compute(Construct):
    def __init__(
        self, scope: Construct, cid: str, *, params: DeployParams, topology: Topology, keys: Keys,
        network: Network, data: Data, messaging: Messaging, pipeline_role: iam.IRole, pipeline_name: str,
        image_store: HealthImagingStore | None = None, training_repo_uri: str = "",
    ) -> None:
        super().__init__(scope, cid)
        #: The training image's repository (Ml): triage's Batch Transform jobs serve with it.
        self.training_repo_uri = training_repo_uri
        stack = Stack.of(self)
        env = params.env
        N.check_complete()
        routed = http_services()
        for service in SERVICES:
            kind = N.NEEDS[service].kind
            if (kind == "http") != (service in routed):
                raise ValueError(f"service {service!r} is declared {kind!r} in infra needs but shared.topology.ROUTES "
                                 f"{'do' if service in routed else 'do not'} route to it")
        removal = RemovalPolicy.RETAIN if env.retain_data else RemovalPolicy.DESTROY
        vpc = network.vpc
        self.topology = topology
        self.data, self.messaging, self.keys = data, messaging, keys
        #: AWS HealthImaging when the deployment chose it (``image_store=healthimaging``), else None.
        self.image_store = image_store
        self.image_store_name = params.image_store

        self.cluster = ecs.Cluster(
            self, "Cluster", vpc=vpc, cluster_name=f"{topology.prefix}",
            container_insights_v2=ecs.ContainerInsights.ENHANCED,
            enable_fargate_capacity_providers=True,
        )

        # The pseudonymisation key (RADLOOP_PSEUDONYM_KEY): generated once, never leaves Secrets Manager but to tasks.
        self.pseudonym_secret = secretsmanager.Secret(
            self, "PseudonymKey",
            description=f"{topology.prefix}: HMAC key that pseudonymises patient IDs in events",
            encryption_key=keys.data,
            generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64, exclude_punctuation=True),
            removal_policy=removal,
        )

        # Ingestion's de-identification key (deterministic UID remapping and pseudonyms; RADLOOP_DEID_KEY).
        self.deid_secret = secretsmanager.Secret(
            self, "DeidKey",
            description=f"{topology.prefix}: key for deterministic de-identification (ingestion)",
            encryption_key=keys.data,
            generate_secret_string=secretsmanager.SecretStringGenerator(password_length=64, exclude_punctuation=True),
            removal_policy=removal,
        )

        self.pull_through = ecr.CfnPullThroughCacheRule(
            self, "EcrPublicCache", ecr_repository_prefix=PULL_THROUGH_PREFIX, upstream_registry_url="public.ecr.aws",
        )
        adot_image = (f"{stack.account}.dkr.ecr.{stack.region}.{stack.url_suffix}/{PULL_THROUGH_PREFIX}/"
                      f"{ADOT_UPSTREAM_REPOSITORY}:{ADOT_TAG}")
        collector_yaml = yaml.safe_dump(ecs_collector_config(stack.region, params.prefix), sort_keys=False)

        # --- load balancers -----------------------------------------------------------------------------------------
        self.alb_sg = ec2.SecurityGroup(self, "AlbSg", vpc=vpc, allow_all_outbound=False,
                                        description="ALB: HTTPS from the hospital network only")
        self.nlb_sg = ec2.SecurityGroup(self, "NlbSg", vpc=vpc, allow_all_outbound=False,
                                        description="NLB: DICOM TLS from the configured PACS only")
        for cidr in params.client_cidrs:
            self.alb_sg.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.tcp(443), f"HTTPS from {cidr}")
        # DIMSE is admitted from the PACS networks only (pacs_cidrs), not the whole hospital network: the SCP
        # additionally checks the calling AE title, but an address filter keeps everyone else off the port.
        for cidr in params.pacs_cidrs:
            peer = ec2.Peer.ipv6(cidr) if ":" in cidr else ec2.Peer.ipv4(cidr)
            self.nlb_sg.add_ingress_rule(peer, ec2.Port.tcp(DICOM_TLS_PORT), f"DICOM TLS from PACS {cidr}")
        for cidr in params.qr_cidrs:  # the workstations that query and retrieve (only with qr_calling_aes)
            peer = ec2.Peer.ipv6(cidr) if ":" in cidr else ec2.Peer.ipv4(cidr)
            self.nlb_sg.add_ingress_rule(peer, ec2.Port.tcp(QR_TLS_PORT), f"DICOM TLS Q/R from {cidr}")

        self.alb = elbv2.ApplicationLoadBalancer(
            self, "Alb", vpc=vpc, internet_facing=False, security_group=self.alb_sg,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            drop_invalid_header_fields=True, deletion_protection=env.alb_deletion_protection,
            idle_timeout=Duration.seconds(300),
        )
        self.alb.log_access_logs(data.access_logs, prefix="alb")
        cert_arn = params.certificate_arn or CfnParameter(
            stack, "CertificateArn", type="String",
            description="ACM certificate ARN for the ALB's HTTPS listener",
            allowed_pattern=r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]+$",
        ).value_as_string
        self.listener = self.alb.add_listener(
            "Https", port=443, protocol=elbv2.ApplicationProtocol.HTTPS,
            certificates=[elbv2.ListenerCertificate.from_arn(cert_arn)],
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            open=False,
            default_action=elbv2.ListenerAction.fixed_response(404, content_type="application/json",
                                                               message_body='{"detail": "no service serves this path"}'),
        )
        self.nlb = elbv2.NetworkLoadBalancer(
            self, "Nlb", vpc=vpc, internet_facing=False, security_groups=[self.nlb_sg],
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            cross_zone_enabled=True, deletion_protection=env.alb_deletion_protection,
        )
        self.nlb.log_access_logs(data.access_logs, prefix="nlb")
        self.dimse_listener = self.nlb.add_listener(
            "Dimse", port=DICOM_TLS_PORT, protocol=elbv2.Protocol.TLS,
            certificates=[elbv2.ListenerCertificate.from_arn(cert_arn)], ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
        )
        self.qr_listener = self.nlb.add_listener(
            "QueryRetrieve", port=QR_TLS_PORT, protocol=elbv2.Protocol.TLS,
            certificates=[elbv2.ListenerCertificate.from_arn(cert_arn)], ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
        ) if params.qr else None

        # --- services -----------------------------------------------------------------------------------------------
        self.services: dict[str, ecs.FargateService] = {}
        self.task_roles: dict[str, iam.Role] = {}
        self.target_groups: dict[str, elbv2.ApplicationTargetGroup] = {}
        self.log_groups: dict[str, logs.LogGroup] = {}
        self.scalings: dict[str, ecs.ScalableTaskCount] = {}
        for service in SERVICES:
            self._service(service, params, adot_image, collector_yaml, pipeline_role, pipeline_name, removal)

        for priority, (prefix, methods, service) in enumerate(ROUTES, start=1):
            conditions = [elbv2.ListenerCondition.path_patterns([prefix, f"{prefix}/*"])]
            if methods:
                conditions.append(elbv2.ListenerCondition.http_request_methods(sorted(methods)))
            elbv2.ApplicationListenerRule(
                self, f"Route{priority}", listener=self.listener, priority=priority * 10,
                conditions=conditions, action=elbv2.ListenerAction.forward([self.target_groups[service]]),
            )
        # Request-count scaling needs the target groups attached to the ALB (by the rules above).
        for service, scaling in self.scalings.items():
            scaling.scale_on_request_count("Requests", requests_per_target=500,
                                           target_group=self.target_groups[service],
                                           scale_in_cooldown=Duration.seconds(120),
                                           scale_out_cooldown=Duration.seconds(60))

    # ------------------------------------------------------------------------------------------------------------
    def _service(self, service: str, params: DeployParams, adot_image: str, collector_yaml: str,
                 pipeline_role: iam.IRole, pipeline_name: str, removal: RemovalPolicy) -> None:
        stack = Stack.of(self)
        env = params.env
        need = N.NEEDS[service]
        name = _cid(service)
        port = DEFAULT_PORTS[service]
        size = env.size(service)

        role = iam.Role(self, f"{name}TaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
                        description=f"{params.prefix} {service}: only the actions infra/radloop_infra/needs.py lists")
        role.add_managed_policy(iam.ManagedPolicy(
            self, f"{name}Needs", managed_policy_name=f"{params.prefix}-{service.replace('_', '-')}-needs",
            description=f"{service}: rendered from infra/radloop_infra/needs.py",
            statements=self._statements(service, pipeline_role, pipeline_name)))
        self.task_roles[service] = role

        log_group = logs.LogGroup(self, f"{name}Logs", log_group_name=f"/radloop/{params.prefix}/{service}",
                                  encryption_key=self.keys.logs, retention=retention(env.log_retention_days),
                                  removal_policy=removal)
        self.log_groups[service] = log_group

        task = ecs.FargateTaskDefinition(
            self, f"{name}Task", cpu=size.cpu, memory_limit_mib=size.memory_mib, task_role=role,
            runtime_platform=ecs.RuntimePlatform(cpu_architecture=ecs.CpuArchitecture.X86_64,
                                                 operating_system_family=ecs.OperatingSystemFamily.LINUX),
        )
        task.add_volume(name="tmp")
        environment = {
            "RADLOOP_ENVIRONMENT": env.name,
            "RADLOOP_PREFIX": params.prefix,
            "RADLOOP_SERVICE_NAME": service,
            "RADLOOP_HOST": "0.0.0.0",
            "RADLOOP_PORT": str(port),
            "RADLOOP_VAR_DIR": "/tmp/radloop",
            "RADLOOP_AUTH_JWKS_URL": params.auth_jwks_url,
            "RADLOOP_AUTH_ISSUER": params.auth_issuer,
            "RADLOOP_AUTH_AUDIENCE": params.auth_audience,
            # The drain budget ECS's stopTimeout was computed from (stop_timeout_s), so the two cannot disagree.
            "RADLOOP_DRAIN_TIMEOUT_S": f"{drain_timeout_s(service):g}",
            "AWS_REGION": stack.region,
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
            "OTEL_SERVICE_NAME": service,
        }
        secrets = {"RADLOOP_PSEUDONYM_KEY": ecs.Secret.from_secrets_manager(self.pseudonym_secret)}
        if service in PUBLIC_ORIGIN_SERVICES:
            # Behind the ALB a response's URLs must name the origin the client used, with https: the ALB passes the
            # client's Host through over plain HTTP, so without this a RetrieveURL would read http://.
            environment["RADLOOP_PUBLIC_BASE_URL"] = params.public_base_url or Fn.join(
                "", ["https://", self.alb.load_balancer_dns_name])
        if need.dimse:
            # The SCP listens on all interfaces of the task (the NLB forwards to it) and accepts only the PACS AEs.
            environment.update({"RADLOOP_DIMSE_PORT": str(DIMSE_PORT), "RADLOOP_DIMSE_HOST": "0.0.0.0",
                                "RADLOOP_DIMSE_ALLOWED_CALLING_AES": json.dumps(list(params.dimse_calling_aes))})
            secrets["RADLOOP_DEID_KEY"] = ecs.Secret.from_secrets_manager(self.deid_secret)
        qr = need.qr and params.qr
        if qr:
            # The Q/R SCP behind the NLB's second TLS listener: the workstations' AEs only, C-MOVE to the listed ones.
            environment.update({
                "RADLOOP_QR_PORT": str(QR_PORT), "RADLOOP_QR_HOST": "0.0.0.0",
                "RADLOOP_QR_ALLOWED_CALLING_AES": json.dumps(list(params.qr_calling_aes)),
                "RADLOOP_QR_MOVE_DESTINATIONS": json.dumps({ae: {"host": host, "port": port, "tls": tls}
                                                            for ae, host, port, tls in params.qr_move_destinations}),
            })
        if self.image_store is not None:
            # RADLOOP_IMAGE_STORE and the datastore for the services that read or write images; none otherwise.
            environment.update(self.image_store.task_environment(service))
        if "run_transform" in need.sagemaker:
            if params.training_image_tag:
                # Large re-scoring passes run as Batch Transform jobs of the training image (training/serve.py), as the
                # pipeline's role (it reads the originals and the models, and writes the results).
                environment.update({
                    "RADLOOP_TRIAGE_TRANSFORM_EXECUTOR": "sagemaker",
                    "RADLOOP_TRIAGE_TRANSFORM_IMAGE_URI": Fn.join(":", [self.training_repo_uri,
                                                                        params.training_image_tag]),
                    "RADLOOP_TRIAGE_TRANSFORM_ROLE_ARN": pipeline_role.role_arn})
            else:  # no training image to serve with: the tasks re-score every pass themselves
                environment["RADLOOP_TRIAGE_TRANSFORM_MIN"] = "0"
        if service == "pipeline_orchestrator":
            environment.update({"RADLOOP_EXECUTOR": "sagemaker", "RADLOOP_PIPELINE_NAME": pipeline_name,
                                "RADLOOP_PIPELINE_ROLE_ARN": pipeline_role.role_arn})
        app = task.add_container(
            "app",
            image=ecs.ContainerImage.from_asset(
                str(REPO_ROOT), file="Dockerfile", build_args={"SERVICE": service},
                platform=ecr_assets.Platform.LINUX_AMD64,
            ),
            essential=True,
            environment=environment,
            secrets=secrets,
            logging=ecs.LogDrivers.aws_logs(stream_prefix="app", log_group=log_group),
            readonly_root_filesystem=True,
            user="10001",
            # SIGTERM starts the drain (drain_timeout_s); SIGKILL comes STOP_MARGIN_S after it
            stop_timeout=Duration.seconds(stop_timeout_s(service)),
            health_check=ecs.HealthCheck(
                command=["CMD", "python", "-c",
                         f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}{HEALTH_PATH}', "
                         "timeout=3)"],
                interval=Duration.seconds(30), timeout=Duration.seconds(5), retries=3,
                start_period=Duration.seconds(60),
            ),
            port_mappings=[ecs.PortMapping(container_port=port, name="http")]
            + ([ecs.PortMapping(container_port=DIMSE_PORT, name="dimse")] if need.dimse else [])
            + ([ecs.PortMapping(container_port=QR_PORT, name="qr")] if qr else []),
        )
        app.add_mount_points(ecs.MountPoint(container_path="/tmp", source_volume="tmp", read_only=False))
        task.add_container(
            "otel-collector",
            image=ecs.ContainerImage.from_registry(adot_image),
            essential=False,  # tracing never takes the service down
            # ADOT reads its whole configuration from AOT_CONFIG_CONTENT when the variable is set.
            environment={"AOT_CONFIG_CONTENT": collector_yaml},
            logging=ecs.LogDrivers.aws_logs(stream_prefix="otel", log_group=log_group),
            readonly_root_filesystem=True,
            user="10001",
            memory_reservation_mib=64,
        )
        # The execution role pulls the collector through the cache (first pull creates the cached repository).
        task.obtain_execution_role().add_to_principal_policy(iam.PolicyStatement(
            actions=["ecr:BatchImportUpstreamImage", "ecr:CreateRepository", "ecr:BatchGetImage",
                     "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[stack.format_arn(service="ecr", resource="repository",
                                        resource_name=f"{PULL_THROUGH_PREFIX}/*")],
        ))

        sg = ec2.SecurityGroup(self, f"{name}Sg", vpc=self.cluster.vpc, allow_all_outbound=False,
                               description=f"{service} tasks")
        sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(443), "HTTPS to VPC endpoints (no internet route)")
        worker = need.kind == "worker"
        spot = worker and env.spot_workers
        svc = ecs.FargateService(
            self, f"{name}Service", cluster=self.cluster, task_definition=task, service_name=service.replace("_", "-"),
            desired_count=env.min_tasks, security_groups=[sg], assign_public_ip=False,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED),
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            min_healthy_percent=100, max_healthy_percent=200,
            health_check_grace_period=None if worker else Duration.seconds(90),
            capacity_provider_strategies=[ecs.CapacityProviderStrategy(
                capacity_provider="FARGATE_SPOT" if spot else "FARGATE", weight=1)],
            enable_execute_command=False,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
        )
        self.services[service] = svc
        scaling = svc.auto_scale_task_count(min_capacity=env.min_tasks, max_capacity=env.max_tasks)
        scaling.scale_on_cpu_utilization("Cpu", target_utilization_percent=60,
                                         scale_in_cooldown=Duration.seconds(120),
                                         scale_out_cooldown=Duration.seconds(60))

        if not worker:
            tg = elbv2.ApplicationTargetGroup(
                self, f"{name}Tg", vpc=self.cluster.vpc, port=port, protocol=elbv2.ApplicationProtocol.HTTP,
                target_type=elbv2.TargetType.IP, deregistration_delay=Duration.seconds(60),
                health_check=elbv2.HealthCheck(path=HEALTH_PATH, healthy_http_codes="200", interval=Duration.seconds(15),
                                               healthy_threshold_count=2, unhealthy_threshold_count=3),
            )
            tg.add_target(svc.load_balancer_target(container_name="app", container_port=port))
            sg.add_ingress_rule(self.alb_sg, ec2.Port.tcp(port), "from the ALB")
            self.alb_sg.add_egress_rule(sg, ec2.Port.tcp(port), f"to {service}")
            self.target_groups[service] = tg
            self.scalings[service] = scaling
        else:
            self._scale_on_backlog(service, svc, scaling)

        if need.dimse:
            self._behind_nlb(self.dimse_listener, "Ingestion", svc, sg, DIMSE_PORT, "DIMSE", "ingestion DIMSE")
        if need.qr and self.qr_listener is not None:
            self._behind_nlb(self.qr_listener, "Interop", svc, sg, QR_PORT, "Q/R DIMSE", "interop Q/R")
            for ae, host, port, _tls in params.qr_move_destinations:  # C-MOVE opens an association to each
                peer = ec2.Peer.ipv6(f"{host}/128") if ":" in host else ec2.Peer.ipv4(f"{host}/32")
                sg.add_egress_rule(peer, ec2.Port.tcp(port), f"C-MOVE to {ae}")

    def _behind_nlb(self, listener: elbv2.NetworkListener, target_id: str, svc: ecs.FargateService,
                    sg: ec2.SecurityGroup, port: int, what: str, to: str) -> None:
        """Put the task's ``port`` behind an NLB TLS listener (plain TCP from the NLB to the task) and open exactly
        that path in both security groups."""
        listener.add_targets(
            target_id, port=port, protocol=elbv2.Protocol.TCP,
            targets=[svc.load_balancer_target(container_name="app", container_port=port)],
            health_check=elbv2.HealthCheck(protocol=elbv2.Protocol.TCP, interval=Duration.seconds(30)),
            deregistration_delay=Duration.seconds(60),
        )
        sg.add_ingress_rule(self.nlb_sg, ec2.Port.tcp(port), f"{what} from the NLB")
        self.nlb_sg.add_egress_rule(sg, ec2.Port.tcp(port), f"to {to}")

    def _scale_on_backlog(self, service: str, svc: ecs.FargateService, scaling: ecs.ScalableTaskCount) -> None:
        """Target tracking on backlog per task: visible messages / running tasks (metric math).

        CDK's L2 target tracking takes single metrics only, so the policy is the L1 resource on the same scalable
        target (Application Auto Scaling supports metric math in customized metric specifications).
        """
        queue = self.messaging.queues[service]
        target = scaling.node.find_child("Target")
        tt = appscaling.CfnScalingPolicy
        appscaling.CfnScalingPolicy(
            self, f"{_cid(service)}BacklogScaling",
            policy_name=f"{self.topology.prefix}-{service}-backlog-per-task",
            policy_type="TargetTrackingScaling",
            scaling_target_id=target.scalable_target_id,  # type: ignore[attr-defined]
            target_tracking_scaling_policy_configuration=tt.TargetTrackingScalingPolicyConfigurationProperty(
                target_value=BACKLOG_PER_TASK,
                scale_in_cooldown=300,
                scale_out_cooldown=60,
                customized_metric_specification=tt.CustomizedMetricSpecificationProperty(metrics=[
                    tt.TargetTrackingMetricDataQueryProperty(
                        id="visible", return_data=False,
                        metric_stat=tt.TargetTrackingMetricStatProperty(stat="Maximum", metric=tt.TargetTrackingMetricProperty(
                            namespace="AWS/SQS", metric_name="ApproximateNumberOfMessagesVisible",
                            dimensions=[tt.TargetTrackingMetricDimensionProperty(name="QueueName",
                                                                                 value=queue.queue_name)]))),
                    tt.TargetTrackingMetricDataQueryProperty(
                        id="running", return_data=False,
                        metric_stat=tt.TargetTrackingMetricStatProperty(stat="Average", metric=tt.TargetTrackingMetricProperty(
                            namespace="ECS/ContainerInsights", metric_name="RunningTaskCount",
                            dimensions=[
                                tt.TargetTrackingMetricDimensionProperty(name="ClusterName",
                                                                         value=self.cluster.cluster_name),
                                tt.TargetTrackingMetricDimensionProperty(name="ServiceName", value=svc.service_name),
                            ]))),
                    tt.TargetTrackingMetricDataQueryProperty(id="backlog", expression="visible / running",
                                                             label="messages per running task", return_data=True),
                ]),
            ),
        )

    def _statements(self, service: str, pipeline_role: iam.IRole, pipeline_name: str) -> list[iam.PolicyStatement]:
        """The task role's statements, rendered from NEEDS only."""
        stack = Stack.of(self)
        need = N.NEEDS[service]
        out: list[iam.PolicyStatement] = []
        data_key_actions: set[str] = set()
        base = set(need.s3)
        for s in N.s3_needs(service, self.image_store_name):
            bucket = self.data.buckets[s.bucket]
            # Statement ids stay unique when a HealthImaging need repeats a bucket and access level (ingestion writes
            # both quarantine/ and the import prefix of the ingestion bucket).
            tag = "" if s in base else "HealthImaging"
            out.append(iam.PolicyStatement(
                sid=f"S3{_cid(s.bucket)}{_cid(s.access)}{tag}",
                actions=list(N.S3_ACTIONS[s.access]),
                resources=[bucket.arn_for_objects(f"{p}*") for p in s.prefixes],
            ))
            if s.list:
                out.append(iam.PolicyStatement(
                    sid=f"S3{_cid(s.bucket)}List{_cid(s.access)}{tag}", actions=list(N.S3_LIST_ACTIONS),
                    resources=[bucket.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in s.prefixes]}},
                ))
            data_key_actions.add("kms:Decrypt")
            if s.access != "read":
                data_key_actions.add("kms:GenerateDataKey")
        tables = N.table_needs(service, self.image_store_name)
        for table_role, level in sorted(tables.items()):
            table = self.data.tables[table_role]
            out.append(iam.PolicyStatement(
                sid=f"Ddb{_cid(table_role)}{_cid(level)}", actions=list(N.DDB_ACTIONS[level]),
                resources=[table.table_arn, f"{table.table_arn}/index/*"],
            ))
        if tables:
            data_key_actions.update(("kms:Decrypt", "kms:GenerateDataKey"))
        if data_key_actions:
            out.append(iam.PolicyStatement(sid="DataKey", actions=sorted(data_key_actions),
                                           resources=[self.keys.data.key_arn]))
        if N.consumes(service):
            out.append(iam.PolicyStatement(sid="ConsumeQueue", actions=list(N.CONSUMER_ACTIONS),
                                           resources=[self.messaging.queues[service].queue_arn]))
            out.append(iam.PolicyStatement(sid="DeadLetterUnparseable", actions=list(N.DLQ_ACTIONS),
                                           resources=[self.messaging.dlqs[service].queue_arn]))
            out.append(iam.PolicyStatement(sid="MessagingKey", actions=["kms:Decrypt", "kms:GenerateDataKey"],
                                           resources=[self.keys.messaging.key_arn]))
        if need.publishes:
            out.append(iam.PolicyStatement(sid="PublishEvents", actions=list(N.PUBLISH_ACTIONS),
                                           resources=[self.messaging.bus.event_bus_arn]))
        group = self.topology.model_package_group
        for level in need.sagemaker:
            if level == "run_transform":
                t = self.topology
                resources = [stack.format_arn(service="sagemaker", resource="model",
                                              resource_name=f"{t.rescore_model_prefix.lower()}*"),
                             stack.format_arn(service="sagemaker", resource="transform-job",
                                              resource_name=f"{t.rescore_job_prefix.lower()}*")]
            elif level == "run_pipeline":
                resources = [stack.format_arn(service="sagemaker", resource="pipeline", resource_name=pipeline_name),
                             stack.format_arn(service="sagemaker", resource="pipeline",
                                              resource_name=f"{pipeline_name}/execution/*")]
            else:
                resources = [stack.format_arn(service="sagemaker", resource="model-package", resource_name=f"{group}/*"),
                             stack.format_arn(service="sagemaker", resource="model-package-group",
                                              resource_name=group)]
            out.append(iam.PolicyStatement(sid=f"SageMaker{_cid(level)}", actions=list(N.SAGEMAKER_ACTIONS[level]),
                                           resources=resources))
        if need.pass_pipeline_role:
            out.append(iam.PolicyStatement(
                sid="PassPipelineRole", actions=list(N.PASS_ROLE_ACTIONS), resources=[pipeline_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
            ))
        if need.metrics:
            # The metrics log group is created by MetricsDashboards (stack.py), by this name; the services wait for it.
            out.append(iam.PolicyStatement(
                sid="MetricsEmf", actions=list(N.METRICS_ACTIONS),
                resources=[stack.format_arn(service="logs", resource="log-group",
                                            resource_name=f"{metrics_log_group_name(self.topology.prefix)}:*",
                                            arn_format=ArnFormat.COLON_RESOURCE_NAME)]))
        if self.image_store is not None:
            out.extend(self.image_store.statements(service))
        out.append(iam.PolicyStatement(sid="Traces", actions=list(N.TELEMETRY_ACTIONS), resources=["*"]))
        return out
