"""HTTP app of the streaming gateway service: DICOMweb QIDO-RS and WADO-RS under /dicomweb, the viewer at /viewer."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from services.streaming_gateway import SERVICE
from services.streaming_gateway.api import qido, stats, wado
from services.streaming_gateway.bootstrap import shutdown, startup
from services.streaming_gateway.domain.errors import GatewayError, RangeNotSatisfiable
from services.streaming_gateway.settings import GatewaySettings
from shared.service import service_app
from shared.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway app; plain :class:`Settings` are upgraded to :class:`GatewaySettings` (env applies)."""
    if settings is None:
        gs = GatewaySettings()
    elif isinstance(settings, GatewaySettings):
        gs = settings
    else:
        gs = GatewaySettings(**settings.model_dump())
    app = service_app(
        SERVICE,
        gs,
        title="radloop streaming gateway",
        description="DICOMweb QIDO-RS and WADO-RS with progressive HTJ2K frames, rendered images and the viewer.",
        routers=[qido.router, wado.router, stats.router],
        startup=startup,
        shutdown=shutdown,
    )

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
