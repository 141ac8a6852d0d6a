"""Audit trail (CloudTrail with data events on the PHI buckets and tables) and alarms to one encrypted SNS topic."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudtrail as cloudtrail
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from infra.radloop_infra.compute import Compute
from infra.radloop_infra.config import DeployParams
from infra.radloop_infra.data import Data
from infra.radloop_infra.healthimaging import HealthImagingStore
from infra.radloop_infra.messaging import Messaging
from infra.radloop_infra.ml import Ml
from infra.radloop_infra.security import Keys, retention
from shared import event_names as ev
from shared.topology import Topology

#: Alarm when more than this share of a service's requests fail with a 5xx, over 5 minutes.
FIVE_XX_RATE_PERCENT = 5

#: Tables (topology roles) that hold no PHI, so CloudTrail skips their data events: model versions, pipeline runs and
#: small state pointers (champion, degradation episodes). Every other table is treated as holding PHI, including one
#: added later, until it is listed here; shared.topology's TableSpec has no ``holds_phi`` flag (BucketSpec has).
NON_PHI_TABLES: frozenset[str] = frozenset({"models", "runs", "state"})


def _cid(name: str) -> str:
    return "".join(p.capitalize() for p in name.replace("_", "-").split("-"))


class Observability(Construct):
    def __init__(self, scope: Construct, cid: str, *, params: DeployParams, topology: Topology, keys: Keys,
                 data: Data, messaging: Messaging, compute: Compute, ml: Ml,
                 image_store: HealthImagingStore | None = None) -> None:
        super().__init__(scope, cid)
        env = params.env
        removal = RemovalPolicy.RETAIN if env.retain_data else RemovalPolicy.DESTROY

        # --- audit trail ----------------------------------------------------------------------------------------------
        self.trail_bucket = s3.Bucket(
            self, "TrailBucket", encryption=s3.BucketEncryption.KMS, encryption_key=keys.logs,
            bucket_key_enabled=True, block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
            versioned=True, object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=data.access_logs, server_access_logs_prefix="s3/trail/",
            removal_policy=removal,
            lifecycle_rules=[s3.LifecycleRule(
                id="trail-retention", expiration=Duration.days(max(env.log_retention_days, 365)),
                noncurrent_version_expiration=Duration.days(env.noncurrent_version_days),
                transitions=[s3.Transition(storage_class=s3.StorageClass.GLACIER_INSTANT_RETRIEVAL,
                                           transition_after=Duration.days(90))],
            )],
        )
        trail_logs = logs.LogGroup(self, "TrailLogs", encryption_key=keys.logs,
                                   retention=retention(env.log_retention_days), removal_policy=removal)
        self.trail = cloudtrail.Trail(
            self, "Trail", bucket=self.trail_bucket, encryption_key=keys.logs, enable_file_validation=True,
            send_to_cloud_watch_logs=True, cloud_watch_log_group=trail_logs, is_multi_region_trail=True,
            include_global_service_events=True,
        )
        # Who read or changed which PHI object or item: data events (reads and writes) of the PHI buckets and
        # tables. DynamoDB data events exist only as advanced event selectors, and a trail cannot mix basic and
        # advanced selectors, so management events are an advanced selector too.
        phi_buckets = [data.buckets[role] for role, spec in topology.buckets.items() if spec.holds_phi]
        phi_tables = [data.tables[role] for role in topology.tables if role not in NON_PHI_TABLES]
        field = cloudtrail.CfnTrail.AdvancedFieldSelectorProperty
        selector = cloudtrail.CfnTrail.AdvancedEventSelectorProperty
        trail_l1: cloudtrail.CfnTrail = self.trail.node.default_child  # type: ignore[assignment]
        selectors = [
            selector(name="Management events", field_selectors=[field(field="eventCategory", equal_to=["Management"])]),
            selector(name="PHI bucket objects", field_selectors=[
                field(field="eventCategory", equal_to=["Data"]),
                field(field="resources.type", equal_to=["AWS::S3::Object"]),
                field(field="resources.ARN", starts_with=[f"{b.bucket_arn}/" for b in phi_buckets]),
            ]),
            selector(name="PHI table items", field_selectors=[
                field(field="eventCategory", equal_to=["Data"]),
                field(field="resources.type", equal_to=["AWS::DynamoDB::Table"]),
                field(field="resources.ARN", equal_to=[t.table_arn for t in phi_tables]),
            ]),
        ]
        if image_store is not None:
            # With HealthImaging the images are read there (GetImageFrame, GetImageSetMetadata): its data events,
            # on the datastore and on its image sets (whose ARNs start with the datastore's), are PHI reads too.
            selectors += [
                selector(name=f"HealthImaging {kind}", field_selectors=[
                    field(field="eventCategory", equal_to=["Data"]),
                    field(field="resources.type", equal_to=[rtype]),
                    field(field="resources.ARN", starts_with=[image_store.datastore_arn]),
                ]) for kind, rtype in (("datastore", "AWS::MedicalImaging::Datastore"),
                                       ("image sets", "AWS::MedicalImaging::Imageset"))]
        trail_l1.advanced_event_selectors = selectors
        # The L2 renders basic EventSelectors of its own; CloudTrail refuses a trail with both kinds.
        trail_l1.add_property_deletion_override("EventSelectors")

        # --- alarms -------------------------------------------------------------------------------------------------
        self.topic = sns.Topic(self, "Alarms", topic_name=f"{topology.prefix}-alarms", master_key=keys.messaging,
                               enforce_ssl=True)
        if params.alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(params.alarm_email))
        action = cw_actions.SnsAction(self.topic)

        def alarm(id_: str, a: cw.Alarm) -> None:
            a.add_alarm_action(action)
            a.add_ok_action(action)

        dlqs = {**{f"{s}-dlq": q for s, q in messaging.dlqs.items()}, "events-dlq": messaging.rule_dlq}
        for name, q in dlqs.items():
            alarm(name, cw.Alarm(
                self, f"Dlq{_cid(name)}", alarm_name=f"{topology.prefix}-{name}-not-empty",
                alarm_description=f"Messages in {name}: a consumer failed {name.removesuffix('-dlq')} events",
                metric=q.metric_approximate_number_of_messages_visible(period=Duration.minutes(1),
                                                                       statistic="Maximum"),
                threshold=0, comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                evaluation_periods=1, treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))

        for service, tg in compute.target_groups.items():
            errors = tg.metrics.http_code_target(code=_target_5xx(), period=Duration.minutes(5), statistic="Sum")
            requests = tg.metrics.request_count(period=Duration.minutes(5), statistic="Sum")
            rate = cw.MathExpression(expression="100 * errors / IF(requests > 0, requests, 1)",
                                     using_metrics={"errors": errors, "requests": requests},
                                     period=Duration.minutes(5), label=f"{service} 5xx %")
            alarm(f"{service}-5xx", cw.Alarm(
                self, f"FiveXx{_cid(service)}", alarm_name=f"{topology.prefix}-{service}-5xx-rate",
                alarm_description=f"More than {FIVE_XX_RATE_PERCENT}% of {service} requests fail with 5xx",
                metric=rate, threshold=FIVE_XX_RATE_PERCENT, evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
            alarm(f"{service}-unhealthy", cw.Alarm(
                self, f"Unhealthy{_cid(service)}", alarm_name=f"{topology.prefix}-{service}-unhealthy-tasks",
                alarm_description=f"{service} has targets failing ALB health checks",
                metric=tg.metrics.unhealthy_host_count(period=Duration.minutes(1), statistic="Maximum"),
                threshold=0, evaluation_periods=3, comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
        for service, svc in compute.services.items():
            if service in compute.target_groups:
                continue
            running = cw.Metric(namespace="ECS/ContainerInsights", metric_name="RunningTaskCount",
                                dimensions_map={"ClusterName": compute.cluster.cluster_name,
                                                "ServiceName": svc.service_name},
                                period=Duration.minutes(1), statistic="Minimum")
            alarm(f"{service}-unhealthy", cw.Alarm(
                self, f"Unhealthy{_cid(service)}", alarm_name=f"{topology.prefix}-{service}-unhealthy-tasks",
                alarm_description=f"{service} runs fewer tasks than its minimum ({env.min_tasks})",
                metric=running, threshold=env.min_tasks, evaluation_periods=5,
                comparison_operator=cw.ComparisonOperator.LESS_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.BREACHING,
            ))

        # Event-shaped alarms: an EventBridge rule per condition sends the event to the topic, and a CloudWatch
        # alarm on the rule's TriggeredRules metric gives it alarm state and history.
        sm_failed = events.Rule(
            self, "PipelineFailed", rule_name=f"{topology.prefix}-pipeline-failed",
            description="SageMaker training pipeline executions that failed or stopped",
            event_pattern=events.EventPattern(
                source=["aws.sagemaker"],
                detail_type=["SageMaker Model Building Pipeline Execution Status Change"],
                detail={"currentPipelineExecutionStatus": ["Failed", "Stopped"],
                        "pipelineArn": [{"suffix": f"pipeline/{ml.pipeline_name}"}]},
            ),
            targets=[targets.SnsTopic(self.topic, dead_letter_queue=messaging.rule_dlq)],
        )
        def radloop_event_rule(id_: str, name: str, detail_type: str, description: str) -> events.Rule:
            """One of radloop's own events, delivered to the alarm topic as it happens."""
            return events.Rule(
                self, id_, rule_name=f"{topology.prefix}-{name}", description=description, event_bus=messaging.bus,
                event_pattern=events.EventPattern(source=events.Match.prefix("radloop."), detail_type=[detail_type]),
                targets=[targets.SnsTopic(self.topic, dead_letter_queue=messaging.rule_dlq)],
            )

        degraded = radloop_event_rule("ModelDegraded", "model-performance-degraded", ev.MODEL_PERFORMANCE_DEGRADED,
                                      "ModelPerformanceDegraded events published by radloop")
        # Drift goes to the topic as it happens (each event names the site key, modality, feature and PSI), with an
        # alarm like degradation's; the dashboard's PSI panel shows its course.
        drift = radloop_event_rule("ModelDrift", "model-drift", ev.DRIFT_DETECTED,
                                   "DriftDetected events published by radloop's triage (docs/triage.md)")
        for id_, rule in (("PipelineFailures", sm_failed), ("ModelPerformanceDegraded", degraded),
                          ("DriftDetected", drift)):
            alarm(id_, cw.Alarm(
                self, f"{id_}Alarm", alarm_name=f"{topology.prefix}-{rule.node.id}",
                alarm_description=f"{id_}: see the event delivered to the topic",
                metric=cw.Metric(namespace="AWS/Events", metric_name="TriggeredRules",
                                 dimensions_map={"RuleName": rule.rule_name}, period=Duration.minutes(5),
                                 statistic="Sum"),
                threshold=0, evaluation_periods=1, comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
        self.alert_rules = {"pipeline_failed": sm_failed, "model_degraded": degraded, "model_drift": drift}


def _target_5xx():  # noqa: ANN202 - a small indirection keeps the import local
    from aws_cdk.aws_elasticloadbalancingv2 import HttpCodeTarget

    return HttpCodeTarget.TARGET_5XX_COUNT
