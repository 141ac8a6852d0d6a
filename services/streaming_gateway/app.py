"""HTTP app of the streaming gateway service: DICOMweb QIDO-RS and WADO-RS under /dicomweb, the viewer at /viewer."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from services.streaming_gateway import SERVICE
from services.streaming_gateway.api import qido, stats, wado
from services.streaming_gateway.bootstrap import shutdown, startup
from services.streaming_gateway.domain.errors import GatewayError, RangeNotSatisfiable
from services.streaming_gateway.settings import GatewaySettings
from shared.service import ServiceContext, service_app
from shared.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway app; plain :class:`Settings` are upgraded to :class:`GatewaySettings` (env applies)."""
    if settings is None:
        gs = GatewaySettings()
    elif isinstance(settings, GatewaySettings):
        gs = settings
    else:
        gs = GatewaySettings(**settings.model_dump())
    holder: dict[str, FastAPI] = {}

    async def start(ctx: ServiceContext) -> None:
        await startup(ctx)
        await _warm_routes(holder["app"])

    app = service_app(
        SERVICE,
        gs,
        title="radloop streaming gateway",
        description="DICOMweb QIDO-RS and WADO-RS with progressive HTJ2K frames, rendered images and the viewer.",
        routers=[qido.router, wado.router, stats.router],
        startup=start,
        shutdown=shutdown,
    )
    holder["app"] = app

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RangeNotSatisfiable):
            headers["Content-Range"] = f"bytes */{exc.length}"
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)

    # The built viewer (static code, no PHI) when another build put it there; every data request it makes is
    # authenticated. check_dir=False: the folder may appear after the gateway started.
    app.mount("/viewer", StaticFiles(directory=gs.viewer_dist, html=True, check_dir=False), name="viewer")
    return app


async def _warm_routes(app: FastAPI) -> None:
    """Send one unauthenticated request (answered 401) through every DICOMweb route, in process, before serving.

    FastAPI and its OpenTelemetry instrumentation build each route's dependency state on the first request, which
    took most of a second here: without this, the first image a radiologist opens would pay for it.
    """
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> MutableMapping[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    for route in app.routes:
        path = getattr(route, "path", "")
        if not path.startswith(("/dicomweb", "/streaming")):
            continue
        concrete = path.replace("{frame_list}", "1")
        for name in ("study", "series", "sop"):
            concrete = concrete.replace("{" + name + "}", "1")
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": concrete, "raw_path": concrete.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"warm-up")], "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0),
        }
        try:
            await app(scope, receive, send)
        except Exception:  # warming is best effort
            log.debug("route warm-up failed", extra={"path": path})
