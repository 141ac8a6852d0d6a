"""What each radloop service may do in AWS, declared as data; the task roles are rendered from it and nothing else.

A need names a topology role (``topology.bucket(role)``, ``topology.table(role)``) and an access level. The access
levels map to the exact IAM actions below, so a reviewer reads one table, and the tests check that each synthesized
task role allows exactly the actions its needs list (:func:`expected_actions`).

Why each need exists (the code that uses it):
- every consumer: receive/delete/extend on its queue, SendMessage on its own DLQ (``shared.consumer`` dead-letters
  unparseable messages with a reason), the idempotency table (``shared.idempotency``), PutEvents (``shared.publisher``);
- every service: PutItem on the append-only audit table (``shared.audit``);
- every service: its ADOT sidecar writes the service's metrics (``shared.metrics``) as CloudWatch EMF log events into
  the deployment's metrics log group (``dashboards.metrics_log_group_name``), :data:`METRICS_ACTIONS` on that group;
- with ``image_store=healthimaging`` only (:class:`HealthImagingNeed`, the adapter is shared/image_store/healthimaging.py):
  ingestion stages received instances under the import prefix, keeps its batches and jobs in the state table, starts
  and follows import jobs, reads their output manifests and indexes the image sets they create; the gateway and
  triage find an instance's image set and frame ids in the instance index and read frames and metadata, and the
  gateway serves the kept P10 object (the staged import object) for WADO-RS instance retrieval; interop reads that
  object to build results and answer C-GET/C-MOVE; the SageMaker pipeline role reads frames and metadata for the
  preprocess step (ml.py). Every HealthImaging grant names the one datastore, never ``*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.topology import SERVICES, SUBSCRIPTIONS

# -- access levels -> IAM actions ------------------------------------------------------------------------------------
S3_ACTIONS: dict[str, tuple[str, ...]] = {
    "read": ("s3:GetObject",),
    "write": ("s3:PutObject",),
    "read_write": ("s3:GetObject", "s3:PutObject"),
    "move": ("s3:GetObject", "s3:PutObject", "s3:DeleteObject"),
}
#: Listing is granted on the bucket ARN, restricted to the need's prefixes with an ``s3:prefix`` condition.
S3_LIST_ACTIONS: tuple[str, ...] = ("s3:ListBucket",)

DDB_ACTIONS: dict[str, tuple[str, ...]] = {
    "read": ("dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Scan"),
    # Audit records are written once and never changed: PutItem with attribute_not_exists only.
    "append": ("dynamodb:PutItem",),
    "read_write": (
        "dynamodb:GetItem", "dynamodb:BatchGetItem", "dynamodb:Query", "dynamodb:Scan",
        "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:ConditionCheckItem",
        "dynamodb:BatchWriteItem",
    ),
}

CONSUMER_ACTIONS: tuple[str, ...] = (
    "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl",
    "sqs:GetQueueAttributes",
)
DLQ_ACTIONS: tuple[str, ...] = ("sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes")
PUBLISH_ACTIONS: tuple[str, ...] = ("events:PutEvents",)

SAGEMAKER_ACTIONS: dict[str, tuple[str, ...]] = {
    # Start and follow executions of the training pipeline only.
    "run_pipeline": (
        "sagemaker:StartPipelineExecution", "sagemaker:DescribePipelineExecution",
        "sagemaker:ListPipelineExecutionSteps", "sagemaker:StopPipelineExecution",
    ),
    # Read and approve model packages of the one model package group.
    "manage_model_packages": (
        "sagemaker:DescribeModelPackage", "sagemaker:ListModelPackages", "sagemaker:UpdateModelPackage",
        "sagemaker:DescribeModelPackageGroup",
    ),
    "read_model_packages": ("sagemaker:DescribeModelPackage", "sagemaker:ListModelPackages"),
    # Re-score a large unread backlog with a new champion as one Batch Transform job (triage), on the models and jobs
    # named by the topology's rescore prefixes only.
    "run_transform": (
        "sagemaker:CreateModel", "sagemaker:CreateTransformJob", "sagemaker:DescribeTransformJob",
        "sagemaker:StopTransformJob", "sagemaker:AddTags",
    ),
}
#: Only the pipeline's execution role may be passed, and only to SageMaker.
PASS_ROLE_ACTIONS: tuple[str, ...] = ("iam:PassRole",)
#: The ADOT collector sidecar in every task sends traces to X-Ray. X-Ray has no resource-level permissions, so these
#: are the only actions granted on ``*``; they touch no data.
TELEMETRY_ACTIONS: tuple[str, ...] = (
    "xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets",
)

#: AWS HealthImaging, by access level (``image_store=healthimaging`` only). ``import``: ingestion starts and follows
#: DICOM import jobs and indexes each image set they create from its metadata; ``read``: the gateway (WADO-RS frames
#: and metadata) and triage (the frames it scores); ``originals``: interop, which reads only the kept P10 objects (its
#: S3 need), never HealthImaging itself. Granted on the datastore and its image sets only.
HEALTHIMAGING_ACTIONS: dict[str, tuple[str, ...]] = {
    "import": ("medical-imaging:StartDICOMImportJob", "medical-imaging:GetDICOMImportJob",
               "medical-imaging:GetImageSetMetadata"),
    "read": ("medical-imaging:GetImageFrame", "medical-imaging:GetImageSetMetadata"),
    "originals": (),
}
#: The datastore is encrypted with the data key; HealthImaging asks its callers for the key as for its own writes
#: (DescribeKey validates the key, Decrypt serves reads, GenerateDataKey writes). Granted on the data key only.
HEALTHIMAGING_KEY_ACTIONS: dict[str, tuple[str, ...]] = {
    "import": ("kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"),
    "read": ("kms:Decrypt", "kms:DescribeKey"),
    "originals": (),
}
#: Where ingestion stages instances for an import job (and keeps them: the staged object is the instance's original,
#: which WADO-RS returns) and where HealthImaging writes the job's output (its manifest and the SUCCESS/FAILURE lists),
#: in the ingestion bucket. Neither is under ``imports/``: the drop folder's S3 rule would take staged instances for
#: new uploads. The services' defaults are the same (shared/image_store/settings.py); the tasks are given both
#: explicitly (RADLOOP_HEALTHIMAGING_IMPORT_PREFIX, RADLOOP_HEALTHIMAGING_OUTPUT_PREFIX), so the grants and the code
#: cannot disagree.
HEALTHIMAGING_IMPORT_PREFIX = "healthimaging/import/"
HEALTHIMAGING_OUTPUT_PREFIX = "healthimaging/output/"

#: The sidecar's ``awsemf`` exporter (infra/radloop_infra/dashboards.py) creates one stream per task in the metrics log
#: group the stack creates, and puts EMF events into it; granted on that one log group, never on ``*``.
METRICS_ACTIONS: tuple[str, ...] = ("logs:CreateLogStream", "logs:PutLogEvents")


@dataclass(frozen=True)
class S3Need:
    bucket: str  # topology bucket role
    access: str  # key of S3_ACTIONS
    prefixes: tuple[str, ...]  # key prefixes (least privilege inside a bucket)
    list: bool = False


@dataclass(frozen=True)
class HealthImagingNeed:
    """What a service may do when images live in AWS HealthImaging (nothing of it exists otherwise)."""

    access: str  # key of HEALTHIMAGING_ACTIONS (and HEALTHIMAGING_KEY_ACTIONS)
    #: S3 needs that exist only with HealthImaging (the import and output prefixes).
    s3: tuple[S3Need, ...] = ()
    #: Tables (role -> key of DDB_ACTIONS) needed only with HealthImaging, on top of the service's own.
    tables: dict[str, str] = field(default_factory=dict)
    #: May pass the import role, to HealthImaging only (StartDICOMImportJob's DataAccessRoleArn).
    pass_import_role: bool = False


@dataclass(frozen=True)
class ServiceNeeds:
    """Everything one service's task role may do."""

    kind: str  # "http" (behind the ALB) or "worker" (queue consumer only)
    s3: tuple[S3Need, ...] = ()
    tables: dict[str, str] = field(default_factory=dict)  # table role -> key of DDB_ACTIONS
    publishes: bool = False
    sagemaker: tuple[str, ...] = ()  # keys of SAGEMAKER_ACTIONS
    pass_pipeline_role: bool = False
    dimse: bool = False
    #: Runs the DIMSE Query/Retrieve SCP, exposed through the NLB when the deployment sets ``qr_calling_aes``.
    qr: bool = False
    #: Writes its metrics to the metrics log group (CloudWatch EMF, :data:`METRICS_ACTIONS`); every service does.
    metrics: bool = True
    #: Its grants when ``image_store=healthimaging`` (None: it never touches the image store's backend).
    healthimaging: HealthImagingNeed | None = None


_AUDIT = {"audit": "append"}
_IDEM = {"idempotency": "read_write"}

NEEDS: dict[str, ServiceNeeds] = {
    "ingestion": ServiceNeeds(
        kind="http",
        dimse=True,
        s3=(
            # Drop-folder imports are read, then moved to imports-rejected/ or deleted once stored.
            S3Need("ingestion", "move", ("imports/", "imports-rejected/"), list=True),
            # Instances that must not be stored (burned-in annotation) are kept with their reason
            # (services/ingestion/adapters/objects.py, DropFolder.quarantine); written once, never read back.
            S3Need("ingestion", "write", ("quarantine/",)),
            S3Need("images", "read_write", ("dicom/", "frames/", "metadata/")),
        ),
        # The outbox is written in the same transaction as the instance record (services/ingestion/adapters/outbox.py).
        tables={"instances": "read_write", "outbox": "read_write", **_IDEM, **_AUDIT},
        publishes=True,
        healthimaging=HealthImagingNeed(
            "import",
            s3=(
                # Received instances are staged here, one folder per import batch, written once and kept.
                S3Need("ingestion", "write", (HEALTHIMAGING_IMPORT_PREFIX,)),
                # The job's output manifest and its SUCCESS/FAILURE lists (failed instances become InstanceRejected).
                S3Need("ingestion", "read", (HEALTHIMAGING_OUTPUT_PREFIX,), list=True),
            ),
            # Open batches and submitted jobs are records in the state table, so a restart resumes them.
            tables={"state": "read_write"},
            pass_import_role=True,
        ),
    ),
    "streaming_gateway": ServiceNeeds(
        kind="http",
        s3=(S3Need("images", "read", ("dicom/", "frames/", "metadata/", "heatmaps/")),),
        tables={"instances": "read", **_AUDIT},
        # WADO-RS instance retrieval returns the kept P10 object (the staged import object).
        healthimaging=HealthImagingNeed("read", s3=(S3Need("ingestion", "read", (HEALTHIMAGING_IMPORT_PREFIX,)),)),
    ),
    "triage": ServiceNeeds(
        kind="worker",
        s3=(
            S3Need("images", "read", ("frames/", "metadata/")),
            S3Need("images", "write", ("heatmaps/",)),
            # A re-scoring batch transform's manifest and results (services/triage/adapters/transform.py).
            S3Need("images", "read_write", ("transforms/",), list=True),
            S3Need("ml", "read", ("models/",), list=True),
        ),
        # The champion pointer is read from the state table (shared/champion.py, via adapters/model_store.py); the
        # record of who drives a champion's re-scoring transform job is written there.
        tables={"scores": "read_write", "state": "read_write", **_IDEM, **_AUDIT},
        publishes=True,
        # Large re-scoring passes run as SageMaker Batch Transform jobs, as the pipeline's role.
        sagemaker=("run_transform",),
        pass_pipeline_role=True,
        # An instance's image set and frame ids are in the instance index.
        healthimaging=HealthImagingNeed("read", tables={"instances": "read"}),
    ),
    "verification": ServiceNeeds(
        kind="http",
        s3=(S3Need("images", "read", ("metadata/", "heatmaps/")),),
        # Degradation episodes are recorded in the state table (services/verification/adapters/alarms.py).
        tables={"cases": "read_write", "labels": "read_write", "state": "read_write", **_IDEM, **_AUDIT},
        publishes=True,
    ),
    "pipeline_orchestrator": ServiceNeeds(
        kind="http",
        s3=(S3Need("ml", "read_write", ("datasets/", "locked-eval/", "models/", "pipelines/"), list=True),),
        tables={"runs": "read_write", "training_labels": "read_write", "state": "read_write", **_IDEM, **_AUDIT},
        publishes=True,
        sagemaker=("run_pipeline", "read_model_packages"),
        pass_pipeline_role=True,
    ),
    "registry": ServiceNeeds(
        kind="http",
        s3=(
            # Model cards are written next to the model (models/{run}/registry/v{n}/); evaluation outputs are read
            # from the pipeline's run folder (pipelines/{execution}/evaluation/).
            S3Need("ml", "read_write", ("models/",)),
            S3Need("ml", "read", ("pipelines/", "datasets/"), list=True),
        ),
        tables={"models": "read_write", "state": "read_write", **_IDEM, **_AUDIT},
        publishes=True,
        sagemaker=("manage_model_packages",),
    ),
    "interop": ServiceNeeds(
        # Not behind the ALB: its HTTP port answers health checks and operators' /interop/status only. The Q/R SCP
        # runs when the deployment sets qr_calling_aes: the NLB's second DICOM TLS listener forwards to it
        # (compute.py; docs/interop.md). It answers from the instances index and reads originals (dicom/).
        kind="worker",
        qr=True,
        s3=(
            # The source's header (original) and triage's heatmap, to build the results from.
            S3Need("images", "read", ("dicom/", "heatmaps/")),
            # Derived objects enter the archive through ingestion's drop folder, under their own prefix only
            # (shared.storage.INTEROP_DROP_PREFIX; services/interop/adapters/archive.py).
            S3Need("ingestion", "write", ("imports/interop/",)),
        ),
        # Which destination received which result is remembered in the state table (services/interop/adapters).
        tables={"instances": "read", "state": "read_write", **_IDEM, **_AUDIT},
        # Results and C-GET/C-MOVE read an instance's original through the image store: with HealthImaging, the kept
        # import object (shared/image_store/healthimaging.py, read_original).
        healthimaging=HealthImagingNeed("originals", s3=(S3Need("ingestion", "read", (HEALTHIMAGING_IMPORT_PREFIX,)),)),
    ),
}


def consumes(service: str) -> bool:
    """Whether a service reads a queue (it does exactly when the topology subscribes it to events)."""
    return service in SUBSCRIPTIONS


def healthimaging_need(service: str, image_store: str) -> HealthImagingNeed | None:
    """The service's HealthImaging grants in a deployment with ``image_store`` (None with radloop's own store)."""
    return NEEDS[service].healthimaging if image_store == "healthimaging" else None


def s3_needs(service: str, image_store: str = "radloop") -> tuple[S3Need, ...]:
    """The service's S3 needs in a deployment with ``image_store``."""
    hi = healthimaging_need(service, image_store)
    return NEEDS[service].s3 + (hi.s3 if hi else ())


def table_needs(service: str, image_store: str = "radloop") -> dict[str, str]:
    """The service's tables (role -> access level) in a deployment with ``image_store``."""
    hi = healthimaging_need(service, image_store)
    out = dict(NEEDS[service].tables)
    for role, level in (hi.tables if hi else {}).items():
        have = out.get(role)
        if have is None or set(DDB_ACTIONS[have]) <= set(DDB_ACTIONS[level]):
            out[role] = level  # the wider level covers the narrower one
        elif not set(DDB_ACTIONS[level]) <= set(DDB_ACTIONS[have]):
            raise ValueError(f"{service}: HealthImaging needs {level!r} on the {role} table, which the service has as "
                             f"{have!r}; neither level contains the other")
    return out


def expected_actions(service: str, image_store: str = "radloop") -> set[str]:
    """Every IAM action the service's task role must allow, and the only ones it may allow, in a deployment with
    ``image_store``."""
    n = NEEDS[service]
    out: set[str] = set(TELEMETRY_ACTIONS)
    for s in s3_needs(service, image_store):
        out.update(S3_ACTIONS[s.access])
        if s.list:
            out.update(S3_LIST_ACTIONS)
        # Objects are encrypted with the data key: reading needs Decrypt, writing GenerateDataKey (and Decrypt for
        # multipart uploads).
        out.add("kms:Decrypt")
        if s.access != "read":
            out.add("kms:GenerateDataKey")
    tables = table_needs(service, image_store)
    for level in tables.values():
        out.update(DDB_ACTIONS[level])
    if tables:
        out.update(("kms:Decrypt", "kms:GenerateDataKey"))
    if consumes(service):
        out.update(CONSUMER_ACTIONS)
        out.update(DLQ_ACTIONS)
        out.update(("kms:Decrypt", "kms:GenerateDataKey"))
    if n.publishes:
        out.update(PUBLISH_ACTIONS)
    for level in n.sagemaker:
        out.update(SAGEMAKER_ACTIONS[level])
    if n.pass_pipeline_role:
        out.update(PASS_ROLE_ACTIONS)
    if n.metrics:
        out.update(METRICS_ACTIONS)
    hi = healthimaging_need(service, image_store)
    if hi:
        out.update(HEALTHIMAGING_ACTIONS[hi.access])
        out.update(HEALTHIMAGING_KEY_ACTIONS[hi.access])
        if hi.pass_import_role:
            out.update(PASS_ROLE_ACTIONS)
    return out


def check_complete() -> None:
    """Every service of the topology has needs, and nothing else does."""
    if set(NEEDS) != set(SERVICES):
        raise ValueError(f"infra needs cover {sorted(NEEDS)} but the topology's services are {sorted(SERVICES)}")
