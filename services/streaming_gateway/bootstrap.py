"""The streaming gateway's declaration: its dependencies, start-up, shutdown and :data:`SPEC`.

The gateway handles no events (no worker): it serves DICOMweb QIDO-RS/WADO-RS and the built viewer.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import ClientError
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.streaming_gateway import SERVICE
from services.streaming_gateway.adapters.audit import FrameAuditCoalescer
from services.streaming_gateway.adapters.frame_store import FrameStore
from services.streaming_gateway.adapters.index import IndexReader
from services.streaming_gateway.api import qido, signin, stats, wado
from services.streaming_gateway.api.ohif import add_cors, mount_ohif
from services.streaming_gateway.domain.frames import FrameCache
from services.streaming_gateway.domain.search import Searcher
from services.streaming_gateway.service import Gateway
from services.streaming_gateway.settings import GatewaySettings
from shared.image_store.factory import open_image_store
from shared.service import Runtime, ServiceSpec

log = logging.getLogger(__name__)


@dataclass
class StreamingGatewayDeps:
    """What the gateway's routes use: the runtime (audit log) and the :class:`Gateway`."""

    rt: Runtime[GatewaySettings]
    gateway: Gateway


async def startup(rt: Runtime[GatewaySettings]) -> StreamingGatewayDeps:
    """Create the index reader, the frame cache over the image store (``RADLOOP_IMAGE_STORE``), the audit coalescer and
    worker threads; warm the AWS clients."""
    s = rt.settings
    index = IndexReader(rt.clients, series_cache_bytes=s.series_cache_bytes, instance_ttl_s=s.instance_cache_ttl_s)
    frames = FrameStore(
        open_image_store(s, rt.clients),
        FrameCache(s.frame_cache_bytes),
        prefetch_concurrency=s.prefetch_concurrency,
        prefetch_budget_share=s.prefetch_budget_share,
    )
    coalescer = FrameAuditCoalescer(rt.audit, s.audit_coalesce_s)
    coalescer.start()
    gateway = Gateway(
        settings=s,
        index=index,
        searcher=Searcher(index, max_results=s.qido_max_results, max_examined=s.qido_max_examined,
                          deadline_s=s.qido_deadline_s),
        frames=frames,
        frame_audit=coalescer,
        executor=ThreadPoolExecutor(max_workers=max(1, s.decode_threads), thread_name_prefix="gateway-cpu"),
        decoded=FrameCache(s.decoded_cache_bytes),
        rendered=FrameCache(s.rendered_cache_bytes),
    )
    await _warm_up(rt)
    return StreamingGatewayDeps(rt=rt, gateway=gateway)


async def _warm_up(rt: Runtime[GatewaySettings]) -> None:
    """Open the pooled clients and make one call each now: botocore loads its models and endpoint rules on the
    first call, which would otherwise add hundreds of milliseconds to the first image a radiologist opens."""
    topo = rt.settings.topology
    try:
        s3 = await rt.clients.s3()
        with contextlib.suppress(ClientError):  # a missing key still loads GetObject's model and parsers
            await s3.get_object(Bucket=topo.bucket("images"), Key="warm-up/none")
        ddb = await rt.clients.dynamodb()
        await ddb.query(TableName=topo.table("instances"), KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": {"S": "WARMUP"}}, Limit=1)
        await ddb.batch_get_item(RequestItems={topo.table("instances"): {
            "Keys": [{"pk": {"S": "WARMUP"}, "sk": {"S": "WARMUP"}}]}})
    except Exception as exc:  # not fatal: /readyz reports unreachable dependencies
        log.warning("warm-up call failed", extra={"error": type(exc).__name__})


async def shutdown(deps: StreamingGatewayDeps) -> None:
    """Stop prefetches, write the pending frame-audit counts, stop the worker threads."""
    await deps.gateway.close()


def configure(app: FastAPI, settings: GatewaySettings) -> None:
    """Mount the built viewer at /viewer (static code, no PHI; every data request it makes is authenticated).

    ``check_dir=False``: the folder may appear after the gateway started (another build puts it there).
    """
    app.mount("/viewer", StaticFiles(directory=settings.viewer_dist, html=True, check_dir=False), name="viewer")
    mount_ohif(app, settings.ohif_dist)  # the OHIF build (make ohif), docs/interop.md
    add_cors(app, settings.cors_allow_origins)


SPEC: ServiceSpec[GatewaySettings, StreamingGatewayDeps] = ServiceSpec(
    name=SERVICE,
    title="radloop streaming gateway",
    description="DICOMweb QIDO-RS and WADO-RS with progressive HTJ2K frames, rendered images and the viewer.",
    settings=GatewaySettings,
    startup=startup,
    shutdown=shutdown,
    routers=[qido.router, wado.router, stats.router, signin.router],  # signin: /viewer/auth, before the mount
    handlers=None,
    configure=configure,
    warm_prefixes=("/dicomweb", "/streaming"),
)
