"""Every dashboard query is checked against what actually exists (issue 21, "dashboards that work").

- Grafana (infra/grafana): every datasource uid a panel or target names is provisioned, with the same type; PromQL
  parses (promql-parser), names only series the services export (shared/metrics.py's catalogue) and only allowed
  labels; histogram quantiles keep ``le``; TraceQL metrics queries need ``local-blocks`` in infra/tempo/tempo.yaml
  (and, for non-server spans, ``filter_server_spans: false``); span names a panel filters on exist in the code.
- Prometheus (infra/prometheus): ``promtool check config`` / ``check rules``, and the rules' PromQL as above.
- The real Prometheus (Debian's) scrapes a running service and answers every dashboard and rule query.
- CloudWatch (infra/radloop_infra/dashboards.py): the dashboard, alarms, EMF log group and exporter, synthesized.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml

from shared.metrics import ALLOWED_LABELS, CATALOGUE
from shared.settings import Settings
from tests.infra.conftest import REPO

GRAFANA = REPO / "infra" / "grafana"
TEMPO = yaml.safe_load((REPO / "infra/tempo/tempo.yaml").read_text())
PROMETHEUS_DIR = REPO / "infra" / "prometheus"
#: Series the services export (histograms: _bucket/_sum/_count), per the catalogue the services record with.
EXPORTED = {series for spec in CATALOGUE.values() for series in spec.prometheus_series()}
#: Labels a query may use besides the instruments' own: the bucket bound and the resource's service name.
QUERY_LABELS = ALLOWED_LABELS | {"le", "service_name"}
#: Grafana's special datasources: a panel mixing sources, and server-side expressions.
SPECIAL_UIDS = {"-- Mixed --", "__expr__"}
TRACEQL_METRICS = re.compile(r"\|\s*(rate|count_over_time|quantile_over_time|histogram_over_time|min_over_time|"
                             r"max_over_time|avg_over_time|sum_over_time|compare)\s*\(")


def datasources() -> dict[str, str]:
    """uid -> type of every provisioned Grafana datasource."""
    out: dict[str, str] = {}
    for f in sorted((GRAFANA / "provisioning/datasources").glob("*.yaml")):
        for ds in yaml.safe_load(f.read_text())["datasources"]:
            assert ds["uid"] not in out, f"datasource uid {ds['uid']} provisioned twice"
            out[ds["uid"]] = ds["type"]
    return out


def targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard file, panel, target) for every query of every dashboard."""
    out = []
    for f in sorted((GRAFANA / "dashboards").glob("*.json")):
        for panel in json.loads(f.read_text())["panels"]:
            for t in panel.get("targets", []):
                out.append((f.name, panel, t))
    return out


def _id(item: tuple[str, dict[str, Any], dict[str, Any]]) -> str:
    return f"{item[0]}:{item[1]['id']}{item[2]['refId']}"


TARGETS = targets()
PROMQL = [t for t in TARGETS if t[2]["datasource"]["type"] == "prometheus"]
TRACEQL = [t for t in TARGETS if t[2]["datasource"]["type"] == "tempo"]


def alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def check_promql(expr: str) -> None:
    """Parse ``expr`` and check its series names and labels against what the services export."""
    ast = promql_parser.parse(expr)  # ValueError with the parser's message on bad syntax or unknown functions
    names: list[str] = []
    labels: set[str] = set()
    problems: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.append(node.name or "")
            for m in node.matchers.matchers:
                if m.name == "__name__":
                    names.append(m.value)
                else:
                    labels.add(m.name)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
            inner = str(node.expr)
            if "_bucket" in inner and "le" not in node.modifier.labels:
                problems.append(f"aggregation over buckets drops le: {node}")
        elif (isinstance(node, promql_parser.Call) and node.func.name == "histogram_quantile"
              and "_bucket" not in str(node.args[1])):
            problems.append(f"histogram_quantile over a non-bucket series: {node}")

    promql_parser.walk(ast, visit)
    assert not problems, problems
    assert names, f"{expr}: no series"
    unknown = [n for n in names if n not in EXPORTED]
    assert not unknown, f"{expr}: {unknown} are not exported by any service (shared/metrics.py CATALOGUE)"
    assert labels <= QUERY_LABELS, f"{expr}: labels {sorted(labels - QUERY_LABELS)} do not exist"


# --- Grafana ---------------------------------------------------------------------------------------------------------

def test_the_dashboards_have_prometheus_and_tempo_queries() -> None:
    assert len(PROMQL) >= 15 and TRACEQL
    files = {f for f, _, _ in PROMQL}
    assert {"queue-depth.json", "service-latency.json", "workload.json", "pipeline-runs.json"} <= files


@pytest.mark.parametrize("item", TARGETS, ids=_id)
def test_every_datasource_uid_exists_with_its_type(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    sources = datasources()
    _, panel, target = item
    for ref in (panel["datasource"], target["datasource"]):
        if ref["uid"] in SPECIAL_UIDS:
            continue
        assert ref["uid"] in sources, f"datasource uid {ref['uid']!r} is not provisioned"
        assert sources[ref["uid"]] == ref["type"], f"{ref['uid']} is a {sources[ref['uid']]}, not {ref['type']}"


@pytest.mark.parametrize("item", PROMQL, ids=_id)
def test_promql_parses_and_uses_exported_series_and_labels(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    _, _, target = item
    check_promql(target["expr"])
    legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    assert legend_labels <= QUERY_LABELS, f"legend uses {legend_labels - QUERY_LABELS}"


@pytest.mark.parametrize("bad", [
    "sum(rate(radloop_messages_handled_total[5m])",                          # syntax
    "histogram_quantil(0.95, radloop_http_server_duration_seconds_bucket)",   # unknown function
    "sum by (queue) (rate(radloop_messages_total[5m]))",                     # a series no service exports
    "sum by (study_uid) (rate(radloop_messages_handled_total[5m]))",         # a label that does not exist
    "histogram_quantile(0.9, sum by (queue) (rate(radloop_message_queue_age_seconds_bucket[5m])))",  # le dropped
])
def test_the_promql_check_refuses_broken_queries(bad: str) -> None:
    with pytest.raises((ValueError, AssertionError)):
        check_promql(bad)


def _tempo_processors() -> set[str]:
    return set(TEMPO["overrides"]["defaults"]["metrics_generator"]["processors"])


@pytest.mark.parametrize("item", TRACEQL, ids=_id)
def test_traceql_uses_only_what_tempo_enables(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    _, _, target = item
    q = target["query"]
    assert target["queryType"] == "traceql" and q.startswith("{") and q.count("{") == q.count("}"), q
    assert q.count("(") == q.count(")") and q.count('"') % 2 == 0, q
    if TRACEQL_METRICS.search(q):
        assert "local-blocks" in _tempo_processors(), f"{q}: TraceQL metrics need Tempo's local-blocks processor"
        assert "local_blocks" in TEMPO["metrics_generator"]["processor"]
        assert TEMPO["metrics_generator"].get("traces_storage", {}).get("path"), "local-blocks needs traces_storage"
        assert target.get("metricsQueryType") in ("range", "instant"), f"{q}: a metrics query needs metricsQueryType"
        if "kind=server" not in q.replace(" ", ""):
            assert TEMPO["metrics_generator"]["processor"]["local_blocks"].get("filter_server_spans") is False, (
                f"{q}: local-blocks keeps server spans only unless filter_server_spans is false")
    else:
        assert "metricsQueryType" not in target, f"{q}: a search query marked as metrics"
    # a span name the panel filters on must be one the code creates
    sources = "\n".join(p.read_text() for d in ("services", "shared") for p in (REPO / d).rglob("*.py"))
    for name in re.findall(r'(?<![.\w])name\s*=\s*"([^"]+)"', q):
        assert f'"{name}"' in sources, f"{q}: no span is named {name!r} in services/ or shared/"


def test_span_generator_processors_write_to_the_provisioned_prometheus() -> None:
    # service graphs and span metrics are only visible through Prometheus: they must be written somewhere real
    assert {"service-graphs", "span-metrics"} <= _tempo_processors()
    (rw,) = TEMPO["metrics_generator"]["storage"]["remote_write"]
    (prom,) = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())["datasources"]
    assert rw["url"].startswith(prom["url"])


# --- Prometheus (promtool, and the real server) ---------------------------------------------------------------------

@pytest.mark.parametrize(("alert", "expr"), alert_exprs(), ids=[a for a, _ in alert_exprs()])
def test_alert_rules_use_exported_series(alert: str, expr: str) -> None:
    check_promql(expr)


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make setup` (APT_PACKAGES has prometheus)")
    return path


@pytest.mark.integration
def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = _binary("promtool")
    for args in (["check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
                 ["check", "config", str(PROMETHEUS_DIR / "local.yml")],
                 ["check", "rules", str(PROMETHEUS_DIR / "alerts.yml")]):
        r = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr


def local_scrape_config(ports: dict[str, int], interval: str = "15s") -> dict[str, Any]:
    """infra/prometheus/local.yml (the config for `radloop up`) with other ports and interval, rules path absolute."""
    cfg = yaml.safe_load((PROMETHEUS_DIR / "local.yml").read_text())
    cfg["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    cfg["rule_files"] = [str(PROMETHEUS_DIR / r) for r in cfg["rule_files"]]
    (job,) = cfg["scrape_configs"]
    job["static_configs"] = [sc for sc in job["static_configs"] if sc["labels"]["service_name"] in ports]
    for sc in job["static_configs"]:
        sc["targets"] = [f"127.0.0.1:{ports[sc['labels']['service_name']]}"]
    return cfg


def test_the_local_config_scrapes_every_service_on_its_default_port() -> None:
    from shared.settings import DEFAULT_PORTS
    from shared.topology import SERVICES

    (job,) = yaml.safe_load((PROMETHEUS_DIR / "local.yml").read_text())["scrape_configs"]
    got = {sc["labels"]["service_name"]: sc["targets"] for sc in job["static_configs"]}
    assert got == {s: [f"127.0.0.1:{DEFAULT_PORTS[s]}"] for s in SERVICES}


@pytest.mark.integration
def test_real_prometheus_scrapes_a_service_and_answers_every_query(deployment: Settings, tmp_path: Path) -> None:
    from radloop.local.embedded_aws import free_port
    from tests.support.triage_verification_procs import running

    prometheus = _binary("prometheus")
    with running("registry", deployment, tmp_path) as svc:
        for _ in range(3):  # traffic for the latency histogram (401: no token; a route template all the same)
            httpx.get(f"{svc.url}/registry/models/7", timeout=10)
        port = free_port()
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(local_scrape_config({"registry": svc.port}, "1s")))
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed below, after the process stops
        proc = subprocess.Popen([prometheus, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{port}/api/v1/query"
        try:
            deadline = time.monotonic() + 60
            series: list[Any] = []
            while time.monotonic() < deadline and not series:
                time.sleep(1)
                if proc.poll() is not None:
                    pytest.fail(f"prometheus exited {proc.returncode}: {(tmp_path / 'prometheus.log').read_text()}")
                with_data = 'radloop_http_server_duration_seconds_count{service_name="registry"}'
                try:
                    series = httpx.get(api, params={"query": with_data}, timeout=5).json()["data"]["result"]
                except (httpx.HTTPError, KeyError, ValueError):
                    continue
            assert series, "Prometheus never scraped the service's request latency"
            assert {s["metric"]["route"] for s in series} == {"/registry/models/{version}"}
            depth = httpx.get(api, params={"query": "radloop_queue_depth"}, timeout=5).json()["data"]["result"]
            assert {s["metric"]["state"] for s in depth} == {"visible", "in_flight", "delayed"}
            # every dashboard and rule query runs on the real engine without error
            for expr in [t["expr"] for _, _, t in PROMQL] + [e for _, e in alert_exprs()]:
                r = httpx.get(api, params={"query": expr}, timeout=10).json()
                assert r["status"] == "success", f"{expr}: {r}"
            rules = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()["data"]["groups"]
            assert {r["name"] for g in rules for r in g["rules"]} == {a for a, _ in alert_exprs()}
            assert all(r["health"] != "err" for g in rules for r in g["rules"])
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            log.close()


# --- CloudWatch (CDK) -----------------------------------------------------------------------------------------------

@pytest.mark.integration  # importing aws_cdk starts its jsii node process
def test_emf_exporter_declares_catalogued_metrics_and_labels_only() -> None:
    pytest.importorskip("aws_cdk")
    from infra.radloop_infra.dashboards import EMF_DIMENSIONS, emf_exporter_config, with_emf_metrics

    assert set(EMF_DIMENSIONS) == set(CATALOGUE), "every metric gets CloudWatch dimensions (and only those)"
    for name, sets in EMF_DIMENSIONS.items():
        for dims in sets:
            assert set(dims) <= set(CATALOGUE[name].labels) | {"service.name"}, (name, dims)
    cfg = emf_exporter_config("eu-west-1", "rl")
    for decl in cfg["metric_declarations"]:
        (selector,) = decl["metric_name_selectors"]
        assert [n for n in CATALOGUE if re.fullmatch(selector.strip("^$"), n)], selector
    base = yaml.safe_load((REPO / "infra/otel-collector.yaml").read_text())
    ecs = dict(base, exporters={"awsxray": {"region": "eu-west-1"}})
    for p in ecs["service"]["pipelines"].values():
        p["exporters"] = ["awsxray"]
    out = with_emf_metrics(ecs, "eu-west-1", "rl")
    assert out["service"]["pipelines"]["metrics"]["exporters"] == ["awsemf"]
    assert out["service"]["pipelines"]["traces"]["exporters"] == ["awsxray"]
    assert set(out["exporters"]) == {"awsxray", "awsemf"}
    assert out["service"]["pipelines"]["traces"]["processors"] == base["service"]["pipelines"]["traces"]["processors"]


@pytest.mark.integration  # CDK synthesis starts its jsii node process
def test_cloudwatch_dashboard_and_alarms_synthesize() -> None:
    pytest.importorskip("aws_cdk")
    import aws_cdk as cdk
    from aws_cdk import assertions
    from aws_cdk import aws_kms as kms
    from aws_cdk import aws_sns as sns
    from aws_cdk import aws_sqs as sqs

    from infra.radloop_infra.dashboards import EMF_DIMENSIONS, MetricsDashboards, emf_namespace
    from shared.topology import build_topology

    topo = build_topology("rltest")
    app = cdk.App()
    stack = cdk.Stack(app, "DashboardsTest", env=cdk.Environment(account="111111111111", region="eu-west-1"))
    queues = {s: sqs.Queue(stack, f"Q{i}", queue_name=q.name) for i, (s, q) in enumerate(topo.queues.items())}
    dlqs = {s: sqs.Queue(stack, f"D{i}", queue_name=q.dlq_name) for i, (s, q) in enumerate(topo.queues.items())}
    services = ["ingestion", "streaming_gateway", "triage", "verification", "pipeline_orchestrator", "registry"]
    d = MetricsDashboards(stack, "Dashboards", prefix="rltest", queues=queues, dlqs=dlqs, services=services,
                          topic=sns.Topic(stack, "T"), logs_key=kms.Key(stack, "K"), retention_days=30)
    t = assertions.Template.from_stack(stack)
    tpl = t.to_json()

    (dash,) = t.find_resources("AWS::CloudWatch::Dashboard").values()
    body = json.dumps(dash["Properties"]["DashboardBody"])
    assert dash["Properties"]["DashboardName"] == "rltest-operations"
    for name in EMF_DIMENSIONS:  # every catalogued metric is on the dashboard (as a metric or a SEARCH)
        assert name in body, f"{name} missing from the CloudWatch dashboard"
    assert emf_namespace("rltest") in body and "ApproximateNumberOfMessagesVisible" in body

    alarms = t.find_resources("AWS::CloudWatch::Alarm")
    assert len(alarms) == 2 * len(queues) + 2 == len(d.alarms)
    names = {a["Properties"]["AlarmName"] for a in alarms.values()}
    assert {"rltest-urgent-studies-waiting", "rltest-training-run-failed"} <= names
    for a in alarms.values():
        p = a["Properties"]
        assert p["AlarmActions"] and p["OKActions"], p["AlarmName"]
        assert p["TreatMissingData"] == "notBreaching"
    ages = [a["Properties"] for a in alarms.values() if a["Properties"].get("MetricName") == "ApproximateAgeOfOldestMessage"]
    assert len(ages) == len(queues) and all(p["Threshold"] == 900 for p in ages)
    failures = [a["Properties"] for a in alarms.values() if "handler-failures" in a["Properties"]["AlarmName"]]
    for p in failures:
        (expr,) = [m for m in p["Metrics"] if "Expression" in m]
        metrics = [m["MetricStat"]["Metric"] for m in p["Metrics"] if "MetricStat" in m]
        assert {m["MetricName"] for m in metrics} == {"radloop.messages.handled"}
        assert all(m["Namespace"] == "radloop/rltest" for m in metrics)

    (group,) = t.find_resources("AWS::Logs::LogGroup").values()
    assert group["Properties"]["LogGroupName"] == "/rltest/metrics" and "KmsKeyId" in group["Properties"]
    assert group["Properties"]["RetentionInDays"] == 30
    # The tasks' write access is a declared need rendered into their managed policies (compute.py), not a grant here:
    # an inline policy on a task role fails cdk-nag (HIPAA.Security-IAMNoInlinePolicy).
    assert not t.find_resources("AWS::IAM::Policy") and not t.find_resources("AWS::IAM::ManagedPolicy")
    for s in services:
        assert f'\\"service.name\\",\\"{s}\\"' in body, f"{s}'s request metrics are missing from the dashboard"
    assert tpl["Resources"]


@pytest.mark.integration
def test_a_dimension_set_that_is_not_declared_is_refused() -> None:
    pytest.importorskip("aws_cdk")
    import aws_cdk as cdk
    from aws_cdk import aws_kms as kms
    from aws_cdk import aws_sns as sns

    from infra.radloop_infra.dashboards import MetricsDashboards

    stack = cdk.Stack(cdk.App(), "S")
    d = MetricsDashboards(stack, "D", prefix="p", queues={}, dlqs={}, services=[], topic=sns.Topic(stack, "T"),
                          logs_key=kms.Key(stack, "K"), retention_days=7)
    with pytest.raises(ValueError):
        d.metric("radloop.messages.handled", {"event": "InstanceStored"}, "Sum")


@pytest.mark.integration  # the whole stack, synthesized once per session (tests/infra/conftest.py)
def test_the_stack_wires_the_dashboards_and_the_emf_exporter(synth: dict[str, Any]) -> None:
    for env, s in synth.items():
        dashboards = s.of_type("AWS::CloudWatch::Dashboard")
        assert any(d["Properties"]["DashboardName"].endswith("-operations") for d in dashboards.values()), env
        configs = [e["Value"] for td in s.of_type("AWS::ECS::TaskDefinition").values()
                   for c in td["Properties"]["ContainerDefinitions"] for e in c.get("Environment", [])
                   if e["Name"] == "AOT_CONFIG_CONTENT"]
        assert configs, env
        for raw in configs:
            cfg = yaml.safe_load(raw if isinstance(raw, str) else json.dumps(raw))
            pipes = cfg["service"]["pipelines"]
            # X-Ray takes traces only: a metrics pipeline exporting to awsxray stops the ADOT sidecar from starting
            assert pipes["traces"]["exporters"] == ["awsxray"]
            assert pipes["metrics"]["exporters"] == ["awsemf"], env
            assert cfg["exporters"]["awsemf"]["log_group_name"] == f"/{s.stack.params.prefix}/metrics"
        # the sidecars write into a log group the stack creates (encrypted, retained), and wait for it
        (group_lid,) = [k for k, v in s.of_type("AWS::Logs::LogGroup").items()
                        if v["Properties"].get("LogGroupName") == f"/{s.stack.params.prefix}/metrics"]
        assert "KmsKeyId" in s.resources[group_lid]["Properties"], env
        for lid, svc in s.of_type("AWS::ECS::Service").items():
            assert group_lid in svc.get("DependsOn", []), (env, lid)
        # each task role may write there (the declared need, in its managed policy) and nowhere else
        emf = [st for p in s.of_type("AWS::IAM::ManagedPolicy").values()
               for st in p["Properties"]["PolicyDocument"]["Statement"] if st.get("Sid") == "MetricsEmf"]
        assert len(emf) == len(s.of_type("AWS::ECS::Service")), env
        for st in emf:
            assert sorted(st["Action"]) == ["logs:CreateLogStream", "logs:PutLogEvents"]
            assert f"log-group:/{s.stack.params.prefix}/metrics:*" in json.dumps(st["Resource"]), st
