"""The entry point's nginx configs (radloop/local/entry.py): rendered from shared/topology.py ROUTES, routing exactly
as :func:`shared.topology.route_for` does, and infra/entry/nginx.conf (compose) never stale."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from radloop.local.entry import COMPOSE_CONF, render_compose, render_local, route_groups
from shared.settings import DEFAULT_PORTS
from shared.topology import ROUTES, route_for

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")


def _simulate(conf: str, path: str, method: str) -> str | None:
    """What the rendered nginx config does with ``method path``: the upstream it proxies to, or None (404).

    Regex locations in order, first match wins; a ``proxy_pass`` through a ``map $request_method`` variable
    takes the method's entry, else the map's default; a ``set`` variable or a literal upstream is taken as is.
    """
    maps = {var: dict(re.findall(r"^\s*(\S+)\s+([^;\s]+);", body, re.M))
            for var, body in re.findall(r"map \$request_method \$(\w+) \{(.*?)\n    \}", conf, re.S)}
    for regex, body in re.findall(r"location ~ (\S+) \{(.*?)\n        \}", conf, re.S):
        if not re.search(regex, path):
            continue
        target = re.search(r"proxy_pass http://(\$?)(\w[\w.:-]*);", body)
        assert target, f"{regex}: no proxy_pass"
        if not target.group(1):
            return target.group(2)
        var = target.group(2)
        if var in maps:
            up = maps[var].get(method, maps[var]["default"])
            return None if up == '""' else up
        (up,) = re.findall(rf"set \${var} ([^;]+);", body)
        return up
    return None


def _probes() -> list[tuple[str, str]]:
    paths = {"/", "/healthz", "/nothing", "/dicomwebx", "/viewerx/a"}
    for prefix, _m, _s in ROUTES:
        paths |= {prefix, prefix + "/", prefix + "/studies/1.2.3/series", prefix + "x", prefix.upper()}
    return [(p, m) for p in sorted(paths) for m in METHODS]


@pytest.mark.parametrize("flavour", ["local", "compose"])
def test_rendered_config_routes_every_request_as_route_for(flavour: str, tmp_path: Path) -> None:
    ports = {**DEFAULT_PORTS, "entry": 18080, "ingestion": 18081, "streaming_gateway": 18082}
    conf = render_local(tmp_path, ports) if flavour == "local" else render_compose(ports=ports)

    def expected(service: str | None) -> str | None:
        if service is None:
            return None
        return service if flavour == "local" else f"{service.replace('_', '-')}:{ports[service]}"

    probes = _probes()
    assert len(probes) > 100
    for path, method in probes:
        assert _simulate(conf, path, method) == expected(route_for(path, method)), (flavour, method, path)
    if flavour == "local":  # each upstream block is its service on the port given
        for service in {s for _p, _m, s in ROUTES}:
            assert re.search(rf"upstream {service} \{{\s*server 127\.0\.0\.1:{ports[service]};", conf), service


def test_compose_config_is_rendered_from_the_topology_and_not_stale() -> None:
    assert COMPOSE_CONF.read_text() == render_compose(), (
        "infra/entry/nginx.conf is stale: run `python -m radloop.local.entry --write-compose`")


def test_local_config_binds_loopback_writes_only_under_its_run_dir_and_streams(tmp_path: Path) -> None:
    conf = render_local(tmp_path / "run", {"entry": 18080})
    assert re.findall(r"^\s*listen (\S+);", conf, re.M) == ["127.0.0.1:18080"]
    paths = re.findall(r"^\s*(?:pid|\w+_temp_path) (\S+);", conf, re.M)
    assert len(paths) == 6 and all(Path(p).is_relative_to((tmp_path / "run").resolve()) for p in paths), paths
    assert "daemon off;" in conf  # the process the platform started is nginx's master: stopped by its PID
    # No log file outside var/, and no request line in any log: error-level lines quote it (so crit and above only),
    # and failed requests are logged by method, path and status (docs/security.md).
    assert "error_log stderr crit;" in conf and "access_log /dev/stderr phi_free if=$failed;" in conf
    assert not re.search(r"\$(request|request_uri|args|query_string)\b", conf)
    for directive in ("proxy_request_buffering off;", "proxy_buffering off;", "client_max_body_size 0;",
                      "proxy_http_version 1.1;", 'proxy_set_header Connection "";'):
        assert directive in conf and directive in render_compose(), directive
    assert conf.count("keepalive 64;") == len({s for _p, _m, s in ROUTES})  # kept-alive upstream connections


@pytest.mark.parametrize("conf", ["local", "compose"])
def test_forwarded_headers_are_the_proxys_own(conf: str, tmp_path: Path) -> None:
    """The services believe X-Forwarded-Host/-Proto and Forwarded from a trusted proxy (shared/forwarded.py): the
    proxy sets each from the connection and drops what a client sent, never appends to it."""
    text = render_local(tmp_path, {}) if conf == "local" else render_compose()
    set_headers = dict(re.findall(r"^\s*proxy_set_header (\S+) (.+);", text, re.M))
    assert set_headers["X-Forwarded-For"] == "$remote_addr"  # not $proxy_add_x_forwarded_for (the client's list)
    assert set_headers["X-Forwarded-Proto"] == "$scheme"
    assert set_headers["X-Forwarded-Host"] == "$http_host"  # with the port the client used
    for dropped in ("Forwarded", "X-Real-IP", "X-Forwarded-Port", "X-Forwarded-Prefix"):
        assert set_headers[dropped] == '""', dropped
    # every location inherits them: none sets headers of its own (that would reset the inherited list)
    server = text[text.index("    server {"):]
    assert "proxy_set_header" not in server


def test_routes_that_nginx_locations_cannot_express_are_refused() -> None:
    with pytest.raises(ValueError, match="nests"):
        route_groups([("/a", frozenset({"POST"}), "ingestion"), ("/a/b", None, "registry"), ("/a", None, "triage")])
    with pytest.raises(ValueError, match="plain path"):
        route_groups([("/a(.*)", None, "registry")])
    # a method route after the prefix's catch-all is unreachable, in route_for as here
    assert route_groups([("/a", None, "registry"), ("/a", frozenset({"POST"}), "triage")]) == [("/a", {}, "registry")]
    # a prefix with method routes only: other methods get no upstream (404)
    conf = render_compose([("/a", frozenset({"POST"}), "registry")])
    assert _simulate(conf, "/a/x", "POST") == f"registry:{DEFAULT_PORTS['registry']}"
    assert _simulate(conf, "/a/x", "GET") is None and 'return 404;' in conf
