"""Micro-batching: requests that arrive within a few milliseconds share one forward pass.

Invariant: every batch reads the champion reference exactly once, so all of its items are scored by one model
version, and that version is what each result reports. A hot swap replaces the reference between batches; it never
changes a model that a batch is using (:class:`~services.triage.domain.model.LoadedModel` is immutable).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.triage.domain.inputs import Frame, model_input
from services.triage.domain.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    largest: int = 0
    forward_s: float = 0.0


@dataclass(frozen=True)
class Scored:
    """One frame's result: its probability, the model that scored it, the exact input it saw, and the model's
    penultimate-layer embedding of it (for drift)."""

    probability: float
    model: LoadedModel
    input: np.ndarray
    embedding: np.ndarray


@dataclass
class _Item:
    frame: Frame
    pre: np.ndarray | None
    size: int | None
    future: asyncio.Future[Scored]


class MicroBatcher:
    """Collect submitted frames for ``window_s`` (or until ``max_batch``) and score them in one forward pass."""

    def __init__(self, current: Callable[[], LoadedModel | None], *, window_s: float, max_batch: int) -> None:
        self._current = current
        self.window_s = window_s
        self.max_batch = max(1, max_batch)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="triage-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def submit(
        self, frame: Frame, pre: np.ndarray | None = None, size: int | None = None
    ) -> Scored:
        """Score one frame: its probability, the model that scored it, the exact input it saw, the embedding."""
        self.start()
        fut: asyncio.Future[Scored] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(frame, pre, size, fut))
        return await fut

    async def _loop(self) -> None:
        while True:
            first = await self._queue.get()
            items = [first]
            deadline = time.monotonic() + self.window_s
            while len(items) < self.max_batch:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), timeout))
                except TimeoutError:
                    break
            live = [i for i in items if not i.future.done()]
            if not live:
                continue
            model = self._current()  # read once: the whole batch uses this version
            if model is None:
                for i in live:
                    i.future.set_exception(LookupError("no champion model is loaded"))
                continue
            try:
                probs, embs, inputs, dt = await asyncio.to_thread(_run, model, live)
            except Exception as exc:
                log.exception("batch forward pass failed", extra={"batch": len(live)})
                for i in live:
                    if not i.future.done():
                        i.future.set_exception(exc)
                continue
            self.stats.batches += 1
            self.stats.items += len(live)
            self.stats.largest = max(self.stats.largest, len(live))
            self.stats.forward_s += dt
            for i, p, e, x in zip(live, probs, embs, inputs, strict=True):
                if not i.future.done():
                    i.future.set_result(Scored(float(p), model, x, e))


def _run(model: LoadedModel, items: list[_Item]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], float]:
    # Inputs preprocessed for another input size (a swap changed it) are preprocessed again for this model.
    inputs = [i.pre if i.pre is not None and i.size == model.input_size else model_input(i.frame, model.input_size)
              for i in items]
    t0 = time.perf_counter()
    probs, embs = model.predict_with_embedding(np.stack(inputs))
    return probs, embs, inputs, time.perf_counter() - t0
