"""Frame codestreams from the image store (:mod:`shared.image_store`: radloop's images bucket by default, or AWS
HealthImaging) through the byte-budget :class:`~services.streaming_gateway.domain.frames.FrameCache`, with series
prefetch.

- :class:`FrameStore` reads frames through the store over the process's pooled clients. Concurrent requests for the
  same frame share one storage read (an in-flight map), and every read is counted (``s3_reads``, the name the stats
  have always had) so tests and the ``/streaming/stats`` endpoint can show that cached frames cost no storage reads.
- On the first frame request of a series, :meth:`FrameStore.prefetch_series` reads the rest of that series
  concurrently into the cache, because viewers scroll through series. A prefetch never takes more than a share of
  the budget, so it cannot evict what is being looked at.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from services.streaming_gateway.domain.errors import NotFound, Unavailable
from services.streaming_gateway.domain.frames import Frame, FrameCache
from shared import storage
from shared.image_store import ImageNotFound, ImageStore, ImageStoreUnavailable

log = logging.getLogger(__name__)


class FrameStore:
    """Frames by (study, series, instance, number): cache first, then one counted read from the image store."""
    def __init__(
        self,
        store: ImageStore,
        cache: FrameCache,
        *,
        prefetch_concurrency: int = 8,
        prefetch_budget_share: float = 0.5,
    ) -> None:
        self.store = store
        self.cache = cache
        self.prefetch_concurrency = max(1, prefetch_concurrency)
        self.prefetch_budget_share = prefetch_budget_share
        self.s3_reads = 0
        self.s3_bytes = 0
        self._inflight: dict[str, asyncio.Future[Frame]] = {}
        self._prefetched: dict[tuple[str, str], float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.prefetch_stats = {"started": 0, "completed": 0, "frames": 0, "skipped_budget": 0, "in_flight": 0}

    async def _read(self, read: Awaitable[bytes]) -> bytes:
        """One counted store read; :class:`NotFound` when absent, :class:`Unavailable` for other failures."""
        self.s3_reads += 1
        try:
            data = await read
        except ImageNotFound:
            raise NotFound("the requested object does not exist") from None
        except ImageStoreUnavailable:
            raise Unavailable("image storage is unavailable; retry later") from None
        self.s3_bytes += len(data)
        return data

    async def read_original(self, study: str, series: str, sop: str) -> bytes:
        """The instance's P10 object as the store keeps it (counted like a frame read)."""
        return await self._read(self.store.read_original(study, series, sop))

    async def frame(self, study: str, series: str, sop: str, number: int) -> tuple[Frame, bool]:
        """The frame and whether it came from the cache. Raises :class:`NotFound` if it does not exist."""
        key = storage.frame_key(study, series, sop, number)
        f = self.cache.get(key)
        if f is not None:
            return f, True
        fut = self._inflight.get(key)
        if fut is not None:
            return await asyncio.shield(fut), True
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            try:
                data = await self._read(self.store.read_frame(study, series, sop, number))
            except NotFound:
                raise NotFound(f"frame {number} of instance {sop} does not exist") from None
            f = Frame.of(data)
            self.cache.put(key, f)
            fut.set_result(f)
            return f, False
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: waiters re-raise it, no "never retrieved" warning
            raise
        finally:
            self._inflight.pop(key, None)

    # --- prefetch -------------------------------------------------------------------------------------------------
    def should_prefetch(self, study: str, series: str, ttl_s: float = 300.0) -> bool:
        """True once per series per ``ttl_s``: whether this request should start the series prefetch."""
        now = time.monotonic()
        last = self._prefetched.get((study, series))
        if last is not None and now - last < ttl_s:
            return False
        self._prefetched[(study, series)] = now
        if len(self._prefetched) > 10_000:
            self._prefetched.pop(next(iter(self._prefetched)))
        return True

    def start_prefetch(
        self, study: str, series: str, instances: Callable[[], Awaitable[list[dict[str, Any]]]]
    ) -> asyncio.Task[Any]:
        """Prefetch every frame of a series in the background (``instances`` lists the series' instance items)."""
        task = asyncio.create_task(self.prefetch_series(study, series, instances), name=f"prefetch-{series}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def prefetch_series(
        self, study: str, series: str, instances: Callable[[], Awaitable[list[dict[str, Any]]]]
    ) -> int:
        """Read every frame of the series into the cache (bounded concurrency and budget share)."""
        self.prefetch_stats["started"] += 1
        self.prefetch_stats["in_flight"] += 1
        fetched = 0
        try:
            items = await instances()
            budget = int(self.cache.budget * self.prefetch_budget_share)
            planned = 0
            keys: list[tuple[str, int]] = []
            for it in items:
                n = int(it.get("number_of_frames") or 1)
                per = int(it.get("htj2k_bytes") or 0) // max(1, n)
                for k in range(1, n + 1):
                    if planned + per > budget:
                        self.prefetch_stats["skipped_budget"] += 1
                        break
                    planned += per
                    keys.append((it["sop_uid"], k))
            sem = asyncio.Semaphore(self.prefetch_concurrency)

            async def one(sop: str, k: int) -> None:
                nonlocal fetched
                if storage.frame_key(study, series, sop, k) in self.cache:
                    return
                async with sem:
                    try:
                        _, hit = await self.frame(study, series, sop, k)
                    except (NotFound, Unavailable):
                        return
                    if not hit:
                        fetched += 1

            await asyncio.gather(*(one(s, k) for s, k in keys))
            self.prefetch_stats["frames"] += fetched
            return fetched
        except Exception:
            log.exception("series prefetch failed")
            self._prefetched.pop((study, series), None)
            return fetched
        finally:
            self.prefetch_stats["in_flight"] -= 1
            self.prefetch_stats["completed"] += 1

    async def close(self) -> None:
        """Cancel running prefetches."""
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        """Counters for ``/streaming/stats``."""
        c = self.cache
        return {
            "s3_reads": self.s3_reads,
            "s3_bytes": self.s3_bytes,
            "cache": {
                "bytes": c.bytes,
                "budget_bytes": c.budget,
                "max_bytes_seen": c.max_bytes_seen,
                "frames": len(c),
                "hits": c.hits,
                "misses": c.misses,
                "evictions": c.evictions,
            },
            "prefetch": dict(self.prefetch_stats),
        }
