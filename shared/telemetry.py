"""OpenTelemetry set-up, the local trace sink, and trace-context helpers.

- With ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, spans go to an OTLP/HTTP collector (compose.yaml runs one, with Tempo
  and Grafana behind it).
- Otherwise spans are appended as JSON lines to ``{var_dir}/traces/{service}.jsonl``, which ``radloop traces`` reads.
- Metrics are set up at the same time with the same resource (:func:`shared.metrics.setup_metrics`): ``/metrics``
  always, OTLP push to the same collector when the endpoint is set.

Messaging spans follow the OpenTelemetry messaging semantic conventions: the publisher opens a PRODUCER span
``publish {detail-type}`` and injects its context into the event ``detail`` (``traceparent``/``tracestate``); the
consumer opens a CONSUMER span ``process {detail-type}`` whose parent is the extracted producer context, so one upload
can be followed across every service to the model it helped train.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from shared.metrics import setup_metrics, shutdown_metrics
from shared.settings import Settings

_configured: TracerProvider | None = None
_lock = threading.Lock()


class JsonLinesSpanExporter(SpanExporter):
    """Appends finished spans to a JSON-lines file (one object per span); safe across processes (O_APPEND)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    ctx = span.get_span_context()
    assert ctx is not None, "a finished span always has a context"
    parent = span.parent
    return {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent else None,
        "name": span.name,
        "kind": span.kind.name if span.kind else "INTERNAL",
        "service": span.resource.attributes.get("service.name"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": redacted_attributes(span.attributes or {}),
        "links": [
            {"trace_id": format(link.context.trace_id, "032x"), "span_id": format(link.context.span_id, "016x")}
            for link in span.links
        ],
    }


def setup_telemetry(settings: Settings, service_name: str | None = None) -> TracerProvider:
    """Install the process-wide tracer provider (idempotent: the first call wins)."""
    global _configured
    with _lock:
        if _configured is not None:
            return _configured
        name = service_name or settings.service_name
        resource = Resource.create(
            {
                "service.name": name,
                "service.namespace": "radloop",
                "deployment.environment": settings.environment,
            }
        )
        provider = TracerProvider(resource=resource)
        endpoint = settings.otel_exporter_otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        exporter: SpanExporter
        if endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=endpoint.rstrip("/") + "/v1/traces")
        else:
            exporter = JsonLinesSpanExporter(settings.traces_dir / f"{name}.jsonl")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        trace.set_tracer_provider(provider)
        # Metrics share the resource (service.name is the series' job/service in Prometheus and CloudWatch).
        setup_metrics(resource, endpoint)
        _configured = provider
        return provider


def shutdown_telemetry() -> None:
    if _configured is not None:
        _configured.force_flush(5_000)
    shutdown_metrics()


def tracer(name: str = "radloop") -> trace.Tracer:
    return trace.get_tracer(name)


def inject_context() -> dict[str, str]:
    """The current W3C trace context as a carrier dict (``traceparent``, maybe ``tracestate``)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, Any]) -> otel_context.Context:
    clean = {k: str(v) for k, v in carrier.items() if k in ("traceparent", "tracestate") and v}
    return propagate.extract(clean)


def current_ids() -> tuple[str | None, str | None]:
    """(trace_id, span_id) of the current span as hex, or (None, None)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


#: Span attributes that can hold a URL or its query string. Query strings carry QIDO matching keys (PatientName,
#: PatientID, PatientBirthDate...) and, from careless clients, credentials: they never reach a span.
_URL_ATTRIBUTES = ("http.url", "url.full", "http.target", "url.query", "http.request.uri")


def strip_query(value: str) -> str:
    """``/dicomweb/studies?PatientName=X`` -> ``/dicomweb/studies`` (fragments go too)."""
    for sep in ("?", "#"):
        value = value.split(sep, 1)[0]
    return value


def _redact_url_attributes(span: Any, scope: dict[str, Any] | None = None) -> None:
    """Server-request hook: overwrite every URL attribute the instrumentation set with its path only."""
    if span is None or not span.is_recording():
        return
    attrs = getattr(span, "attributes", None) or {}
    for name in _URL_ATTRIBUTES:
        if name in attrs:
            if name == "url.query":
                span.set_attribute(name, "")
            else:
                span.set_attribute(name, strip_query(str(attrs[name])))


def redacted_attributes(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """A span's attributes with query strings removed from anything URL-like (second line of defence at export)."""
    out: dict[str, Any] = {}
    for k, v in attributes.items():
        if k == "url.query":
            continue
        if isinstance(v, str) and (k in _URL_ATTRIBUTES or "://" in v or v.startswith("/")) and "?" in v:
            v = strip_query(v)
        out[k] = v
    return out


def instrument_fastapi(app: Any) -> None:
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # One server span per request: the per-ASGI-message "send"/"receive" child spans cost more than serving a cached
    # frame itself and say nothing the server span does not.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"],
                                       server_request_hook=_redact_url_attributes)


def read_local_spans(traces_dir: Path) -> list[dict[str, Any]]:
    """Every span in the local sink (all services), oldest first. Corrupt lines are skipped."""
    spans: list[dict[str, Any]] = []
    if not traces_dir.exists():
        return spans
    for path in sorted(traces_dir.glob("*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    spans.append(json.loads(line))
                except ValueError:
                    continue
    spans.sort(key=lambda s: s.get("start_ns") or 0)
    return spans
