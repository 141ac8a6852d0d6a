"""CloudWatch: the operations dashboard and the metric alarms, mirroring the Grafana dashboards and Prometheus rules.

The services record the metrics of :mod:`shared.metrics` (one catalogue) and push them over OTLP to the ADOT sidecar
of their task; its ``awsemf`` exporter (:func:`with_emf_metrics`) writes them as CloudWatch embedded-metric-format
log events into :data:`metrics log group <MetricsDashboards.log_group>`, and CloudWatch extracts the metrics into the
namespace :func:`emf_namespace` with the dimension sets of :data:`EMF_DIMENSIONS`. Queue depth and age come from
SQS's own metrics (authoritative, and there even when no consumer runs).

Grafana (infra/grafana/dashboards) -> here:

- queues and consumers: depth, DLQ depth, oldest message age (AWS/SQS); handled by outcome, handler latency (EMF);
- service latency: average and maximum request latency per service, requests per service (EMF histograms arrive as
  statistic sets, so CloudWatch has Average/Min/Max/SampleCount, not percentiles);
- ingestion, triage, verification: instances, bytes, HTJ2K ratio, scores, scoring latency, worklist depth, reads
  per role, live performance per model version;
- pipeline: training runs by outcome, champion version.

Alarms mirror infra/prometheus/alerts.yml (the DLQ and 5xx alarms already live in observability.py).

Wiring:

- ``stack.py`` creates :class:`MetricsDashboards` after ``Observability`` (it needs the alarm topic), and makes every
  ECS service depend on the metrics log group, so no sidecar starts writing before the group exists;
- ``compute.py`` ``ecs_collector_config`` ends with :func:`with_emf_metrics`, so the sidecar's metrics pipeline
  exports to ``awsemf`` (X-Ray takes traces only);
- the task roles' write access to the metrics log group is a declared need (``needs.METRICS_ACTIONS``), rendered
  into each task role's managed policy by ``compute.py`` like every other permission: this construct grants nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from shared.metrics import CATALOGUE

#: Each instrument's CloudWatch dimension sets (label names; ``service.name`` comes from the OTel resource). A label
#: left out of every set is summed over (CloudWatch aggregates datapoints with the same dimensions).
EMF_DIMENSIONS: dict[str, list[list[str]]] = {
    "radloop.http.server.duration": [["service.name"], ["service.name", "route"]],
    "radloop.aws.requests": [["service.name"], ["service.name", "api", "operation"]],
    "radloop.aws.request.bytes": [["service.name"], ["service.name", "api", "operation"]],
    "radloop.messages.received": [["queue"]],
    "radloop.messages.handled": [["queue"], ["queue", "outcome"]],
    "radloop.message.handler.duration": [["queue"]],
    "radloop.message.queue.age": [["queue"]],
    "radloop.queue.depth": [["queue", "state"]],
    "radloop.ingestion.instances": [["outcome"], ["via", "outcome"]],
    "radloop.ingestion.bytes": [["direction"]],
    "radloop.ingestion.htj2k.ratio": [["service.name"]],
    "radloop.triage.scores": [["service.name"], ["model_version"]],
    "radloop.triage.rescored": [["model_version"]],
    "radloop.model.drift.psi": [["site", "modality", "feature"]],
    "radloop.model.drift.alerts": [["site", "modality", "feature"]],
    "radloop.triage.scoring.duration": [["service.name"]],
    "radloop.verification.reads": [["role"]],
    "radloop.verification.worklist.depth": [["priority"]],
    "radloop.model.performance.ratio": [["model_version", "measure"]],
    "radloop.training.runs": [["outcome"]],
    "radloop.model.champion.version": [["service.name"]],
}

#: Alarm thresholds, the same as infra/prometheus/alerts.yml.
QUEUE_AGE_ALARM_S = 900
HANDLER_FAILURE_ALARM_PERCENT = 5
URGENT_WAITING_ALARM_MIN = 30


def emf_namespace(prefix: str) -> str:
    """The CloudWatch namespace of one deployment's metrics."""
    return f"radloop/{prefix}"


def metrics_log_group_name(prefix: str) -> str:
    """The log group the ADOT sidecars write EMF events to (created, encrypted and retained by the stack)."""
    return f"/{prefix}/metrics"


def emf_exporter_config(region: str, prefix: str) -> dict[str, Any]:
    """The ADOT collector's ``awsemf`` exporter: catalogued metrics only, with the dimension sets above."""
    return {
        "region": region,
        "namespace": emf_namespace(prefix),
        "log_group_name": metrics_log_group_name(prefix),
        "log_stream_name": "{TaskId}",
        # service.name becomes a label; only the declared dimension sets become CloudWatch dimensions.
        "resource_to_telemetry_conversion": {"enabled": True},
        "dimension_rollup_option": "NoDimensionRollup",
        "metric_declarations": [
            {"dimensions": dims, "metric_name_selectors": [f"^{name.replace('.', '[.]')}$"]}
            for name, dims in EMF_DIMENSIONS.items()
        ],
    }


def with_emf_metrics(cfg: dict[str, Any], region: str, prefix: str) -> dict[str, Any]:
    """An ECS collector config (traces already on X-Ray) whose metrics pipelines export to CloudWatch EMF instead."""
    out = copy.deepcopy(cfg)
    out.setdefault("exporters", {})["awsemf"] = emf_exporter_config(region, prefix)
    for name, pipeline in out["service"]["pipelines"].items():
        if name == "metrics" or name.startswith("metrics/"):
            pipeline["exporters"] = ["awsemf"]
    # exporters no pipeline uses any more (the local prometheus one) are dropped: the collector refuses nothing,
    # but an unused exporter that binds a port has no place in a task.
    used = {e for p in out["service"]["pipelines"].values() for e in p["exporters"]}
    out["exporters"] = {k: v for k, v in out["exporters"].items() if k in used}
    return out


def _retention(days: int) -> logs.RetentionDays:
    """The shortest CloudWatch retention that keeps at least ``days``."""
    R = logs.RetentionDays
    choices = ((1, R.ONE_DAY), (3, R.THREE_DAYS), (5, R.FIVE_DAYS), (7, R.ONE_WEEK), (14, R.TWO_WEEKS),
               (30, R.ONE_MONTH), (60, R.TWO_MONTHS), (90, R.THREE_MONTHS), (120, R.FOUR_MONTHS),
               (150, R.FIVE_MONTHS), (180, R.SIX_MONTHS), (365, R.ONE_YEAR), (400, R.THIRTEEN_MONTHS),
               (545, R.EIGHTEEN_MONTHS), (731, R.TWO_YEARS), (1827, R.FIVE_YEARS), (2557, R.SEVEN_YEARS),
               (3653, R.TEN_YEARS))
    for value, r in choices:
        if value >= days:
            return r
    return R.INFINITE


class MetricsDashboards(Construct):
    """The EMF log group, the operations dashboard and the metric alarms (``RadloopStack`` creates it).

    ``services`` names the services whose request metrics the dashboard plots. The tasks' write access to the log
    group is not granted here: it is the ``metrics`` need of infra/radloop_infra/needs.py, rendered by compute.py.
    """

    def __init__(self, scope: Construct, cid: str, *, prefix: str, queues: Mapping[str, sqs.IQueue],
                 dlqs: Mapping[str, sqs.IQueue], services: Sequence[str], topic: sns.ITopic,
                 logs_key: kms.IKey, retention_days: int, removal: RemovalPolicy = RemovalPolicy.DESTROY) -> None:
        super().__init__(scope, cid)
        unknown = set(EMF_DIMENSIONS) - set(CATALOGUE)
        if unknown:
            raise ValueError(f"EMF dimensions for metrics no service records: {sorted(unknown)}")
        self.prefix = prefix
        self.namespace = emf_namespace(prefix)
        self.log_group = logs.LogGroup(
            self, "MetricsLogs", log_group_name=metrics_log_group_name(prefix), encryption_key=logs_key,
            retention=_retention(retention_days), removal_policy=removal,
        )
        action = cw_actions.SnsAction(topic)
        self.alarms: dict[str, cw.Alarm] = {}

        def alarm(key: str, a: cw.Alarm) -> None:
            a.add_alarm_action(action)
            a.add_ok_action(action)
            self.alarms[key] = a

        five = Duration.minutes(5)
        # --- alarms (infra/prometheus/alerts.yml) ---------------------------------------------------------------------
        for service, q in queues.items():
            alarm(f"{service}-backlog-age", cw.Alarm(
                self, f"BacklogAge{_cid(service)}", alarm_name=f"{prefix}-{service}-queue-backlog-old",
                alarm_description=f"The oldest message on {service}'s queue waited more than {QUEUE_AGE_ALARM_S} s",
                metric=q.metric_approximate_age_of_oldest_message(period=five, statistic="Maximum"),
                threshold=QUEUE_AGE_ALARM_S, evaluation_periods=2,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
            queue_name = q.queue_name
            failed = self.metric("radloop.messages.handled", {"queue": queue_name, "outcome": "failed"}, "Sum")
            handled = self.metric("radloop.messages.handled", {"queue": queue_name}, "Sum")
            alarm(f"{service}-handler-failures", cw.Alarm(
                self, f"HandlerFailures{_cid(service)}", alarm_name=f"{prefix}-{service}-handler-failures",
                alarm_description=(f"More than {HANDLER_FAILURE_ALARM_PERCENT}% of {service}'s messages fail their "
                                   "handler (they are retried, then dead-lettered)"),
                metric=cw.MathExpression(expression="100 * failed / IF(handled > 0, handled, 1)",
                                         using_metrics={"failed": failed, "handled": handled}, period=five,
                                         label=f"{service} handler failure %"),
                threshold=HANDLER_FAILURE_ALARM_PERCENT, evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ))
        alarm("urgent-waiting", cw.Alarm(
            self, "UrgentStudiesWaiting", alarm_name=f"{prefix}-urgent-studies-waiting",
            alarm_description=f"Urgent studies have waited on the worklist for more than {URGENT_WAITING_ALARM_MIN} min",
            metric=self.metric("radloop.verification.worklist.depth", {"priority": "urgent"}, "Minimum"),
            threshold=0, evaluation_periods=URGENT_WAITING_ALARM_MIN // 5,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        ))
        alarm("training-failed", cw.Alarm(
            self, "TrainingFailed", alarm_name=f"{prefix}-training-run-failed",
            alarm_description="A training run failed (radloop runs list)",
            metric=self.metric("radloop.training.runs", {"outcome": "failed"}, "Sum", Duration.hours(1)),
            threshold=0, evaluation_periods=1, comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        ))

        # --- the dashboard (infra/grafana/dashboards) -----------------------------------------------------------------
        services = sorted(services)
        self.dashboard = cw.Dashboard(self, "Operations", dashboard_name=f"{prefix}-operations",
                                      default_interval=Duration.hours(3))
        self.dashboard.add_widgets(
            cw.TextWidget(markdown=f"# radloop {prefix}: operations\nMirrors the Grafana dashboards (compose). "
                                   "Metrics: docs/operations.md.", width=24, height=2))
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Queue depth (messages waiting)", width=8, left=[
                q.metric_approximate_number_of_messages_visible(period=Duration.minutes(1), statistic="Maximum",
                                                                label=s) for s, q in queues.items()]),
            cw.GraphWidget(title="Dead-letter queues (should be 0)", width=8, left=[
                q.metric_approximate_number_of_messages_visible(period=Duration.minutes(1), statistic="Maximum",
                                                                label=s) for s, q in dlqs.items()]),
            cw.GraphWidget(title="Oldest message age (s)", width=8, left=[
                q.metric_approximate_age_of_oldest_message(period=Duration.minutes(1), statistic="Maximum", label=s)
                for s, q in queues.items()]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Messages received per queue", width=8, left=[
                self.metric("radloop.messages.received", {"queue": q.queue_name}, "Sum", label=s)
                for s, q in queues.items()]),
            cw.GraphWidget(title="Wait before a consumer took a message (average, s)", width=8, left=[
                self.metric("radloop.message.queue.age", {"queue": q.queue_name}, "Average", label=s)
                for s, q in queues.items()]),
            cw.GraphWidget(title="Queue depth as the consumers poll it", width=8, left=[self.search(
                "radloop.queue.depth", ["queue", "state"], "Maximum", "depth")]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Messages handled per queue", width=8, left=[
                self.metric("radloop.messages.handled", {"queue": q.queue_name}, "Sum", label=s)
                for s, q in queues.items()]),
            cw.GraphWidget(title="Handler failures per queue", width=8, left=[
                self.metric("radloop.messages.handled", {"queue": q.queue_name, "outcome": "failed"}, "Sum", label=s)
                for s, q in queues.items()]),
            cw.GraphWidget(title="Handler latency per queue (average, s)", width=8, left=[
                self.metric("radloop.message.handler.duration", {"queue": q.queue_name}, "Average", label=s)
                for s, q in queues.items()]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Request latency per service (average, s)", width=12, left=[
                self.metric("radloop.http.server.duration", {"service.name": s}, "Average", label=s)
                for s in services]),
            cw.GraphWidget(title="Requests per service", width=12, left=[
                self.metric("radloop.http.server.duration", {"service.name": s}, "SampleCount", label=s)
                for s in services]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Requests to AWS per service (retries included: what AWS bills)", width=12, left=[
                self.metric("radloop.aws.requests", {"service.name": s}, "Sum", label=s) for s in services]),
            cw.GraphWidget(title="Bytes sent to AWS per service", width=12, left=[
                self.metric("radloop.aws.request.bytes", {"service.name": s}, "Sum", label=s) for s in services]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Instances stored and rejected", width=8, left=[
                self.metric("radloop.ingestion.instances", {"outcome": o}, "Sum", label=o)
                for o in ("stored", "rejected")]),
            cw.GraphWidget(title="Pixel bytes in / out (HTJ2K)", width=8, left=[
                self.metric("radloop.ingestion.bytes", {"direction": d}, "Sum", label=d) for d in ("in", "out")]),
            cw.GraphWidget(title="HTJ2K compression ratio (average)", width=8, left=[
                self.metric("radloop.ingestion.htj2k.ratio", {"service.name": "ingestion"}, "Average")]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Scores and scoring latency", width=8,
                           left=[self.metric("radloop.triage.scores", {"service.name": "triage"}, "Sum",
                                             label="scores")],
                           right=[self.metric("radloop.triage.scoring.duration", {"service.name": "triage"},
                                              "Average", label="latency (s)")]),
            cw.GraphWidget(title="Worklist depth by priority", width=8, left=[
                self.metric("radloop.verification.worklist.depth", {"priority": p}, "Maximum", label=p)
                for p in ("urgent", "routine")]),
            cw.GraphWidget(title="Reads per radiologist role", width=8, left=[self.search(
                "radloop.verification.reads", ["role"], "Sum", "reads")]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Live performance per model version", width=12, left=[self.search(
                "radloop.model.performance.ratio", ["model_version", "measure"], "Maximum", "performance")]),
            cw.GraphWidget(title="Training runs by outcome", width=6, left=[
                self.metric("radloop.training.runs", {"outcome": o}, "Sum", Duration.hours(1), label=o)
                for o in ("succeeded", "failed", "stopped")]),
            cw.SingleValueWidget(title="Champion model version", width=6, metrics=[
                self.metric("radloop.model.champion.version", {"service.name": "registry"}, "Maximum")]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Unread images re-scored by a new champion", width=12, left=[self.search(
                "radloop.triage.rescored", ["model_version"], "Sum", "re-scored")]),
            cw.GraphWidget(title="Drift: PSI per site, modality and feature (0.25: act), and alerts", width=12,
                           left=[self.search("radloop.model.drift.psi", ["site", "modality", "feature"], "Maximum",
                                             "psi")],
                           right=[self.search("radloop.model.drift.alerts", ["site", "modality", "feature"], "Sum",
                                              "DriftDetected")]),
        )
        self.dashboard.add_widgets(cw.AlarmStatusWidget(title="Metric alarms", width=24,
                                                        alarms=list(self.alarms.values())))

    def metric(self, name: str, dimensions: Mapping[str, str], statistic: str, period: Duration | None = None,
               label: str | None = None) -> cw.Metric:
        """A catalogued metric in this deployment's namespace; the dimensions must be one of its declared sets."""
        if sorted(dimensions) not in [sorted(d) for d in EMF_DIMENSIONS[name]]:
            raise ValueError(f"{name}: {sorted(dimensions)} is not a declared dimension set {EMF_DIMENSIONS[name]}")
        return cw.Metric(namespace=self.namespace, metric_name=name, dimensions_map=dict(dimensions),
                         statistic=statistic, period=period or Duration.minutes(5), label=label)

    def search(self, name: str, dimensions: list[str], statistic: str, label: str) -> cw.MathExpression:
        """Every series of a metric whose dimension values are not known in advance (roles, model versions)."""
        if dimensions not in EMF_DIMENSIONS[name]:
            raise ValueError(f"{name}: {dimensions} is not a declared dimension set")
        schema = ",".join([f'"{self.namespace}"', *(f'"{d}"' for d in dimensions)])
        return cw.MathExpression(
            expression=f"SEARCH('{{{schema}}} MetricName=\"{name}\"', '{statistic}', 300)",
            using_metrics={}, label=label, period=Duration.minutes(5))


def _cid(name: str) -> str:
    return "".join(p.capitalize() for p in name.replace("_", "-").split("-"))
