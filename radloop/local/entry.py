"""The local entry point: nginx in front of the services, its config rendered from :data:`shared.topology.ROUTES`.

One renderer, two outputs, so the routes live in one place (the CDK app's ALB listener rules read the same tuple):

- :func:`render_local` -- the config ``radloop up`` runs (``python -m radloop.local.entry``): listens on 127.0.0.1
  only, upstreams are ``127.0.0.1:<port>`` with kept-alive connections, and the pid file, temp paths and the config
  itself live under ``{var_dir}/run/entry-<port>/``. nginx runs in the foreground (``daemon off``) as the process
  the platform started, so it is stopped by that PID (SIGTERM: nginx's fast shutdown, which ends its worker too).
- :func:`render_compose` -- ``infra/entry/nginx.conf``, mounted by compose.yaml: compose service names through
  Docker's DNS, read per request. Regenerate with ``python -m radloop.local.entry --write-compose``;
  tests/infra/test_entry_config.py fails when the file is stale.

Both stream bodies both ways (no request or response buffering: a STOW of many instances or a whole series of
frames is never held whole), set ``X-Forwarded-For``/``-Proto``/``-Host`` themselves and drop any such header a
client sent (the services believe a trusted proxy's forwarded headers, shared/forwarded.py), and keep no access log
(request lines hold study UIDs and QIDO matching keys).

Without nginx (``which nginx`` finds none; ``make setup`` installs Debian's ``nginx``), or with
``RADLOOP_ENTRY=python``, the entry falls back to the Python proxy of :mod:`radloop.local.proxy` (same routes and
headers, about half the gateway's frame throughput) and says so in its log.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from shared.settings import DEFAULT_PORTS
from shared.topology import ROUTES

Route = tuple[str, frozenset[str] | None, str]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_CONF = REPO / "infra" / "entry" / "nginx.conf"

#: Forwarding headers a client may send that some framework believes: each is replaced by the proxy's own value
#: (the first three) or removed (an empty value makes nginx drop the header).
_FORWARDED_SET = (("X-Forwarded-For", "$remote_addr"), ("X-Forwarded-Proto", "$scheme"),
                  ("X-Forwarded-Host", "$http_host"))
_FORWARDED_DROP = ("Forwarded", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server",
                   "X-Forwarded-Ssl", "X-Forwarded-Scheme", "X-Real-IP", "X-Original-URL", "X-Rewrite-URL")


def route_groups(routes: Sequence[Route] = ROUTES) -> list[tuple[str, dict[str, str], str | None]]:
    """``(prefix, {method: service}, default service)`` per prefix, in order of first appearance.

    nginx picks the first regex location that matches, so this grouping routes like
    :func:`shared.topology.route_for` (first match wins) as long as no prefix lies under an earlier one; a ROUTES
    tuple that breaks that (or names a prefix that is not a plain path) is refused rather than rendered wrong.
    """
    groups: dict[str, tuple[dict[str, str], list[str]]] = {}
    for prefix, methods, service in routes:
        if not prefix.startswith("/") or not all(c.isalnum() or c in "/-_." for c in prefix) or prefix.endswith("/"):
            raise ValueError(f"route prefix {prefix!r} is not a plain path")
        for other in groups:
            if other != prefix and (prefix.startswith(other + "/") or other.startswith(prefix + "/")):
                raise ValueError(f"route prefix {prefix!r} nests with {other!r}: nginx locations would not route "
                                 "like ROUTES")
        by_method, default = groups.setdefault(prefix, ({}, []))
        if methods is None:
            if not default:
                default.append(service)
        else:
            for m in sorted(methods):
                if not default:  # a method route after the catch-all is never reached (as in route_for)
                    by_method.setdefault(m, service)
    return [(p, m, d[0] if d else None) for p, (m, d) in groups.items()]


def _var(prefix: str) -> str:
    return prefix.strip("/").replace("/", "_").replace("-", "_").replace(".", "_") + "_upstream"


#: Where the entry writes its failed requests (the same stream as its error log).
_FAILED_LOG = "/dev/stderr"


def _http_common(lines: list[str]) -> None:
    lines += [
        "    # No request lines in any log: they hold QIDO matching keys (PHI). nginx's error log quotes the request line",
        "    # in every error-level message (an upstream that refuses or times out), so it keeps only crit and above;",
        "    # requests that fail (5xx) are logged here instead: method, path and status, no query string.",
        "    log_format phi_free '$time_iso8601 $request_method $uri $status upstream=$upstream_status '",
        "                        '$request_time s';",
        "    map $status $failed {",
        "        ~^5 1;",
        "        default 0;",
        "    }",
        f"    access_log {_FAILED_LOG} phi_free if=$failed;",
        "    # ingestion enforces its own body limit (a DICOM status with a reason); the proxy neither limits nor buffers.",
        "    client_max_body_size 0;",
        "    proxy_request_buffering off;",
        "    proxy_buffering off;",
        "    proxy_buffer_size 64k;",
        "    proxy_buffers 4 64k;",
        "    proxy_http_version 1.1;",
        "    proxy_read_timeout 300s;",
        "    proxy_send_timeout 300s;",
        "    proxy_set_header Connection \"\";",
        "    # The services believe these from a trusted proxy (shared/forwarded.py): the proxy sets its own and drops",
        "    # whatever a client sent under these names.",
    ]
    lines += [f"    proxy_set_header {name} {value};" for name, value in _FORWARDED_SET]
    lines += [f"    proxy_set_header {name} \"\";" for name in _FORWARDED_DROP]


def _server(lines: list[str], listen: str, routes: Sequence[Route], target: Callable[[str], str],
            via_variable: bool) -> None:
    """The server block: /healthz, one regex location per prefix (first match wins, like ROUTES), a JSON 404."""
    groups = route_groups(routes)
    for prefix, by_method, default in groups:
        if by_method:
            lines.append(f"    # ROUTES for {prefix}: " + ", ".join(f"{m} -> {s}" for m, s in by_method.items())
                         + f", then {default or 'nothing (404)'}.")
            lines.append(f"    map $request_method ${_var(prefix)} {{")
            lines += [f"        {m:<7} {target(s)};" for m, s in by_method.items()]
            fallback = target(default) if default else '""'
            lines.append(f"        default {fallback};")
            lines.append("    }")
            lines.append("")
    lines += [
        "    server {",
        f"        listen {listen};",
        "",
        "        location = /healthz {",
        "            default_type application/json;",
        "            return 200 '{\"status\": \"ok\", \"service\": \"entry\"}';",
        "        }",
        "",
    ]
    for prefix, by_method, default in groups:
        lines.append(f"        location ~ ^{prefix}(/|$) {{")
        if by_method:
            if default is None:
                lines.append(f"            if (${_var(prefix)} = \"\") {{ return 404; }}")
            lines.append(f"            proxy_pass http://${_var(prefix)};")
        elif via_variable:
            lines.append(f"            set ${_var(prefix)} {target(default or '')};")
            lines.append(f"            proxy_pass http://${_var(prefix)};")
        else:
            lines.append(f"            proxy_pass http://{target(default or '')};")
        lines.append("        }")
    lines += [
        "",
        "        location / {",
        "            default_type application/json;",
        "            return 404 '{\"detail\": \"no service serves this path\"}';",
        "        }",
        "",
        "        # A service that is down or not answering: JSON, like the services' own errors.",
        "        error_page 502 503 504 = @unavailable;",
        "        location @unavailable {",
        "            default_type application/json;",
        "            return 502 '{\"detail\": \"service unavailable\"}';",
        "        }",
        "    }",
        "}",
    ]


def render_compose(routes: Sequence[Route] = ROUTES, ports: dict[str, int] | None = None) -> str:
    """infra/entry/nginx.conf: the entry of compose.yaml (upstreams are compose services on their fixed ports)."""
    ports = {**DEFAULT_PORTS, **(ports or {})}
    lines = [
        "# GENERATED by `python -m radloop.local.entry --write-compose` from shared/topology.py ROUTES: do not edit.",
        "# The entry proxy of compose.yaml: one origin (http://127.0.0.1:8080) routing by path and method exactly as",
        "# `radloop up`'s entry (radloop/local/entry.py, the same renderer) and the ALB do: STOW (POST /dicomweb) ->",
        "# ingestion, QIDO/WADO (GET /dicomweb) and the viewers -> streaming-gateway, /verification, /registry,",
        "# /orchestrator -> their services. Paths and query strings pass unchanged (an ALB cannot rewrite either);",
        "# bodies stream both ways, never buffered whole.",
        "worker_processes 1;",
        "pid /tmp/nginx.pid;",
        "error_log /dev/stderr crit;  # error-level lines quote the request line (PHI): see access_log below",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
        "    # Docker's embedded DNS, read per request (upstreams in variables): nginx starts before the services answer,",
        "    # and a restarted service's new address is picked up.",
        "    resolver 127.0.0.11 valid=10s ipv6=off;",
        "    client_body_temp_path /tmp/client_body;",
        "    proxy_temp_path /tmp/proxy;",
        "    fastcgi_temp_path /tmp/fastcgi;",
        "    uwsgi_temp_path /tmp/uwsgi;",
        "    scgi_temp_path /tmp/scgi;",
    ]
    _http_common(lines)
    lines.append("")
    _server(lines, str(ports["entry"]), routes, lambda s: f"{s.replace('_', '-')}:{ports[s]}", via_variable=True)
    return "\n".join(lines) + "\n"


def render_local(run_dir: Path, ports: dict[str, int], routes: Sequence[Route] = ROUTES, *,
                 workers: int = 1, replicas: dict[str, list[int]] | None = None) -> str:
    """The config ``radloop up`` runs: 127.0.0.1 only, kept-alive upstreams, every file nginx writes in ``run_dir``.

    ``replicas``: more ports per service (``RADLOOP_LOCAL_GATEWAY_REPLICAS``); its upstream then sends each request
    to the replica with the fewest requests in flight.
    """
    ports = {**DEFAULT_PORTS, **ports}
    replicas = replicas or {}
    d = run_dir.resolve()
    lines = [
        "# GENERATED by radloop/local/entry.py from shared/topology.py ROUTES for this run: do not edit.",
        f"worker_processes {workers};",
        "daemon off;",
        f"pid {d / 'nginx.pid'};",
        "error_log stderr crit;  # error-level lines quote the request line (PHI): see access_log below",
        "",
        "events {",
        "    worker_connections 1024;",
        "}",
        "",
        "http {",
    ]
    lines += [f"    {kind}_temp_path {d / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    _http_common(lines)
    lines.append("")
    for service in dict.fromkeys(s for _p, _m, s in routes):
        servers = [ports[service], *replicas.get(service, ())]
        lines += [f"    upstream {service} {{", *(["        least_conn;"] if len(servers) > 1 else []),
                  *(f"        server 127.0.0.1:{p};" for p in servers), "        keepalive 64;", "    }"]
    lines.append("")
    _server(lines, f"127.0.0.1:{ports['entry']}", routes, lambda s: s, via_variable=False)
    return "\n".join(lines) + "\n"


def nginx_binary() -> str | None:
    """nginx on PATH (or Debian's /usr/sbin/nginx), unless ``RADLOOP_ENTRY=python`` asks for the Python proxy."""
    if os.environ.get("RADLOOP_ENTRY", "").lower() == "python":
        return None
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def prepare(var_dir: Path, ports: dict[str, int]) -> tuple[list[str], Path]:
    """Write the local config under ``{var_dir}/run/entry-<port>/``; returns nginx's argv and the pid file path."""
    nginx = nginx_binary()
    if nginx is None:
        raise FileNotFoundError("nginx is not installed")
    run_dir = var_dir.resolve() / "run" / f"entry-{ports.get('entry', DEFAULT_PORTS['entry'])}"
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(render_local(run_dir, ports, replicas=_env_replicas()))
    # -p: nginx's prefix (relative paths), -e: its start-up error log (before the config's error_log applies)
    return [nginx, "-p", str(run_dir), "-e", "stderr", "-c", str(conf)], run_dir / "nginx.pid"


def _env_replicas() -> dict[str, list[int]]:
    """``RADLOOP_REPLICA_PORTS_<SERVICE>=p2,p3`` (the local platform sets it): a service's extra replicas."""
    out: dict[str, list[int]] = {}
    for s in DEFAULT_PORTS:
        raw = os.environ.get(f"RADLOOP_REPLICA_PORTS_{s.upper()}", "")
        ports = [int(p) for p in raw.split(",") if p.strip().isdigit()]
        if ports:
            out[s] = ports
    return out


def _env_ports() -> dict[str, int]:
    ports = {s: int(os.environ[f"RADLOOP_PORT_{s.upper()}"]) for s in DEFAULT_PORTS
             if os.environ.get(f"RADLOOP_PORT_{s.upper()}", "").isdigit()}
    if os.environ.get("RADLOOP_PORT", "").isdigit():
        ports["entry"] = int(os.environ["RADLOOP_PORT"])
    return ports


def main(argv: Sequence[str] | None = None) -> None:
    """Run the entry in the foreground: exec nginx (this process becomes it, same PID), else the Python proxy."""
    ap = argparse.ArgumentParser(description="radloop's local entry point (nginx, from shared/topology.py ROUTES)")
    ap.add_argument("--write-compose", action="store_true", help=f"rewrite {COMPOSE_CONF.relative_to(REPO)} and exit")
    args = ap.parse_args(argv)
    if args.write_compose:
        COMPOSE_CONF.write_text(render_compose())
        print(f"wrote {COMPOSE_CONF}")
        return
    ports = _env_ports()
    var_dir = Path(os.environ.get("RADLOOP_VAR_DIR", "var"))
    try:
        nginx_argv, _pid = prepare(var_dir, ports)
    except FileNotFoundError:
        print("radloop entry: nginx not found (make setup installs it); serving with the Python proxy",
              file=sys.stderr, flush=True)
        from radloop.local.proxy import serve

        serve(ports)
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(nginx_argv[0], nginx_argv)


if __name__ == "__main__":
    main()
