"""S3 buckets and DynamoDB tables rendered from the topology, plus the access-log bucket and daily backups."""

from __future__ import annotations

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_backup as backup
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_events as events
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.radloop_infra.config import DeployParams, imports_expire_days
from infra.radloop_infra.needs import HEALTHIMAGING_OUTPUT_PREFIX
from infra.radloop_infra.security import Keys
from shared.storage import IMPORTS_PREFIX, IMPORTS_REJECTED_PREFIX
from shared.topology import KeySpec, Topology

_ATTR = {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER, "B": dynamodb.AttributeType.BINARY}

#: The S3 prefix of HTJ2K frames (``shared.storage.frame_key``), moved to Intelligent-Tiering by lifecycle.
FRAMES_PREFIX = "frames/"


def _attr(k: KeySpec) -> dynamodb.Attribute:
    return dynamodb.Attribute(name=k.name, type=_ATTR[k.type])


class Data(Construct):
    """The topology's buckets and tables. ``self.buckets[role]`` and ``self.tables[role]`` use topology roles."""

    def __init__(self, scope: Construct, cid: str, *, params: DeployParams, topology: Topology, keys: Keys) -> None:
        super().__init__(scope, cid)
        env = params.env
        removal = RemovalPolicy.RETAIN if env.retain_data else RemovalPolicy.DESTROY

        # Server access logs and ALB/NLB access logs: both AWS log deliveries only support SSE-S3 on the target bucket,
        # so this one bucket is SSE-S3 (justified in docs/security.md). The logs hold request lines, whose URLs can
        # carry query strings (QIDO matching keys such as PatientName), so the bucket is treated as holding PHI:
        # encrypted, SSL-only, no public access, written only by the log delivery services, kept for the log
        # retention. No API takes a credential in its URL, so the logs never hold a replayable token.
        self.access_logs = s3.Bucket(
            self, "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            removal_policy=removal,
            lifecycle_rules=[s3.LifecycleRule(
                id="expire-access-logs",
                expiration=Duration.days(max(env.log_retention_days, 30)),
                noncurrent_version_expiration=Duration.days(env.noncurrent_version_days),
                abort_incomplete_multipart_upload_after=Duration.days(1),
            )],
        )

        # A drop-folder object must outlive the DLQ that may still hold its notification (a redrive finds the file).
        imports_days = imports_expire_days(topology)
        self.buckets: dict[str, s3.Bucket] = {}
        for role, spec in topology.buckets.items():
            rules = [s3.LifecycleRule(
                id="noncurrent-versions",
                noncurrent_version_expiration=Duration.days(env.noncurrent_version_days),
                abort_incomplete_multipart_upload_after=Duration.days(1),
            )]
            if spec.eventbridge_notifications:
                # The drop folder: ingestion deletes what it stored; leftovers (a message still in a DLQ, waiting for
                # a redrive) expire only after that DLQ has dropped the message. Rejected imports stay a month.
                rules.append(s3.LifecycleRule(id="expire-imports", prefix=IMPORTS_PREFIX,
                                              expiration=Duration.days(imports_days)))
                rules.append(s3.LifecycleRule(id="expire-rejected-imports", prefix=IMPORTS_REJECTED_PREFIX,
                                              expiration=Duration.days(max(imports_days, 30))))
                if params.healthimaging:
                    # Import-job output (manifests, failure lists) is read once, when ingestion indexes the job; it
                    # stays a month, like rejected imports, as the record of what was refused and why. The staged
                    # instances under the import prefix never expire: they are the originals WADO-RS returns.
                    rules.append(s3.LifecycleRule(id="expire-healthimaging-output", prefix=HEALTHIMAGING_OUTPUT_PREFIX,
                                                  expiration=Duration.days(max(imports_days, 30))))
            if role == "images":
                rules.append(s3.LifecycleRule(
                    id="frames-intelligent-tiering", prefix=FRAMES_PREFIX,
                    transitions=[s3.Transition(storage_class=s3.StorageClass.INTELLIGENT_TIERING,
                                               transition_after=Duration.days(env.frames_tiering_days))],
                ))
            self.buckets[role] = s3.Bucket(
                self, f"Bucket{role.capitalize()}",
                bucket_name=spec.name,
                encryption=s3.BucketEncryption.KMS,
                encryption_key=keys.data,
                bucket_key_enabled=True,
                block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
                enforce_ssl=True,
                versioned=True,
                object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
                server_access_logs_bucket=self.access_logs,
                server_access_logs_prefix=f"s3/{spec.name}/",
                event_bridge_enabled=spec.eventbridge_notifications,
                lifecycle_rules=rules,
                removal_policy=removal,
            )

        self.tables: dict[str, dynamodb.Table] = {}
        for role, t in topology.tables.items():
            table = dynamodb.Table(
                self, f"Table{''.join(p.capitalize() for p in role.split('_'))}",
                table_name=t.name,
                partition_key=_attr(t.partition_key),
                sort_key=_attr(t.sort_key) if t.sort_key else None,
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                encryption=dynamodb.TableEncryption.CUSTOMER_MANAGED,
                encryption_key=keys.data,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True),
                time_to_live_attribute=t.ttl_attribute,
                deletion_protection=env.retain_data,
                removal_policy=removal,
            )
            for idx in t.indexes:
                table.add_global_secondary_index(
                    index_name=idx.name,
                    partition_key=_attr(idx.partition_key),
                    sort_key=_attr(idx.sort_key) if idx.sort_key else None,
                    projection_type=dynamodb.ProjectionType.ALL,
                )
            self.tables[role] = table

        # Daily backups of every table into a KMS-encrypted vault (on top of PITR's 35-day window).
        vault = backup.BackupVault(self, "Vault", encryption_key=keys.data, removal_policy=removal)
        plan = backup.BackupPlan(self, "BackupPlan", backup_vault=vault)
        plan.add_rule(backup.BackupPlanRule(
            rule_name="daily",
            schedule_expression=events.Schedule.cron(hour="3", minute="0"),
            delete_after=Duration.days(env.backup_retention_days),
        ))
        plan.add_selection("Tables", resources=[backup.BackupResource.from_dynamo_db_table(t)
                                                for t in self.tables.values()])
