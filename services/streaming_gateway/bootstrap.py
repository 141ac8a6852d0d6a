"""Wires the streaming gateway service's dependencies into its context at start-up."""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import ClientError

from services.streaming_gateway.domain.audit import FrameAuditCoalescer
from services.streaming_gateway.domain.frames import FrameCache, FrameStore
from services.streaming_gateway.domain.gateway import Gateway
from services.streaming_gateway.domain.index import IndexReader
from services.streaming_gateway.domain.search import Searcher
from services.streaming_gateway.settings import GatewaySettings
from shared.service import ServiceContext

log = logging.getLogger(__name__)


async def startup(ctx: ServiceContext) -> None:
    """Create the index reader, frame cache and store, audit coalescer and worker threads (``ctx.extras['gateway']``)."""
    s = ctx.settings
    assert isinstance(s, GatewaySettings)
    index = IndexReader(ctx.clients, series_cache_bytes=s.series_cache_bytes, instance_ttl_s=s.instance_cache_ttl_s)
    frames = FrameStore(
        ctx.clients,
        FrameCache(s.frame_cache_bytes),
        prefetch_concurrency=s.prefetch_concurrency,
        prefetch_budget_share=s.prefetch_budget_share,
    )
    coalescer = FrameAuditCoalescer(ctx.audit, s.audit_coalesce_s)
    coalescer.start()
    ctx.extras["gateway"] = Gateway(
        settings=s,
        index=index,
        searcher=Searcher(index, max_results=s.qido_max_results),
        frames=frames,
        frame_audit=coalescer,
        executor=ThreadPoolExecutor(max_workers=max(1, s.decode_threads), thread_name_prefix="gateway-cpu"),
        decoded=FrameCache(s.decoded_cache_bytes),
    )
    await _warm_up(ctx)


async def _warm_up(ctx: ServiceContext) -> None:
    """Open the pooled clients and make one call each now: botocore loads its models and endpoint rules on the
    first call, which would otherwise add hundreds of milliseconds to the first image a radiologist opens."""
    topo = ctx.settings.topology
    try:
        s3 = await ctx.clients.s3()
        with contextlib.suppress(ClientError):  # a missing key still loads GetObject's model and parsers
            await s3.get_object(Bucket=topo.bucket("images"), Key="warm-up/none")
        ddb = await ctx.clients.dynamodb()
        await ddb.query(TableName=topo.table("instances"), KeyConditionExpression="pk = :p",
                        ExpressionAttributeValues={":p": {"S": "WARMUP"}}, Limit=1)
        await ddb.batch_get_item(RequestItems={topo.table("instances"): {
            "Keys": [{"pk": {"S": "WARMUP"}, "sk": {"S": "WARMUP"}}]}})
    except Exception as exc:  # not fatal: /readyz reports unreachable dependencies
        log.warning("warm-up call failed", extra={"error": type(exc).__name__})


async def shutdown(ctx: ServiceContext) -> None:
    """Stop prefetches, write the pending frame-audit counts, stop the worker threads."""
    gw: Gateway | None = ctx.extras.get("gateway")
    if gw is None:
        return
    await gw.frames.close()
    await gw.frame_audit.close()
    gw.executor.shutdown(wait=False, cancel_futures=True)
