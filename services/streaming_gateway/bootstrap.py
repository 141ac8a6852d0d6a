"""Wires the streaming gateway service's dependencies into its context at start-up."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from services.streaming_gateway.domain.audit import FrameAuditCoalescer
from services.streaming_gateway.domain.frames import FrameCache, FrameStore
from services.streaming_gateway.domain.gateway import Gateway
from services.streaming_gateway.domain.index import IndexReader
from services.streaming_gateway.domain.search import Searcher
from services.streaming_gateway.settings import GatewaySettings
from shared.service import ServiceContext


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
    )
    # Open the pooled clients now, so the first viewer request does not pay for it.
    await ctx.clients.s3()
    await ctx.clients.dynamodb()


async def shutdown(ctx: ServiceContext) -> None:
    """Stop prefetches, write the pending frame-audit counts, stop the worker threads."""
    gw: Gateway | None = ctx.extras.get("gateway")
    if gw is None:
        return
    await gw.frames.close()
    await gw.frame_audit.close()
    gw.executor.shutdown(wait=False, cancel_futures=True)
