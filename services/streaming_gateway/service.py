"""The streaming gateway's service object: what every DICOMweb route calls, created once per process in
``bootstrap.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from services.streaming_gateway.adapters.audit import FrameAuditCoalescer
from services.streaming_gateway.adapters.frame_store import FrameStore
from services.streaming_gateway.adapters.index import IndexReader
from services.streaming_gateway.domain.frames import FrameCache
from services.streaming_gateway.domain.search import Searcher
from services.streaming_gateway.settings import GatewaySettings

T = TypeVar("T")


@dataclass
class Gateway:
    """The objects every route needs: index reader, searcher, frame store, audit coalescer, threads."""

    settings: GatewaySettings
    index: IndexReader
    searcher: Searcher
    frames: FrameStore
    frame_audit: FrameAuditCoalescer
    executor: ThreadPoolExecutor
    #: Decoded little-endian pixels by (codestream digest, skipped levels), for octet-stream responses.
    decoded: FrameCache
    #: Rendered JPEG/PNG bytes by their ETag (codestream digest, rendering parameters, skipped levels).
    rendered: FrameCache

    async def run_cpu(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work (decode, render, transcode) in the worker threads, never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def close(self) -> None:
        """Stop prefetches, write the pending frame-audit counts, stop the worker threads."""
        await self.frames.close()
        await self.frame_audit.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
