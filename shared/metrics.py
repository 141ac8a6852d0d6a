"""Metrics: the one catalogue of radloop's instruments, their set-up, and the guard that keeps PHI out of labels.

Every metric a service records is declared once in :data:`CATALOGUE` (name, kind, unit, meaning, label names). The
dashboards (infra/grafana, infra/radloop_infra/dashboards.py), docs/operations.md and the tests read the same
catalogue, so a panel cannot query a metric no service exports.

Export (set up once per process by :func:`setup_metrics`, which :func:`shared.telemetry.setup_telemetry` calls):

- always a Prometheus scrape endpoint: ``GET /metrics`` on every service (``build_app`` serves
  :func:`prometheus_text`);
- with ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, OTLP/HTTP push to the collector as well (compose: collector ->
  Prometheus; AWS: the ADOT sidecar -> CloudWatch EMF). ``OTEL_METRICS_EXPORTER=none`` turns the push off.

No PHI and no high-cardinality identifiers in labels (invariant): a label name must be in :data:`ALLOWED_LABELS` (checked
when the catalogue is built and again on every record), and a label value that looks like a DICOM UID, a person name
(``^``), a date, or is longer than :data:`MAX_LABEL_VALUE_LEN` is replaced by ``"_invalid"`` before it reaches the SDK.
A ``queue``, ``site`` or ``modality`` value is instead checked against its known shape (an SQS queue name's deployment
prefix may hold digits; a site key is a hash).
A label name an instrument did not declare raises :class:`MetricLabelError` (a programming error; tests catch it).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry import metrics as otel_metrics

log = logging.getLogger(__name__)

#: The only label names any radloop metric may carry. Each has a small, bounded set of values that identify no
#: patient, study or person: route TEMPLATES (never raw paths), queue names, event types, model versions, roles.
ALLOWED_LABELS: frozenset[str] = frozenset({
    "method",          # HTTP method
    "route",           # the route template, e.g. /dicomweb/studies/{study}/series (never the concrete path)
    "status",          # HTTP status code
    "queue",           # SQS queue name (derived from the prefix and the service)
    "state",           # a queue's message state: visible | in_flight | delayed
    "event",           # event detail-type, e.g. InstanceStored
    "outcome",         # a bounded outcome word: succeeded | failed | dead_lettered | stored | rejected | ...
    "via",             # ingestion channel: stow | dimse | s3
    "direction",       # bytes: in (as received) | out (as stored)
    "model_version",   # a model package version (a small integer as a string)
    "priority",        # triage priority: urgent | routine
    "role",            # a radiologist's ROLE claim (never the name or subject)
    "measure",         # performance measure: auc | sensitivity | specificity
    "site",            # a pseudonymous site key, site-<10 hex> (shared.drift.site_key: a hash, never a name)
    "modality",        # a DICOM modality code: CR | DX | ...
    "feature",         # a drift feature (shared.drift.FEATURES)
    "api",             # an AWS API as botocore names it: s3 | dynamodb | eventbridge | sqs | sagemaker | ...
    "operation",       # an AWS operation: PutObject | TransactWriteItems | PutEvents | ...
})

#: Label values longer than this are refused (identifiers and free text are long; every legitimate value is short).
MAX_LABEL_VALUE_LEN = 96
#: A DICOM UID (dotted digits), a DICOM person name (``^``), a date, or a long digit run (MRNs, accession numbers).
_SUSPECT_VALUE = re.compile(r"(?:\d+\.){3,}\d+|\^|\d{4}-?\d{2}-?\d{2}|\d{7,}")
INVALID = "_invalid"
#: Labels whose values have a known shape, checked against it instead of for digit runs: a queue label is an SQS queue
#: name from the topology (its digits are the operator's deployment prefix, not a patient's); a site label is a hash.
_SHAPED = {"queue": re.compile(r"[A-Za-z0-9_-]{1,80}"), "site": re.compile(r"site-[0-9a-f]{10}"),
           "modality": re.compile(r"[A-Z]{1,16}")}

Kind = Literal["counter", "histogram", "gauge", "updown"]

#: Histogram boundaries in seconds, from a cached frame (milliseconds) to a training step (minutes).
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: How long a message waited on its queue, in seconds: up to the retry schedule's hours.
QUEUE_AGE_BUCKETS_S = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
#: Compression ratio (original bytes / HTJ2K bytes); lossless CT and MR typically land between 2 and 4.
RATIO_BUCKETS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)


class MetricLabelError(ValueError):
    """A metric was recorded or declared with a label name that is not allowed (PHI/cardinality guard)."""


@dataclass(frozen=True)
class MetricSpec:
    """One instrument: OTel name, kind, UCUM unit, meaning and the label names it may carry."""

    name: str
    kind: Kind
    unit: str
    description: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] | None = None
    #: The service that records it ("*" = every service through shared code).
    service: str = "*"

    def __post_init__(self) -> None:
        bad = set(self.labels) - ALLOWED_LABELS
        if bad:
            raise MetricLabelError(f"{self.name}: label(s) {sorted(bad)} are not in ALLOWED_LABELS")

    @property
    def prometheus_name(self) -> str:
        """The metric family name Prometheus shows (the OTel Prometheus exporter's and the collector's translation)."""
        base = re.sub(r"[^a-zA-Z0-9_:]", "_", self.name)
        suffix = _UNIT_SUFFIX.get(self.unit, "")
        if suffix and not base.endswith("_" + suffix):
            base = f"{base}_{suffix}"
        if self.kind == "counter":
            base += "_total"
        return base

    def prometheus_series(self) -> tuple[str, ...]:
        """Every series name this instrument produces in Prometheus (histograms: _bucket, _sum, _count)."""
        n = self.prometheus_name
        if self.kind == "histogram":
            return (f"{n}_bucket", f"{n}_sum", f"{n}_count")
        return (n,)


#: UCUM unit -> Prometheus suffix, as the exporters translate it (units in braces, like {message}, add nothing).
#: Dimensionless ("1") instruments carry "ratio" in their own name instead: the Python exporter adds no suffix for "1"
#: while the collector's translator adds "_ratio" to gauges only, and a name that already ends in it gets none from
#: either, so both paths agree.
_UNIT_SUFFIX = {"s": "seconds", "By": "bytes"}

_SPECS: tuple[MetricSpec, ...] = (
    # --- every HTTP service (shared/service.py middleware) ---
    MetricSpec("radloop.http.server.duration", "histogram", "s",
               "HTTP request latency per route template (query strings and concrete paths never appear)",
               ("method", "route", "status"), LATENCY_BUCKETS_S),
    # --- every process's AWS clients (shared/aws.py) ---
    MetricSpec("radloop.aws.requests", "counter", "{request}",
               "HTTP requests sent to AWS, per API and operation (each retry is a request: what AWS bills and "
               "throttles)", ("api", "operation")),
    MetricSpec("radloop.aws.request.bytes", "counter", "By",
               "Request body bytes sent to AWS, per API and operation (S3 objects, DynamoDB items, events)",
               ("api", "operation")),
    # --- every consumer (shared/consumer.py) ---
    MetricSpec("radloop.messages.received", "counter", "{message}", "SQS messages received", ("queue",)),
    MetricSpec("radloop.messages.handled", "counter", "{message}",
               "SQS messages handled, by outcome: succeeded | duplicate | failed | dead_lettered | deferred",
               ("queue", "event", "outcome")),
    MetricSpec("radloop.message.handler.duration", "histogram", "s", "Handler latency per queue and event type",
               ("queue", "event", "outcome"), LATENCY_BUCKETS_S),
    MetricSpec("radloop.message.queue.age", "histogram", "s",
               "How long a message waited on its queue before this receive (now - SentTimestamp)",
               ("queue",), QUEUE_AGE_BUCKETS_S),
    MetricSpec("radloop.queue.depth", "gauge", "{message}",
               "Messages on a queue or its DLQ (SQS ApproximateNumberOfMessages*), polled by the consumer",
               ("queue", "state")),
    # --- ingestion ---
    MetricSpec("radloop.ingestion.instances", "counter", "{instance}",
               "DICOM instances received, by channel and outcome: stored | duplicate | rejected", ("via", "outcome"),
               service="ingestion"),
    MetricSpec("radloop.ingestion.bytes", "counter", "By",
               "Pixel bytes: in = as received, out = as stored (HTJ2K)", ("direction",), service="ingestion"),
    MetricSpec("radloop.ingestion.htj2k.ratio", "histogram", "1",
               "Compression ratio of each stored instance (bytes in / HTJ2K bytes out)", (), RATIO_BUCKETS,
               service="ingestion"),
    # --- triage ---
    MetricSpec("radloop.triage.scores", "counter", "{score}", "Studies scored, per model version and priority",
               ("model_version", "priority"), service="triage"),
    MetricSpec("radloop.triage.rescored", "counter", "{image}",
               "Unread images re-scored after a new champion was approved, per model version", ("model_version",),
               service="triage"),
    MetricSpec("radloop.model.drift.psi", "gauge", "{psi}",
               "Drift: population stability index of a feature of the champion's recent inputs (or its scores: "
               "feature=score) per pseudonymous site and modality, against the training reference",
               ("model_version", "site", "modality", "feature"), service="triage"),
    MetricSpec("radloop.model.drift.alerts", "counter", "{alert}",
               "DriftDetected events published (PSI at or above triage_drift_psi_alert), per pseudonymous site, "
               "modality and feature", ("site", "modality", "feature"), service="triage"),
    MetricSpec("radloop.triage.scoring.duration", "histogram", "s", "Scoring latency per model version",
               ("model_version",), LATENCY_BUCKETS_S, service="triage"),
    # --- verification ---
    MetricSpec("radloop.verification.reads", "counter", "{read}",
               "Radiologist reads recorded, per reader ROLE (never a name or subject) and outcome",
               ("role", "outcome"), service="verification"),
    MetricSpec("radloop.verification.worklist.depth", "gauge", "{study}",
               "Studies waiting on the worklist, by priority", ("priority",), service="verification"),
    MetricSpec("radloop.model.performance.ratio", "gauge", "1",
               "Live performance of a model version against radiologist reads: auc | sensitivity | specificity",
               ("model_version", "measure"), service="verification"),
    # --- pipeline orchestrator and registry ---
    MetricSpec("radloop.training.runs", "counter", "{run}",
               "Training runs finished, by outcome: succeeded | failed | stopped", ("outcome",),
               service="pipeline_orchestrator"),
    MetricSpec("radloop.model.champion.version", "gauge", "{version}",
               "The champion (serving) model version", (), service="registry"),
)

#: name -> spec, for every instrument radloop records.
CATALOGUE: dict[str, MetricSpec] = {s.name: s for s in _SPECS}


def check_labels(spec: MetricSpec, attributes: Mapping[str, Any] | None) -> dict[str, str]:
    """The attributes to record: names must be declared by ``spec``; suspicious values become :data:`INVALID`."""
    if not attributes:
        return {}
    out: dict[str, str] = {}
    for key, raw in attributes.items():
        if key not in spec.labels:
            raise MetricLabelError(f"{spec.name} does not declare label {key!r} (declared: {list(spec.labels)})")
        value = str(raw)
        if key in _SHAPED:
            if not _SHAPED[key].fullmatch(value):
                _warn_once(spec.name, key)
                value = INVALID
        elif len(value) > MAX_LABEL_VALUE_LEN or (key != "route" and _SUSPECT_VALUE.search(value)):
            _warn_once(spec.name, key)
            value = INVALID
        elif key == "route" and ("?" in value or _SUSPECT_VALUE.search(value)):
            # A route label is a template (/studies/{study}); a concrete UID or a query string means a bug upstream.
            _warn_once(spec.name, key)
            value = INVALID
        out[key] = value
    return out


_warned: set[tuple[str, str]] = set()


def _warn_once(name: str, key: str) -> None:
    if (name, key) not in _warned:
        _warned.add((name, key))
        # The value itself is not logged: it may be the very identifier this guard keeps out.
        log.warning("metric label value refused (looks like an identifier)", extra={"metric": name, "label": key})


class Instrument:
    """A checked handle on one catalogued instrument: ``add``/``record``/``set`` with label checks.

    Instruments are created on the global meter provider's proxy, so they may be created at import time, before
    :func:`setup_metrics` installs the provider (records before that are dropped).
    """

    def __init__(self, spec: MetricSpec) -> None:
        self.spec = spec
        meter = otel_metrics.get_meter("radloop")
        kind = spec.kind
        if kind == "counter":
            self._inst: Any = meter.create_counter(spec.name, unit=spec.unit, description=spec.description)
        elif kind == "histogram":
            self._inst = meter.create_histogram(spec.name, unit=spec.unit, description=spec.description,
                                                explicit_bucket_boundaries_advisory=list(spec.buckets or ()) or None)
        elif kind == "updown":
            self._inst = meter.create_up_down_counter(spec.name, unit=spec.unit, description=spec.description)
        else:
            self._inst = meter.create_gauge(spec.name, unit=spec.unit, description=spec.description)

    def add(self, amount: float = 1, attributes: Mapping[str, Any] | None = None) -> None:
        """Counter / up-down counter increment."""
        self._inst.add(amount, check_labels(self.spec, attributes))

    def record(self, value: float, attributes: Mapping[str, Any] | None = None) -> None:
        """Histogram observation."""
        self._inst.record(value, check_labels(self.spec, attributes))

    def set(self, value: float, attributes: Mapping[str, Any] | None = None) -> None:
        """Gauge value (the last one set wins)."""
        self._inst.set(value, check_labels(self.spec, attributes))


_instruments: dict[str, Instrument] = {}
_inst_lock = threading.Lock()


def instrument(name: str) -> Instrument:
    """The checked instrument for a catalogued metric name (KeyError for an undeclared one)."""
    spec = CATALOGUE[name]
    with _inst_lock:
        inst = _instruments.get(name)
        if inst is None:
            inst = _instruments[name] = Instrument(spec)
        return inst


# --- set-up -----------------------------------------------------------------------------------------------------

_provider: Any = None
_setup_lock = threading.Lock()


def otlp_metrics_enabled(endpoint: str) -> bool:
    """OTLP push is on when a collector endpoint is set, unless ``OTEL_METRICS_EXPORTER`` leaves ``otlp`` out."""
    if not endpoint:
        return False
    chosen = os.environ.get("OTEL_METRICS_EXPORTER", "").strip().lower()
    if not chosen:
        return True
    return "otlp" in {c.strip() for c in chosen.split(",")}


def setup_metrics(resource: Any, endpoint: str = "", export_interval_ms: int = 15_000) -> Any:
    """Install the process-wide meter provider (idempotent: the first call wins); returns it.

    Readers: the Prometheus reader (served at ``/metrics``) always; an OTLP/HTTP periodic exporter when
    ``endpoint`` is set (see :func:`otlp_metrics_enabled`).
    """
    global _provider
    with _setup_lock:
        if _provider is not None:
            return _provider
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

        readers: list[MetricReader] = [PrometheusMetricReader()]
        if otlp_metrics_enabled(endpoint):
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=endpoint.rstrip("/") + "/v1/metrics"),
                export_interval_millis=export_interval_ms))
        _provider = MeterProvider(resource=resource, metric_readers=readers)
        otel_metrics.set_meter_provider(_provider)
        return _provider


def shutdown_metrics() -> None:
    """Push what the OTLP reader holds (a stopping task's last figures)."""
    if _provider is not None:
        try:
            _provider.force_flush(5_000)
        except Exception:  # never fail a shutdown over metrics
            log.debug("metrics flush failed", exc_info=True)


def prometheus_text() -> tuple[bytes, str]:
    """The Prometheus exposition of this process's metrics and its content type (the ``/metrics`` body)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
