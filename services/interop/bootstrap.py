"""The interop service's declaration (:data:`SPEC`) and its start-up: the results builder, the forwarder, and the
Query/Retrieve SCP when a port is configured (HTTP process only)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from services.interop import SERVICE
from services.interop.adapters.archive import Archive
from services.interop.api.routes import router
from services.interop.handlers import HANDLERS
from services.interop.service import Forwarder, Results
from services.interop.settings import InteropSettings
from shared.service import Runtime, ServiceSpec

log = logging.getLogger(__name__)


@dataclass
class InteropDeps:
    """What the handlers and routes of the interop service use."""

    rt: Runtime[InteropSettings]
    results: Results
    forwarder: Forwarder
    http: httpx.AsyncClient
    #: The DIMSE Query/Retrieve SCP (``services.interop.adapters.qr_scp``), or None without ``qr_port``.
    qr_scp: Any = None


async def startup(rt: Runtime[InteropSettings]) -> InteropDeps:
    """Create the use cases; start the Q/R SCP in the HTTP process when a port is configured."""
    settings = rt.settings
    # highdicom logs every module it copies at INFO (eight lines per result, the SOP Instance UIDs in them): most of
    # the service's log in the chaos run. Its warnings still reach the log.
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, logging.getLogger().getEffectiveLevel()))
    archive = Archive(rt.clients)
    http = httpx.AsyncClient()
    deps = InteropDeps(rt=rt, results=Results(archive, settings), forwarder=Forwarder(rt.clients, archive, settings, http),
                       http=http)
    if settings.qr_port and rt.role == "app":
        from services.interop.adapters.qr_scp import QueryRetrieveSCP

        scp = QueryRetrieveSCP(rt, asyncio.get_running_loop())
        scp.start()
        deps.qr_scp = scp
        log.info("Q/R SCP listening", extra={"port": settings.qr_port, "ae_title": settings.qr_ae_title})
    return deps


async def shutdown(deps: InteropDeps) -> None:
    """Stop the SCP (after the consumer drained), close the HTTP client."""
    if deps.qr_scp is not None:
        await asyncio.to_thread(deps.qr_scp.stop)
    await deps.http.aclose()


SPEC: ServiceSpec[InteropSettings, InteropDeps] = ServiceSpec(
    name=SERVICE,
    title="radloop interop",
    description="AI results and verified reads as DICOM (Comprehensive 3D SR TID 1500, fractional SEG), forwarded to "
                "the hospital's PACS (STOW-RS, C-STORE); DIMSE Query/Retrieve (C-FIND, C-MOVE, C-GET) from the index.",
    settings=InteropSettings,
    startup=startup,
    shutdown=shutdown,
    routers=[router],
    handlers=HANDLERS,
    consumer_options=lambda s: {"concurrency": s.interop_concurrency},
)
