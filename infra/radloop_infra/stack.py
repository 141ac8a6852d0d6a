"""The radloop stack: one per environment (``RadloopDev``, ``RadloopProd``)."""

from __future__ import annotations

from aws_cdk import CfnOutput, Environment, RemovalPolicy, Stack, Tags
from constructs import Construct

from infra.radloop_infra.compute import Compute
from infra.radloop_infra.config import DeployParams
from infra.radloop_infra.dashboards import MetricsDashboards
from infra.radloop_infra.data import Data
from infra.radloop_infra.healthimaging import HealthImagingStore
from infra.radloop_infra.messaging import Messaging
from infra.radloop_infra.ml import TRAINING_DOCKERFILE, Ml
from infra.radloop_infra.observability import Observability
from infra.radloop_infra.security import Keys, Network
from infra.radloop_infra.suppressions import apply_suppressions
from shared.topology import build_topology


class RadloopStack(Stack):
    """Every radloop resource of one environment, rendered from ``shared.topology.build_topology(prefix)``."""

    def __init__(self, scope: Construct, cid: str, *, params: DeployParams) -> None:
        super().__init__(scope, cid, env=Environment(account=params.account, region=params.region),
                         description=f"radloop {params.env.name}: triage platform (prefix {params.prefix})",
                         termination_protection=params.env.retain_data)
        self.params = params
        self.topology = build_topology(params.prefix)
        Tags.of(self).add("project", "radloop")
        Tags.of(self).add("environment", params.env.name)
        Tags.of(self).add("data-classification", "phi")

        self.keys = Keys(self, "Keys", params=params)
        self.network = Network(self, "Network", params=params, keys=self.keys)
        self.data = Data(self, "Data", params=params, topology=self.topology, keys=self.keys)
        # AWS HealthImaging only when the deployment chose it (-c image_store=healthimaging); otherwise nothing of it
        # is synthesized and the template is the one radloop's own store always had.
        self.image_store = (HealthImagingStore(self, "HealthImaging", params=params, topology=self.topology,
                                               keys=self.keys, data=self.data)
                            if params.healthimaging else None)
        self.messaging = Messaging(self, "Messaging", params=params, topology=self.topology, keys=self.keys,
                                   extra_rules=self.image_store.rules if self.image_store else ())
        self.ml = Ml(self, "Ml", params=params, topology=self.topology, keys=self.keys, data=self.data,
                     network=self.network, image_store=self.image_store)
        self.compute = Compute(self, "Compute", params=params, topology=self.topology, keys=self.keys,
                               network=self.network, data=self.data, messaging=self.messaging,
                               pipeline_role=self.ml.role, pipeline_name=self.ml.pipeline_name,
                               image_store=self.image_store, training_repo_uri=self.ml.training_repo.repository_uri)
        self.observability = Observability(self, "Observability", params=params, topology=self.topology,
                                           keys=self.keys, data=self.data, messaging=self.messaging,
                                           compute=self.compute, ml=self.ml, image_store=self.image_store)
        # The CloudWatch mirror of the Grafana dashboards and Prometheus alerts; the ADOT sidecars write EMF into its
        # log group (compute.py's collector config and the declared ``metrics`` need), so the services wait for it.
        self.dashboards = MetricsDashboards(
            self, "Dashboards", prefix=params.prefix, queues=self.messaging.queues, dlqs=self.messaging.dlqs,
            services=list(self.compute.services), topic=self.observability.topic, logs_key=self.keys.logs,
            retention_days=params.env.log_retention_days,
            removal=RemovalPolicy.RETAIN if params.env.retain_data else RemovalPolicy.DESTROY)
        for svc in self.compute.services.values():
            svc.node.add_dependency(self.dashboards.log_group)

        CfnOutput(self, "AlbDnsName", value=self.compute.alb.load_balancer_dns_name,
                  description="DICOMweb base: https://<this>/dicomweb (internal; reach it over VPN/Direct Connect)")
        CfnOutput(self, "DimseDnsName", value=self.compute.nlb.load_balancer_dns_name,
                  description="C-STORE SCP host (port 11112)")
        CfnOutput(self, "TrainingRepositoryUri", value=self.ml.training_repo.repository_uri,
                  description=f"push the image built from {TRAINING_DOCKERFILE} here")
        CfnOutput(self, "PipelineRoleArn", value=self.ml.role.role_arn)
        CfnOutput(self, "PipelineName", value=self.ml.pipeline_name)
        # What `python -m training.pipeline upsert` needs (docs/deploy.md): jobs in the VPC, volumes on the data key.
        CfnOutput(self, "Prefix", value=params.prefix)
        CfnOutput(self, "DataKeyArn", value=self.keys.data.key_arn)
        CfnOutput(self, "JobSubnetIds", value=",".join(s.subnet_id for s in self.network.vpc.isolated_subnets))
        CfnOutput(self, "JobSecurityGroupId", value=self.ml.jobs_sg.security_group_id)
        CfnOutput(self, "AlarmTopicArn", value=self.observability.topic.topic_arn)
        if self.image_store is not None:
            CfnOutput(self, "HealthImagingDatastoreId", value=self.image_store.datastore_id,
                      description="the image store (AWS HealthImaging); RADLOOP_HEALTHIMAGING_DATASTORE_ID")
            CfnOutput(self, "HealthImagingImportRoleArn", value=self.image_store.import_role.role_arn,
                      description="the role HealthImaging assumes for ingestion's import jobs")
        CfnOutput(self, "OperationsDashboard", value=self.dashboards.dashboard.dashboard_name,
                  description="the CloudWatch dashboard mirroring the Grafana ones (docs/operations.md)")

        apply_suppressions(self, params.env.name)
