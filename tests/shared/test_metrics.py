"""Metrics (shared/metrics.py): the catalogue, the label guard (no PHI, no identifiers), the route-template middleware,
the consumer's per-queue figures against a real moto server, and a real service process's ``/metrics``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families

from shared import event_names as ev
from shared import metrics as m
from shared.aws import AwsClients
from shared.consumer import MessageContext, SqsConsumer
from shared.events import ModelApproved
from shared.service import ServiceSpec, build_app
from shared.settings import Settings
from tests.support.aws import envelope, queue_url, wait_for

#: Words that name a patient, a study, a person or a request: none may be (part of) a label name.
FORBIDDEN_LABEL_WORDS = {"patient", "study", "series", "sop", "instance", "uid", "subject", "sub", "name", "user",
                         "email", "accession", "mrn", "birth", "path", "url", "query", "id", "reader", "token"}


@pytest.fixture(scope="module")
def provider() -> Any:
    """The process's meter provider (set up once, as setup_telemetry does in a service)."""
    return m.setup_metrics(Resource.create({"service.name": "metrics-test"}))


def samples(name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Samples of series ``name`` from this process's exposition whose labels include ``labels``."""
    body, _ = m.prometheus_text()
    out = []
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out.append((s.labels, s.value))
    return out


def total(name: str, **labels: str) -> float:
    return sum(v for _, v in samples(name, **labels))


# --- the catalogue and the guard ------------------------------------------------------------------------------------

def test_catalogue_labels_are_allow_listed_and_name_no_identifier() -> None:
    for word in m.ALLOWED_LABELS:
        assert not set(word.split("_")) & FORBIDDEN_LABEL_WORDS, f"label {word!r} names an identifier"
    names = set()
    for spec in m.CATALOGUE.values():
        assert set(spec.labels) <= m.ALLOWED_LABELS, spec.name
        assert spec.name.startswith("radloop."), spec.name
        if spec.unit == "1":  # see _UNIT_SUFFIX: both exporters then agree on the name
            assert spec.name.endswith(".ratio"), spec.name
        assert spec.prometheus_name not in names, f"two instruments export {spec.prometheus_name}"
        names.add(spec.prometheus_name)
        if spec.kind == "histogram":
            assert spec.buckets and list(spec.buckets) == sorted(spec.buckets), spec.name


@pytest.mark.parametrize("label", ["study_uid", "patient_id", "subject", "path", "reader_name"])
def test_an_instrument_with_an_identifier_label_is_refused(label: str) -> None:
    with pytest.raises(m.MetricLabelError):
        m.MetricSpec("radloop.test.bad", "counter", "{x}", "bad", (label,))


def test_recording_an_undeclared_label_raises(provider: Any) -> None:
    with pytest.raises(m.MetricLabelError):
        m.instrument("radloop.triage.scores").add(1, {"model_version": "3", "study_uid": "1.2.3"})
    with pytest.raises(m.MetricLabelError):
        m.instrument("radloop.verification.reads").add(1, {"role": "radiologist", "sub": "alice"})


@pytest.mark.parametrize(("label", "value"), [
    ("model_version", "1.2.840.113619.2.55.3.604688119"),  # a DICOM UID
    ("role", "DOE^JOHN"),                                 # a DICOM person name
    ("priority", "1970-01-31"),                            # a date
    ("outcome", "19700131"),
    ("outcome", "12345678"),                               # an MRN-like digit run
    ("role", "x" * 200),                                   # free text
    ("route", "/dicomweb/studies/1.2.840.10008.5.1.4"),   # a concrete path instead of the template
    ("route", "/dicomweb/studies?PatientName=DOE"),       # a query string
    ("queue", "DOE^JOHN"),                                 # not an SQS queue name
    ("queue", "1.2.840.113619.2.55"),
])
def test_identifier_like_values_never_reach_the_exposition(provider: Any, label: str, value: str) -> None:
    spec = next(s for s in m.CATALOGUE.values() if label in s.labels)
    labels = {k: "ok" for k in spec.labels}
    labels[label] = value
    assert m.check_labels(spec, labels)[label] == m.INVALID
    inst = m.instrument(spec.name)
    {"counter": inst.add, "histogram": inst.record, "gauge": inst.set, "updown": inst.add}[spec.kind](1, labels)
    body, _ = m.prometheus_text()
    assert value not in body.decode()


@pytest.mark.parametrize(("label", "value"), [("route", "/dicomweb/studies/{study}/series/{series}"),
                                              ("model_version", "12"), ("status", "404"),
                                              ("queue", "radloop-triage-dlq"), ("role", "radiologist"),
                                              # a queue name is the deployment's, never a patient's: a prefix with
                                              # a digit run or a date (random test prefixes, "rl-20261206") stays
                                              ("queue", "t-98865535eb-registry-dlq"),
                                              ("queue", "rl-2026-12-06-triage")])
def test_ordinary_values_pass(label: str, value: str) -> None:
    spec = next(s for s in m.CATALOGUE.values() if label in s.labels)
    assert m.check_labels(spec, {label: value}) == {label: value}


def test_every_catalogued_instrument_is_exported_under_its_prometheus_name(provider: Any) -> None:
    for spec in m.CATALOGUE.values():
        inst = m.instrument(spec.name)
        labels = {k: "ok" for k in spec.labels}
        {"counter": inst.add, "histogram": inst.record, "gauge": inst.set, "updown": inst.add}[spec.kind](2, labels)
    body, content_type = m.prometheus_text()
    assert content_type.startswith("text/plain")
    exported = {s.name for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    for spec in m.CATALOGUE.values():
        missing = set(spec.prometheus_series()) - exported
        assert not missing, f"{spec.name}: {missing} not in /metrics"


def test_otlp_push_follows_the_endpoint_and_otel_metrics_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_METRICS_EXPORTER", raising=False)
    assert not m.otlp_metrics_enabled("")
    assert m.otlp_metrics_enabled("http://collector:4318")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
    assert not m.otlp_metrics_enabled("http://collector:4318")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus,otlp")
    assert m.otlp_metrics_enabled("http://collector:4318")


# --- the HTTP middleware --------------------------------------------------------------------------------------------

def _probe_app() -> Any:
    router = APIRouter(prefix="/probe")

    @router.get("/things/{thing}")
    async def thing(thing: str) -> dict[str, str]:
        return {"ok": "yes"}

    async def startup(rt: Any) -> object:  # never run: TestClient without `with` skips the lifespan
        return object()

    spec: ServiceSpec[Settings, object] = ServiceSpec(name="registry", title="probe", settings=Settings,
                                                      startup=startup, routers=[router])
    return build_app(spec, Settings())


def test_request_latency_is_labelled_by_route_template_never_the_path(provider: Any) -> None:
    client = TestClient(_probe_app())
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    before = total("radloop_http_server_duration_seconds_count", route="/probe/things/{thing}", status="200")
    for _ in range(3):
        assert client.get(f"/probe/things/{uid}", params={"PatientName": "DOE^JOHN"}).status_code == 200
    assert client.get(f"/nowhere/{uid}").status_code == 404
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert total("radloop_http_server_duration_seconds_count", route="/probe/things/{thing}", method="GET",
                 status="200") == before + 3
    assert total("radloop_http_server_duration_seconds_count", route="unmatched", status="404") >= 1
    for secret in (uid, "DOE", "PatientName", "/nowhere"):
        assert secret not in text, f"{secret!r} leaked into /metrics"
    # the scrape itself and the probes are not measured
    assert not samples("radloop_http_server_duration_seconds_count", route="/metrics")


# --- the consumer, against a real moto server ------------------------------------------------------------------------

def approved(version: int) -> ModelApproved:
    return ModelApproved(version=version, model_package_arn="arn:aws:sagemaker:x", model_artifact_uri="s3://b/m",
                         threshold=0.5, approved_by="policy", reason="test")


async def test_consumer_counts_outcomes_latency_age_and_depth_per_queue(provider: Any, clients: AwsClients) -> None:
    queue = clients.settings.topology.queues["triage"].name
    dlq = clients.settings.topology.queues["triage"].dlq_name
    sqs = await clients.sqs()
    url = await queue_url(clients, queue)
    for body in (envelope(approved(1)), envelope(approved(2)), "this is not an event"):
        await sqs.send_message(QueueUrl=url, MessageBody=body)

    async def handle(e: ModelApproved, ctx: MessageContext) -> None:
        if e.version == 2:
            raise RuntimeError("boom")

    consumer = SqsConsumer(clients, "triage", {ev.MODEL_APPROVED: handle}, wait_time_s=1, retry_backoff_s=30)
    task = asyncio.create_task(consumer.run())

    async def settled() -> bool:
        s = consumer.stats
        return s.succeeded >= 1 and s.failed >= 1 and s.dead_lettered >= 1

    try:
        assert await wait_for(settled, 30)
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 15)
    name = "radloop_messages_handled_total"
    assert total(name, queue=queue, event=ev.MODEL_APPROVED, outcome="succeeded") == 1
    assert total(name, queue=queue, event=ev.MODEL_APPROVED, outcome="failed") == 1
    assert total(name, queue=queue, event="_unparsed", outcome="dead_lettered") == 1
    assert total("radloop_messages_received_total", queue=queue) == 3
    assert total("radloop_message_handler_duration_seconds_count", queue=queue, outcome="succeeded") == 1
    assert total("radloop_message_queue_age_seconds_count", queue=queue) == 3
    # the depth poll ran when the consumer started: both the queue and its DLQ have a reading per state
    for q in (queue, dlq):
        for state in ("visible", "in_flight", "delayed"):
            assert samples("radloop_queue_depth", queue=q, state=state), (q, state)


async def test_aws_requests_and_their_bytes_are_counted_per_api_and_operation(provider: Any,
                                                                             clients: AwsClients) -> None:
    """What docs/ingestion.md's "What one instance costs on AWS" is read from: every request a client sends, retries
    included, with its body's size, against a real moto server."""
    s3 = await clients.s3()
    bucket = clients.settings.topology.bucket("images")
    name, size = "radloop_aws_requests_total", "radloop_aws_request_bytes_total"
    before = (total(name, api="s3", operation="PutObject"), total(size, api="s3", operation="PutObject"),
              total(name, api="s3", operation="GetObject"))
    for k in range(3):
        await s3.put_object(Bucket=bucket, Key=f"metrics-probe/{k}", Body=b"x" * 1000)
    await (await s3.get_object(Bucket=bucket, Key="metrics-probe/0"))["Body"].read()
    assert total(name, api="s3", operation="PutObject") == before[0] + 3
    assert total(size, api="s3", operation="PutObject") == before[1] + 3000
    assert total(name, api="s3", operation="GetObject") == before[2] + 1
    ddb = await clients.dynamodb()
    n = total(name, api="dynamodb", operation="GetItem")
    await ddb.get_item(TableName=clients.settings.topology.table("instances"),
                       Key={"pk": {"S": "probe"}, "sk": {"S": "probe"}})
    assert total(name, api="dynamodb", operation="GetItem") == n + 1


# --- a real service process ------------------------------------------------------------------------------------------

def test_a_running_service_serves_its_metrics(deployment: Settings, tmp_path: Path) -> None:
    from tests.support.triage_verification_procs import running

    with running("registry", deployment, tmp_path) as svc:
        assert httpx.get(f"{svc.url}/registry/models/7", timeout=10).status_code in (401, 403)
        r = httpx.get(f"{svc.url}/metrics", timeout=10)
    assert r.status_code == 200
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    hist = fams["radloop_http_server_duration_seconds"]
    routes = {s.labels.get("route") for s in hist.samples}
    assert "/registry/models/{version}" in routes and "/registry/models/7" not in routes
    depth = fams["radloop_queue_depth"]
    assert {s.labels["queue"] for s in depth.samples} == {deployment.topology.queues["registry"].name,
                                                          deployment.topology.queues["registry"].dlq_name}
    # the resource names the service (Prometheus' target_info; CloudWatch's dimension through the collector)
    assert any(s.labels.get("service_name") == "registry" for s in fams["target_info"].samples)


def test_every_metric_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    for spec in m.CATALOGUE.values():
        assert f"`{spec.prometheus_name}`" in doc, f"{spec.prometheus_name} is not in docs/operations.md"
        for label in spec.labels:
            assert f"`{label}`" in doc, f"label {label} is not in docs/operations.md"


def test_ingestion_records_count_bytes_and_htj2k_ratio(provider: Any) -> None:
    from types import SimpleNamespace

    from services.ingestion.service import _record_stored

    before = total("radloop_ingestion_instances_total", via="dimse", outcome="stored")
    out_before = total("radloop_ingestion_bytes_total", direction="out")
    ratios_before = total("radloop_ingestion_htj2k_ratio_count")
    inst = {"rows": 512, "columns": 512, "samples_per_pixel": 1, "bits_allocated": 16, "number_of_frames": 2,
            "htj2k_bytes": 262_144, "sop_uid": "1.2.840.99.1"}
    _record_stored("dimse", 600_000, SimpleNamespace(record=SimpleNamespace(instance=inst)))  # type: ignore[arg-type]
    assert total("radloop_ingestion_instances_total", via="dimse", outcome="stored") == before + 1
    assert total("radloop_ingestion_bytes_total", direction="out") == out_before + 262_144
    assert total("radloop_ingestion_htj2k_ratio_count") == ratios_before + 1
    # 512*512*2 bytes * 2 frames / 262144 = 4.0: lands in the (3, 4] bucket
    le4 = total("radloop_ingestion_htj2k_ratio_bucket", le="4.0") - total("radloop_ingestion_htj2k_ratio_bucket", le="3.0")
    assert le4 >= 1
    body, _ = m.prometheus_text()
    assert "1.2.840.99.1" not in body.decode()
