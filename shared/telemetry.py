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
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
        data = "".join(json.dumps(span_to_dict(s), default=str) + "\n" for s in spans).encode()
        # One write(2) per batch on an O_APPEND descriptor: the kernel appends it whole, so processes sharing the
        # file (a service's replicas) never interleave lines. A buffered text file would split a batch larger than
        # its buffer into several writes.
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:  # a short write (a full disk, a signal) continues where it stopped
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
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


#: What a route parameter may show in a span: a UID or a number (what radloop's routes take in paths).
_UID_OR_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)*")
#: What a segment of a path no route matched may show besides: a lowercase word (a literal, such as ``dicomweb``).
_WORD = re.compile(r"[a-z][a-z0-9_-]*")


def scrub_path(path: str, template: str | None = None) -> str:
    """``path`` with every segment that could hold PHI replaced by ``{redacted}``: a client may put a patient ID or
    name where a UID belongs (a review found both in spans). With the route's ``template``, its literal segments stay
    and its parameters only as UIDs or numbers; without one (no route matched), UIDs, numbers and lowercase words."""
    parts = strip_query(path).split("/")
    literal = template.split("/") if template and template.count("/") == len(parts) - 1 else None
    out = []
    for i, seg in enumerate(parts):
        if literal is not None:
            param = literal[i].startswith("{")
            shown = not seg or (seg == literal[i] if not param else _UID_OR_NUMBER.fullmatch(seg) is not None)
        else:
            shown = not seg or _UID_OR_NUMBER.fullmatch(seg) is not None or _WORD.fullmatch(seg) is not None
        out.append(seg if shown else "{redacted}")
    return "/".join(out)


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
    from opentelemetry.metrics import NoOpMeterProvider

    # One server span per request: the per-ASGI-message "send"/"receive" child spans cost more than serving a cached
    # frame itself and say nothing the server span does not. The instrumentation's own HTTP metrics are off: they
    # duplicate radloop.http.server.duration (RouteMetricsMiddleware, per route template), which the dashboards and
    # alarms read, and recording them cost about 6% of the gateway's event loop per cached frame.
    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"],
                                       server_request_hook=_redact_url_attributes,
                                       meter_provider=NoOpMeterProvider())
    instrumented = app.build_middleware_stack

    def build_middleware_stack() -> Any:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        stack = instrumented()
        otel = getattr(stack, "app", None)  # the instrumentation's outermost ServerErrorMiddleware wraps its middleware
        if isinstance(otel, OpenTelemetryMiddleware):
            otel.default_span_details = _span_details
            otel.app = _NameSpanAfterRouting(otel.app)
        return stack

    app.build_middleware_stack = build_middleware_stack


def _span_details(scope: Mapping[str, Any]) -> tuple[str, dict[str, str]]:
    """The server span's name when it starts: the method alone.

    The instrumentation's default matches the path against every route to find its template before the app runs,
    and the router then matches it again: that first matching cost about 12% of the gateway's event loop per cached
    frame. :class:`_NameSpanAfterRouting` names the span from the router's own match instead.
    """
    return str(scope.get("method") or "HTTP"), {}


class _NameSpanAfterRouting:
    """Inside the server span: when the response starts (routing is done by then; the instrumentation ends the span
    with the response's last body message), name the span ``"<METHOD> <route template>"`` and set ``http.route``
    from the route the router matched, never the concrete path (it holds UIDs). A request that no route matched keeps
    the method alone."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        span = trace.get_current_span()

        async def naming_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and span.is_recording():
                route = getattr(scope.get("route"), "path", None)
                if route:
                    method = scope.get("method")
                    span.update_name(f"{method} {route}" if method else route)
                    span.set_attribute("http.route", route)
                attrs = getattr(span, "attributes", None) or {}
                for name in ("http.target", "url.path"):
                    if name in attrs:
                        span.set_attribute(name, scrub_path(str(attrs[name]), route))
                for name in ("http.url", "url.full"):
                    if name in attrs:
                        u = urlsplit(str(attrs[name]))
                        span.set_attribute(name, f"{u.scheme}://{u.netloc}{scrub_path(u.path, route)}")
            await send(message)

        await self.app(scope, receive, naming_send)


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
