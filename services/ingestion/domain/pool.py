"""The CPU pool: parsing, decoding and encoding run here, off the event loop.

A process pool sized to the cores (one worker per core) by default. A worker that dies (for example killed for
memory by a pathological input) breaks a ``ProcessPoolExecutor`` for good, so :class:`CpuPool` replaces the pool and
reports that one submission as failed instead of failing every later one.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def _warm() -> None:
    # Import the heavy modules once per worker, before the first instance arrives.
    import imagecodecs  # noqa: F401
    import pydicom.pixels  # noqa: F401

    import services.ingestion.domain.prepare  # noqa: F401


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class WorkerCrashedError(RuntimeError):
    """The worker process running a task died."""


class CpuPool:
    def __init__(self, workers: int = 0, kind: str = "process") -> None:
        self.workers = workers or default_workers()
        self.kind = kind
        self._executor: Executor = self._make()

    def _make(self) -> Executor:
        if self.kind == "thread":
            return ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ingest-cpu")
        # forkserver: never fork the event-loop process with its threads and sockets.
        ctx = multiprocessing.get_context("forkserver")
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_warm)

    def warm_up(self) -> None:
        """Start the workers now (their imports take a second), so the first request does not pay for it."""
        for f in [self._executor.submit(_noop) for _ in range(self.workers)]:
            f.result(timeout=120)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        executor = self._executor
        try:
            return await loop.run_in_executor(executor, fn, *args)
        except BrokenProcessPool:
            if self._executor is executor:
                log.error("ingestion worker process died; replacing the pool")
                executor.shutdown(wait=False, cancel_futures=True)
                self._executor = self._make()
            raise WorkerCrashedError("the worker process handling this instance died") from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _noop() -> None:
    return None
