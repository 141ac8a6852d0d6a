"""The one declarative description of radloop's AWS resources.

Everything that names a bus, a rule, a queue, a bucket, a table or the model package group reads it from here:
the local bootstrap (:mod:`shared.bootstrap`) creates it through aiobotocore against the embedded endpoint, and the
CDK app in ``infra/`` renders the same objects as CloudFormation. Names are derived from a deployment ``prefix`` so
that several deployments (or several test runs against one embedded endpoint) never collide.

Invariant: a consuming service owns exactly one queue (plus its DLQ), and every rule that targets that queue matches
on ``detail-type`` only, so the routing table below *is* the event flow of the product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from shared import event_names as ev

SERVICES: tuple[str, ...] = (
    "ingestion",
    "streaming_gateway",
    "triage",
    "verification",
    "pipeline_orchestrator",
    "registry",
    "interop",
)

#: Which event names each consuming service listens to (ARCHITECTURE.md, "Services").
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    # ImageVerified: an image read before any model was approved leaves triage's backlog (docs/triage.md)
    "triage": (ev.INSTANCE_STORED, ev.MODEL_APPROVED, ev.IMAGE_VERIFIED),
    "verification": (ev.INSTANCE_STORED, ev.INSTANCE_SCORED),
    # DriftDetected may trigger a run (trigger_on_drift, off by default: drift says "look", not "this is worse")
    "pipeline_orchestrator": (ev.IMAGE_VERIFIED, ev.MODEL_PERFORMANCE_DEGRADED, ev.DRIFT_DETECTED),
    "registry": (ev.TRAINING_COMPLETED,),
    # AI results and verified reads become DICOM objects; stored derived objects are forwarded (docs/interop.md)
    "interop": (ev.INSTANCE_SCORED, ev.IMAGE_VERIFIED, ev.INSTANCE_STORED),
}

#: The HTTP routes, ``(path prefix, methods or None for any, service)``, first match wins. The one declaration read by
#: both the local entry proxy (``radloop/local/proxy.py``) and the ALB listener rules of the CDK app
#: (``infra/radloop_infra/compute.py``, one rule per entry, in this order). Paths are never rewritten (an ALB cannot
#: rewrite them), so each service serves its routes under its own prefix.
ROUTES: tuple[tuple[str, frozenset[str] | None, str], ...] = (
    ("/dicomweb", frozenset({"POST"}), "ingestion"),  # STOW-RS
    ("/dicomweb", None, "streaming_gateway"),  # QIDO-RS, WADO-RS
    ("/viewer", None, "streaming_gateway"),
    ("/ohif", None, "streaming_gateway"),  # the OHIF viewer's build (docs/interop.md)
    ("/verification", None, "verification"),
    ("/registry", None, "registry"),
    ("/orchestrator", None, "pipeline_orchestrator"),
)


def route_for(path: str, method: str) -> str | None:
    """The service that serves ``method path`` by :data:`ROUTES` (first match wins), or None if none does."""
    for prefix, methods, service in ROUTES:
        if (path == prefix or path.startswith(prefix + "/")) and (methods is None or method in methods):
            return service
    return None


def routed_services() -> tuple[str, ...]:
    """The services that :data:`ROUTES` sends HTTP traffic to, in order of first appearance."""
    return tuple(dict.fromkeys(service for _prefix, _methods, service in ROUTES))


@dataclass(frozen=True)
class QueueSpec:
    """An SQS queue with its dead-letter queue."""

    name: str
    dlq_name: str
    visibility_timeout_s: int = 60
    #: Receives before SQS moves a message to the DLQ. With the backoff below, 9 receives ride out an outage of
    #: :meth:`outage_tolerance_s` (810 s) of DynamoDB, EventBridge or S3 before anything is dead-lettered.
    max_receive_count: int = 9
    #: A failed receive n comes back after ``min(retry_backoff_max_s, retry_backoff_s * 2**(n-1))`` seconds.
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: int = 300
    retention_s: int = 4 * 24 * 3600
    dlq_retention_s: int = 14 * 24 * 3600

    def retry_delay_s(self, receive_count: int) -> int:
        """How long a message whose ``receive_count``-th delivery failed stays invisible before the next one."""
        return int(min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** max(0, receive_count - 1)))

    def outage_tolerance_s(self) -> int:
        """How long a dependency can fail every delivery before the message is dead-lettered."""
        return sum(self.retry_delay_s(n) for n in range(1, self.max_receive_count + 1))


@dataclass(frozen=True)
class RuleSpec:
    """An EventBridge rule that routes events to one queue."""

    name: str
    event_pattern: dict[str, Any]
    target_queue: str
    #: The bus the rule lives on. S3 object-created notifications only reach the account's default bus.
    bus: str


@dataclass(frozen=True)
class KeySpec:
    name: str
    type: str = "S"  # S | N | B


@dataclass(frozen=True)
class IndexSpec:
    name: str
    partition_key: KeySpec
    sort_key: KeySpec | None = None


@dataclass(frozen=True)
class TableSpec:
    """A DynamoDB table (on-demand billing)."""

    name: str
    partition_key: KeySpec
    sort_key: KeySpec | None = None
    indexes: tuple[IndexSpec, ...] = ()
    ttl_attribute: str | None = None


@dataclass(frozen=True)
class BucketSpec:
    name: str
    #: Whether the bucket sends object-created events to EventBridge (the S3 drop folder).
    eventbridge_notifications: bool = False
    holds_phi: bool = True


@dataclass(frozen=True)
class Topology:
    prefix: str
    bus_name: str
    buckets: dict[str, BucketSpec]
    tables: dict[str, TableSpec]
    queues: dict[str, QueueSpec]
    rules: tuple[RuleSpec, ...]
    model_package_group: str
    sources: dict[str, str] = field(default_factory=dict)

    # -- convenience lookups -------------------------------------------------------------------------------------
    def queue_for(self, service: str) -> QueueSpec:
        """The queue a consuming service reads; KeyError names the services that have one."""
        try:
            return self.queues[service]
        except KeyError:
            raise KeyError(f"service {service!r} consumes no queue; consumers are {sorted(self.queues)}") from None

    def bucket(self, role: str) -> str:
        return self.buckets[role].name

    @property
    def rescore_job_prefix(self) -> str:
        """Triage's re-scoring batch transform jobs are named ``<this><version>-<id>`` (the CDK app scopes the task
        role's SageMaker actions by it). SageMaker names: letters, digits and hyphens, at most 63 characters."""
        return f"{_sagemaker_stem(self.prefix)}-rescore-v"

    @property
    def rescore_model_prefix(self) -> str:
        """The SageMaker models those jobs run: ``<this><version>-<artefact hash>``."""
        return f"{_sagemaker_stem(self.prefix)}-triage-v"

    def table(self, role: str) -> str:
        return self.tables[role].name

    def source(self, service: str) -> str:
        """The EventBridge ``source`` a service publishes with: ``radloop.<service>``."""
        return f"radloop.{service}"


#: Receives of the interop queue: 8 doubling delays (2 to 256 s) and then 300 s each ride out FORWARDING_OUTAGE_S.
INTEROP_MAX_RECEIVES = 33
#: How long a destination PACS may refuse or be unreachable before its results are dead-lettered (about 2 hours).
FORWARDING_OUTAGE_S = 7200


def _queue(prefix: str, service: str, **kw: Any) -> QueueSpec:
    base = f"{prefix}-{service.replace('_', '-')}"
    return QueueSpec(name=base, dlq_name=f"{base}-dlq", **kw)


@lru_cache(maxsize=64)
def build_topology(prefix: str = "radloop") -> Topology:
    """Return the topology for a deployment prefix (lower-case letters, digits and dashes)."""
    if not prefix or not all(c.isalnum() or c == "-" for c in prefix) or prefix != prefix.lower():
        raise ValueError(f"deployment prefix {prefix!r} must be lower-case letters, digits and dashes")
    bus = f"{prefix}-bus"
    queues = {
        # Ingestion's queue receives S3 drop-folder notifications; transcoding a CR can take several seconds.
        "ingestion": _queue(prefix, "ingestion", visibility_timeout_s=120),
        "triage": _queue(prefix, "triage", visibility_timeout_s=60),
        "verification": _queue(prefix, "verification", visibility_timeout_s=30),
        "pipeline_orchestrator": _queue(prefix, "pipeline-orchestrator", visibility_timeout_s=60),
        "registry": _queue(prefix, "registry", visibility_timeout_s=60),
        # Results and forwarding: a C-STORE to a slow PACS (30 s timeouts) must not outlive the visibility timeout.
        # A destination PACS down for maintenance is retried for FORWARDING_OUTAGE_S before a result is dead-lettered
        # (the default 9 receives gave up after 13.5 minutes: found by a review, session 22).
        "interop": _queue(prefix, "interop", visibility_timeout_s=120, max_receive_count=INTEROP_MAX_RECEIVES),
    }
    buckets = {
        "ingestion": BucketSpec(f"{prefix}-ingest", eventbridge_notifications=True),
        "images": BucketSpec(f"{prefix}-images"),
        "ml": BucketSpec(f"{prefix}-ml", holds_phi=False),
    }
    rules: list[RuleSpec] = []
    for service, names in SUBSCRIPTIONS.items():
        rules.append(
            RuleSpec(
                name=f"{prefix}-to-{service.replace('_', '-')}",
                event_pattern={"source": [{"prefix": "radloop."}], "detail-type": list(names)},
                target_queue=service,
                bus=bus,
            )
        )
    rules.append(
        RuleSpec(
            name=f"{prefix}-s3-imports",
            event_pattern={
                "source": ["aws.s3"],
                "detail-type": ["Object Created"],
                "detail": {
                    "bucket": {"name": [buckets["ingestion"].name]},
                    "object": {"key": [{"prefix": "imports/"}]},
                },
            },
            target_queue="ingestion",
            bus="default",
        )
    )
    N = "N"
    tables = {
        # Study/series/instance records for QIDO-RS and C-FIND (item layout and index keys: shared.instance_index).
        # Every index answers a query without walking the archive; by_level_shard spreads studies and series over
        # LEVEL_SHARDS partition keys (one key for every study was a hot partition, rewritten by every instance).
        "instances": TableSpec(
            f"{prefix}-instances",
            KeySpec("pk"),
            KeySpec("sk"),
            indexes=(
                IndexSpec("by_level_shard", KeySpec("level_pk"), KeySpec("level_sk")),
                IndexSpec("by_patient", KeySpec("patient_id"), KeySpec("level_sk")),
                IndexSpec("by_sop", KeySpec("sop_uid")),
                IndexSpec("by_accession", KeySpec("accession_key"), KeySpec("level_sk")),  # study items
                IndexSpec("by_modality", KeySpec("modality_key"), KeySpec("level_sk")),  # series items
            ),
        ),
        "idempotency": TableSpec(f"{prefix}-idempotency", KeySpec("id"), ttl_attribute="expiration"),
        "audit": TableSpec(f"{prefix}-audit", KeySpec("day"), KeySpec("ts_id")),
        # by_backlog is sparse: only the records of images waiting for a first model (triage's start reads it).
        # by_unread is sparse too: the scored images nobody has read yet, by arrival (a new champion re-scores them,
        # newest first).
        "scores": TableSpec(f"{prefix}-scores", KeySpec("sop_uid"),
                            indexes=(IndexSpec("by_backlog", KeySpec("backlog_pk"), KeySpec("scored_at")),
                                     IndexSpec("by_unread", KeySpec("unread_pk"), KeySpec("arrived_at")))),
        # Sparse indexes of the cases (services.verification.adapters.cases): by_outbox holds only cases with
        # unpublished events, by_outcome the scored and verified cases per model version (live performance reads a
        # window of it), by_pair the double-read final cases (reader agreement).
        "cases": TableSpec(
            f"{prefix}-cases",
            KeySpec("case_id"),
            indexes=(IndexSpec("by_status", KeySpec("status"), KeySpec("priority_sk")),
                     IndexSpec("by_outbox", KeySpec("outbox_pk"), KeySpec("outbox_since", N)),
                     IndexSpec("by_outcome", KeySpec("outcome_pk"), KeySpec("outcome_sk")),
                     IndexSpec("by_pair", KeySpec("pair_pk"), KeySpec("pair_sk"))),
        ),
        "labels": TableSpec(f"{prefix}-labels", KeySpec("case_id"), KeySpec("label_sk")),
        "runs": TableSpec(f"{prefix}-runs", KeySpec("run_id")),
        # The orchestrator's own projection of final labels (latest version per instance), for dataset snapshots.
        "training_labels": TableSpec(f"{prefix}-training-labels", KeySpec("sop_uid")),
        "models": TableSpec(f"{prefix}-models", KeySpec("version", N)),
        "state": TableSpec(f"{prefix}-state", KeySpec("key")),
        # Transactional outbox: events written in the same transaction as the state they announce, published after.
        # by_service answers a sweep (a service's items older than a cut-off) without reading the others.
        "outbox": TableSpec(f"{prefix}-outbox", KeySpec("id"),
                            indexes=(IndexSpec("by_service", KeySpec("service"), KeySpec("created_at", N)),)),
    }
    return Topology(
        prefix=prefix,
        bus_name=bus,
        buckets=buckets,
        tables=tables,
        queues=queues,
        rules=tuple(rules),
        model_package_group=f"{prefix}-pneumonia",
    )


def _sagemaker_stem(prefix: str) -> str:
    """The deployment prefix as the start of a SageMaker resource name (at most 30 of its 63 characters)."""
    return "".join(c if c.isalnum() else "-" for c in prefix)[:30].strip("-") or "radloop"
