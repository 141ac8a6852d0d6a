"""AWS HealthImaging as radloop's image store, created only with the deploy parameter ``image_store=healthimaging``.

What it adds (docs/architecture.md, "Build or buy"):
- the datastore (``AWS::HealthImaging::Datastore``), encrypted with the data key, the platform's key for PHI at rest;
- the import role HealthImaging assumes to run ingestion's DICOM import jobs. It is trusted by
  ``medical-imaging.amazonaws.com`` for this account and this datastore only, and may read the import prefix, write
  the output prefix (both in the ingestion bucket) and use the data key;
- the rule that sends the datastore's terminal import-job events (``source`` ``aws.medical-imaging``) to ingestion's
  queue: :func:`import_job_rule`, rendered by :class:`~infra.radloop_infra.messaging.Messaging` like a topology rule,
  so the queue policy and the rule DLQ cover it.

The task roles' grants are declared in needs.py (``ServiceNeeds.healthimaging``) and rendered by compute.py, which also
hands the services their settings (:func:`task_environment`). Nothing here has run against a live AWS account: the
template is checked by the tests (assertions, cfn-lint, checkov, cdk-nag), not by a deployment.
"""

from __future__ import annotations

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_healthimaging as healthimaging
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.radloop_infra import needs as N
from infra.radloop_infra.config import DeployParams
from infra.radloop_infra.data import Data
from infra.radloop_infra.security import Keys
from shared.topology import RuleSpec, Topology

#: HealthImaging's EventBridge ``source``; its events reach the account's default bus.
EVENT_SOURCE = "aws.medical-imaging"
#: The import-job states that end a job (HealthImaging also emits "Import Job Submitted" and "Import Job In Progress",
#: which ingestion has no use for). Ingestion indexes a completed job's image sets and rejects its failed instances;
#: a failed job rejects the batch. Polling GetDICOMImportJob is the fallback when an event is late or lost.
IMPORT_JOB_DETAIL_TYPES: tuple[str, ...] = ("Import Job Completed", "Import Job Failed")
#: The queue that receives those events: ingestion's, which already holds the S3 drop-folder notifications.
IMPORT_EVENTS_QUEUE = "ingestion"
#: The settings the services read (shared/settings.py); the names are the contract with the services' adapter.
SETTING_IMAGE_STORE = "RADLOOP_IMAGE_STORE"
SETTING_DATASTORE_ID = "RADLOOP_HEALTHIMAGING_DATASTORE_ID"
SETTING_IMPORT_ROLE_ARN = "RADLOOP_HEALTHIMAGING_IMPORT_ROLE_ARN"
SETTING_IMPORT_PREFIX = "RADLOOP_HEALTHIMAGING_IMPORT_PREFIX"
SETTING_OUTPUT_PREFIX = "RADLOOP_HEALTHIMAGING_OUTPUT_PREFIX"
#: The import role's trust: HealthImaging, acting for this account's datastore only (the confused-deputy guard).
SERVICE_PRINCIPAL = "medical-imaging.amazonaws.com"


def import_job_rule(prefix: str, datastore_id: str) -> RuleSpec:
    """The rule that routes the datastore's terminal import-job events to ingestion's queue.

    ``datastore_id`` may be a CloudFormation token: the pattern then matches this stack's datastore only, so another
    datastore's jobs in the same account never reach ingestion.
    """
    return RuleSpec(
        name=f"{prefix}-healthimaging-import-jobs",
        event_pattern={
            "source": [EVENT_SOURCE],
            "detail-type": list(IMPORT_JOB_DETAIL_TYPES),
            "detail": {"datastoreId": [datastore_id]},
        },
        target_queue=IMPORT_EVENTS_QUEUE,
        bus="default",
    )


class HealthImagingStore(Construct):
    """The datastore, its import role and the import-job rule (``self.rules``, rendered by Messaging)."""

    def __init__(self, scope: Construct, cid: str, *, params: DeployParams, topology: Topology, keys: Keys,
                 data: Data) -> None:
        super().__init__(scope, cid)
        stack = Stack.of(self)
        self.keys = keys
        self.datastore = healthimaging.CfnDatastore(
            self, "Datastore",
            datastore_name=f"{params.prefix}-images",
            kms_key_arn=keys.data.key_arn,
            tags={"project": "radloop", "environment": params.env.name, "data-classification": "phi"},
        )
        # Deleting the datastore deletes the images: prod keeps it with the stack's other data (retain_data).
        self.datastore.apply_removal_policy(RemovalPolicy.RETAIN if params.env.retain_data else RemovalPolicy.DESTROY)
        self.datastore_id = self.datastore.attr_datastore_id
        self.datastore_arn = self.datastore.attr_datastore_arn
        #: Image sets live under the datastore's ARN (``datastore/{id}/imageset/{id}``).
        self.image_set_arns = stack.format_arn(
            service="medical-imaging", resource="datastore", resource_name=f"{self.datastore_id}/imageset/*",
            arn_format=ArnFormat.SLASH_RESOURCE_NAME)

        bucket = data.buckets["ingestion"]
        self.import_prefix = N.HEALTHIMAGING_IMPORT_PREFIX
        self.output_prefix = N.HEALTHIMAGING_OUTPUT_PREFIX
        self.import_role = iam.Role(
            self, "ImportRole",
            assumed_by=iam.ServicePrincipal(SERVICE_PRINCIPAL, conditions={
                "StringEquals": {"aws:SourceAccount": stack.account},
                "ArnEquals": {"aws:SourceArn": self.datastore_arn},
            }),
            description=f"{params.prefix}: HealthImaging DICOM import jobs (read {self.import_prefix}, write "
                        f"{self.output_prefix})",
        )
        # A managed policy, like the task roles' (cdk-nag's HIPAA pack refuses inline policies on application roles).
        self.import_role.add_managed_policy(iam.ManagedPolicy(
            self, "ImportPolicy", managed_policy_name=f"{params.prefix}-healthimaging-import",
            description="HealthImaging import jobs: staged instances in, job output out, the data key",
            statements=[
                iam.PolicyStatement(sid="ReadStagedInstances", actions=["s3:GetObject"],
                                    resources=[bucket.arn_for_objects(f"{self.import_prefix}*")]),
                iam.PolicyStatement(sid="WriteJobOutput", actions=["s3:PutObject"],
                                    resources=[bucket.arn_for_objects(f"{self.output_prefix}*")]),
                iam.PolicyStatement(
                    sid="ListImportAndOutputPrefixes", actions=["s3:ListBucket"], resources=[bucket.bucket_arn],
                    conditions={"StringLike": {"s3:prefix": [f"{self.import_prefix}*", f"{self.output_prefix}*"]}}),
                # The bucket and the datastore are both encrypted with the data key.
                iam.PolicyStatement(sid="DataKey", actions=["kms:Decrypt", "kms:GenerateDataKey"],
                                    resources=[keys.data.key_arn]),
            ],
        ))
        self.rules: tuple[RuleSpec, ...] = (import_job_rule(topology.prefix, self.datastore_id),)

    # -- what compute.py renders from needs.py -----------------------------------------------------------------------
    def statements(self, service: str) -> list[iam.PolicyStatement]:
        """The service's HealthImaging statements (its S3 needs are rendered with its other S3 needs)."""
        hi = N.healthimaging_need(service, "healthimaging")
        if hi is None:
            return []
        access = hi.access.capitalize()
        out = []
        if N.HEALTHIMAGING_ACTIONS[hi.access]:  # ``originals``: S3 objects only, no HealthImaging call
            out += [
                iam.PolicyStatement(sid=f"HealthImaging{access}", actions=list(N.HEALTHIMAGING_ACTIONS[hi.access]),
                                    resources=[self.datastore_arn, self.image_set_arns]),
                iam.PolicyStatement(sid=f"HealthImagingKey{access}",
                                    actions=list(N.HEALTHIMAGING_KEY_ACTIONS[hi.access]),
                                    resources=[self.keys.data.key_arn]),
            ]
        if hi.pass_import_role:
            out.append(iam.PolicyStatement(
                sid="PassHealthImagingImportRole", actions=list(N.PASS_ROLE_ACTIONS),
                resources=[self.import_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": SERVICE_PRINCIPAL}},
            ))
        return out

    def task_environment(self, service: str) -> dict[str, str]:
        """The settings a service's task gets (none for a service that never touches images).

        The store's settings (shared/image_store/settings.py) want the datastore and the import role whenever
        ``image_store=healthimaging``, so every service that uses the store gets both; only ingestion can pass the
        role (needs.py). The prefixes are the ones the grants name, so code and policy cannot drift apart.
        """
        hi = N.healthimaging_need(service, "healthimaging")
        if hi is None:
            return {}
        return {
            SETTING_IMAGE_STORE: "healthimaging",
            SETTING_DATASTORE_ID: self.datastore_id,
            SETTING_IMPORT_ROLE_ARN: self.import_role.role_arn,
            SETTING_IMPORT_PREFIX: self.import_prefix,
            SETTING_OUTPUT_PREFIX: self.output_prefix,
        }
