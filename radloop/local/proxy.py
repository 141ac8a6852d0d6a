"""The local entry point: a lean streaming reverse proxy that routes by path and method as the ALB does in AWS.

The routes are :data:`shared.topology.ROUTES` (the ALB's listener rules in infra/ are rendered from the same tuple):
one DICOMweb base URL (``http://127.0.0.1:8080/dicomweb``) serves STOW (POST → ingestion) and QIDO/WADO (GET →
streaming_gateway). Request and response bodies are streamed chunk by chunk, never held whole in memory. Paths are
not rewritten (an ALB cannot rewrite either), so each service serves its routes under its own prefix.

This is the FALLBACK entry: ``radloop up`` runs nginx (:mod:`radloop.local.entry`, config rendered from the same
ROUTES), which does the same routing at about twice this proxy's frame throughput. This one serves when nginx is not
installed or ``RADLOOP_ENTRY=python`` asks for it. Like nginx, it sets ``X-Forwarded-For``/``-Proto``/``-Host`` itself
and drops whatever forwarding headers a client sent (the services believe a trusted proxy's, shared/forwarded.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shared.settings import DEFAULT_PORTS
from shared.topology import route_for

_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length"}
#: Forwarding headers from the client: dropped, the proxy sets its own (as radloop/local/entry.py's nginx does).
_FORWARDED = {"forwarded", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
              "x-forwarded-prefix", "x-forwarded-server", "x-forwarded-ssl", "x-forwarded-scheme", "x-real-ip",
              "x-original-url", "x-rewrite-url"}


def create_proxy(ports: dict[str, int] | None = None) -> Starlette:
    ports = {**DEFAULT_PORTS, **(ports or {})}
    client = httpx.AsyncClient(timeout=httpx.Timeout(300.0, connect=5.0), limits=httpx.Limits(max_connections=256))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "service": "entry"})

    async def proxy(request: Request) -> Response:
        service = route_for(request.url.path, request.method)
        if service is None:
            return JSONResponse({"detail": f"no service serves {request.url.path}"}, status_code=404)
        url = httpx.URL(f"http://127.0.0.1:{ports[service]}{request.url.path}", query=request.url.query.encode())
        # Raw bytes both ways: a header value that is not ASCII (a client's mistake) reaches the service, which
        # answers it (401 for a garbled token), instead of failing here with a 500.
        headers: list[tuple[bytes, bytes]] = [(k, v) for k, v in request.headers.raw
                                              if k.decode("latin-1").lower() not in _HOP
                                              and k.decode("latin-1").lower() not in _FORWARDED]
        headers.append((b"x-forwarded-for", (request.client.host if request.client else "").encode()))
        headers.append((b"x-forwarded-proto", request.url.scheme.encode()))
        headers.append((b"x-forwarded-host", request.headers.get("host", "").encode("latin-1")))
        body: AsyncIterator[bytes] | None = request.stream() if request.method in ("POST", "PUT", "PATCH") else None
        upstream_req = client.build_request(request.method, url, headers=headers, content=body)
        try:
            upstream = await client.send(upstream_req, stream=True)
        except httpx.HTTPError as exc:
            return JSONResponse({"detail": f"{service} unavailable: {type(exc).__name__}"}, status_code=502)
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
        return StreamingResponse(
            upstream.aiter_raw(), status_code=upstream.status_code, headers=out_headers,
            background=BackgroundTask(upstream.aclose),
        )

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/{path:path}", proxy, methods=methods)], lifespan=lifespan
    )


def serve(ports: dict[str, int]) -> None:
    """Serve the Python proxy on 127.0.0.1 (``ports["entry"]``, else the default) in the foreground."""
    import uvicorn

    port = ports.get("entry", DEFAULT_PORTS["entry"])
    # proxy_headers=False: uvicorn would otherwise take a loopback client's own X-Forwarded-For/-Proto as the peer
    # and scheme, and this proxy would pass them on as its own.
    uvicorn.run(create_proxy(ports), host="127.0.0.1", port=port, log_config=None, access_log=False,
                proxy_headers=False)


def main() -> None:
    """``python -m radloop.local.proxy``: the entry point, nginx when installed (see :mod:`radloop.local.entry`)."""
    from radloop.local.entry import main as entry_main

    entry_main([])


if __name__ == "__main__":
    main()
