"""compose.yaml and the Grafana/Tempo/collector files, checked by parsing (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from shared.settings import DEFAULT_PORTS
from shared.topology import SERVICES
from tests.infra.conftest import accepted_env_names as _accepted_env_names
from tests.infra.conftest import settings_class as _settings_class

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
GRAFANA = REPO / "infra" / "grafana"


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return env


def test_every_service_and_the_observability_stack_is_present() -> None:
    services = COMPOSE["services"]
    for s in SERVICES:
        name = s.replace("_", "-")
        assert name in services, f"compose.yaml lacks {name}"
        # every service is built from the one Dockerfile at the root, which picks the service by its SERVICE argument
        build = services[name]["build"]
        assert build["context"] == "." and build.get("dockerfile", "Dockerfile") == "Dockerfile"
        assert build["args"] == {"SERVICE": s}
        assert (REPO / "services" / s).is_dir()
    assert (REPO / "Dockerfile").exists()
    assert not list(REPO.glob("services/*/Dockerfile")), "the services are built from the root Dockerfile only"
    for extra in ("aws", "bootstrap", "otel-collector", "tempo", "grafana", "prometheus", "entry"):
        assert extra in services
    assert services["aws"]["image"].startswith("motoserver/moto:")


@pytest.mark.parametrize("service", SERVICES)
def test_environment_names_match_the_settings_fields(service: str) -> None:
    svc = COMPOSE["services"][service.replace("_", "-")]
    env = _env(svc)
    accepted = _accepted_env_names(_settings_class(service))
    for name in env:
        if name.startswith("RADLOOP_"):
            assert name in accepted, f"{service}: {name} is not a field of {_settings_class(service).__name__}"
        else:
            assert name.startswith(("AWS_", "OTEL_")), f"{service}: unexpected variable {name}"
    assert env["RADLOOP_PORT"] == str(DEFAULT_PORTS[service])
    assert env["AWS_ENDPOINT_URL"] == "http://aws:4566"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://otel-collector:")
    # The values parse as Settings do in the container.
    cls = _settings_class(service)
    cls(**{k.removeprefix("RADLOOP_").lower(): v for k, v in env.items()
           if k.startswith("RADLOOP_") and k.removeprefix("RADLOOP_").lower() in cls.model_fields})


def test_host_ports_do_not_clash() -> None:
    seen: dict[str, str] = {}
    for name, svc in COMPOSE["services"].items():
        for mapping in svc.get("ports", []):
            parts = str(mapping).split(":")
            host = ":".join(parts[:-1])
            assert host not in seen, f"{name} and {seen.get(host)} both publish {host}"
            seen[host] = name
            assert parts[0] == "127.0.0.1", f"{name} publishes {mapping} beyond loopback"
    assert len(seen) >= len(SERVICES) + 4


def test_collector_exports_traces_to_tempo() -> None:
    coll = COMPOSE["services"]["otel-collector"]
    mount = next(v for v in coll["volumes"] if v.endswith("/etc/otelcol/config.yaml:ro"))
    cfg = yaml.safe_load((REPO / mount.split(":")[0].removeprefix("./")).read_text())
    exporters = cfg["service"]["pipelines"]["traces"]["exporters"]
    assert exporters, "the traces pipeline exports nowhere"
    for e in exporters:
        assert e.split("/")[0] in ("otlp", "otlphttp")
        endpoint = cfg["exporters"][e]["endpoint"]
        assert endpoint.split("//")[-1].split(":")[0] == "tempo"
    assert "tempo" in COMPOSE["services"]
    receivers = cfg["receivers"]["otlp"]["protocols"]
    assert receivers["http"]["endpoint"].endswith(":4318")
    tempo_cfg = yaml.safe_load((REPO / "infra/tempo/tempo.yaml").read_text())
    assert "otlp" in tempo_cfg["distributor"]["receivers"]


@pytest.mark.integration  # importing the CDK app starts its jsii node process
def test_ecs_reuses_the_collector_config_with_xray_for_traces_and_emf_for_metrics() -> None:
    pytest.importorskip("aws_cdk")
    from infra.radloop_infra.compute import ecs_collector_config

    cfg = ecs_collector_config("eu-west-1", "rl")
    base = yaml.safe_load((REPO / "infra/otel-collector.yaml").read_text())
    assert cfg["receivers"] == base["receivers"] and cfg["processors"] == base["processors"]
    pipes = cfg["service"]["pipelines"]
    assert set(pipes) == set(base["service"]["pipelines"])
    assert pipes["traces"]["exporters"] == ["awsxray"]
    # X-Ray accepts traces only: the collector refuses a metrics pipeline that exports to awsxray (the sidecar
    # would not start). Metrics go to CloudWatch EMF, and the local prometheus exporter is not carried over.
    for name, p in pipes.items():
        assert ("awsxray" in p["exporters"]) == name.startswith("traces"), name
    assert pipes["metrics"]["exporters"] == ["awsemf"]
    assert set(cfg["exporters"]) == {"awsxray", "awsemf"}


def test_grafana_provisioning_is_valid() -> None:
    grafana = COMPOSE["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0].removeprefix("./") for v in grafana["volumes"]}
    prov = REPO / mounts["/etc/grafana/provisioning"]
    (ds,) = yaml.safe_load((prov / "datasources/tempo.yaml").read_text())["datasources"]
    assert ds["type"] == "tempo" and ds["url"] == "http://tempo:3200" and ds["uid"] == "tempo"
    (prom,) = yaml.safe_load((prov / "datasources/prometheus.yaml").read_text())["datasources"]
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090" and prom["uid"] == "prometheus"
    # the service map reads Tempo's service-graph metrics from a Prometheus that exists
    assert ds["jsonData"]["serviceMap"]["datasourceUid"] == prom["uid"]
    sources = {ds["uid"]: ds, prom["uid"]: prom}
    provider = yaml.safe_load((prov / "dashboards/radloop.yaml").read_text())["providers"][0]
    assert provider["type"] == "file"
    dash_dir = REPO / mounts[provider["options"]["path"]]
    dashboards = {p.name: json.loads(p.read_text()) for p in dash_dir.glob("*.json")}
    assert {"service-latency.json", "queue-depth.json", "pipeline-runs.json", "trace-search.json",
            "workload.json"} <= set(dashboards)
    uids = set()
    for name, d in dashboards.items():
        assert d["uid"] not in uids and d["title"] and d["panels"], name
        uids.add(d["uid"])
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for p in d["panels"]:
            assert p["datasource"]["uid"] in (*sources, "-- Mixed --"), f"{name}: {p['title']} uses another source"
            for t in p["targets"]:
                if t["datasource"]["uid"] == "__expr__":  # a server-side expression over the panel's queries
                    refs = {x["refId"] for x in p["targets"]}
                    assert set(re.findall(r"\$(\w+)", t["expression"])) <= refs, f"{name}: {t['expression']}"
                elif t["datasource"]["uid"] == prom["uid"]:  # PromQL (parsed in tests/infra/test_dashboards.py)
                    assert t["expr"] and t["datasource"]["type"] == "prometheus", f"{name}: {p['title']}"
                else:
                    assert t["datasource"]["uid"] == ds["uid"] and t["query"].startswith("{"), f"{name}: not TraceQL"
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24


# --- the entry proxy and Prometheus (issue 21) -----------------------------------------------------------------------

def _nginx_routes(conf: str) -> list[tuple[str, frozenset[str] | None, str]]:
    """(prefix, methods, upstream host:port) for every proxied location of infra/entry/nginx.conf, in ROUTES' shape."""
    maps: dict[str, dict[str, str]] = {}
    for var, body in re.findall(r"map \$request_method \$(\w+) \{(.*?)\}", conf, re.S):
        maps[var] = dict(re.findall(r"^\s*(\S+)\s+([^;\s]+);", body, re.M))
    out: list[tuple[str, frozenset[str] | None, str]] = []
    for prefix, body in re.findall(r"location ~ \^(/[\w-]+)\(/\|\$\) \{(.*?)\}", conf, re.S):
        target = re.search(r"proxy_pass http://\$(\w+);", body)
        assert target, f"{prefix}: no proxy_pass through a variable (nginx would resolve at start-up and fail)"
        var = target.group(1)
        if var in maps:  # method-dependent: each non-default method first, then the default
            for method, upstream in maps[var].items():
                if method != "default":
                    out.append((prefix, frozenset({method}), upstream))
            out.append((prefix, None, maps[var]["default"]))
        else:
            (upstream,) = re.findall(rf"set \${var} ([^;]+);", body)
            out.append((prefix, None, upstream))
    return out


def test_entry_proxy_routes_are_the_topology_routes() -> None:
    from shared.topology import ROUTES

    entry = COMPOSE["services"]["entry"]
    mount = next(v for v in entry["volumes"] if v.endswith(":/etc/nginx/nginx.conf:ro"))
    conf = (REPO / mount.split(":")[0].removeprefix("./")).read_text()
    expected = [(prefix, methods, f"{service.replace('_', '-')}:{DEFAULT_PORTS[service]}")
                for prefix, methods, service in ROUTES]
    assert _nginx_routes(conf) == expected
    for _prefix, _methods, upstream in expected:  # every upstream is a compose service on its published port
        host, port = upstream.split(":")
        assert _env(COMPOSE["services"][host])["RADLOOP_PORT"] == port
    assert "127.0.0.1:8080:8080" in entry["ports"] and f"listen {DEFAULT_PORTS['entry']};" in conf
    # Request lines hold QIDO matching keys: no access log of them, and no error-level lines (they quote them).
    assert "$request " not in conf and "$request_uri" not in conf and "$args" not in conf and "$query_string" not in conf
    assert "access_log /dev/stderr phi_free if=$failed;" in conf and "error_log /dev/stderr crit;" in conf
    assert "proxy_request_buffering off;" in conf and "client_max_body_size 0;" in conf


def test_prometheus_scrapes_the_collector_which_exports_the_services_metrics() -> None:
    prom = COMPOSE["services"]["prometheus"]
    host_dir = next(v.split(":")[0] for v in prom["volumes"] if v.split(":")[1] == "/etc/prometheus")
    cfg = yaml.safe_load((REPO / host_dir.removeprefix("./") / "prometheus.yml").read_text())
    targets = {t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    collector = yaml.safe_load((REPO / "infra/otel-collector.yaml").read_text())
    metrics = collector["service"]["pipelines"]["metrics"]
    assert metrics["receivers"] == ["otlp"] and metrics["exporters"] == ["prometheus"]
    endpoint = collector["exporters"]["prometheus"]["endpoint"]
    assert f"otel-collector:{endpoint.rsplit(':', 1)[1]}" in targets
    assert collector["exporters"]["prometheus"]["resource_to_telemetry_conversion"]["enabled"] is True
    # Tempo remote-writes its generated metrics to this Prometheus, which must accept them
    tempo = yaml.safe_load((REPO / "infra/tempo/tempo.yaml").read_text())
    (rw,) = tempo["metrics_generator"]["storage"]["remote_write"]
    assert rw["url"] == "http://prometheus:9090/api/v1/write"
    assert "--web.enable-remote-write-receiver" in prom["command"]
    for svc in SERVICES:  # the services push metrics where the collector listens
        env = _env(COMPOSE["services"][svc.replace("_", "-")])
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert env.get("OTEL_METRICS_EXPORTER", "otlp") != "none"
