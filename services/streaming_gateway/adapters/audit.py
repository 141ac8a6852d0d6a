"""Coalesced audit of frame reads: a record when a user first reads a series in a window, then one record per
(user, series) per window with the number of frames read since.

Viewers fetch hundreds of frames a second; one audit record per frame would be costly and drown the useful
records. The first read of a (user, action, series) in a window is written before it is served, like every other
read of PHI, so a crash loses at most the counts of the reads after it, never the fact that the user read the series
(before session 21 every count waited in memory for the window, and a gateway killed within it left no record: found
by a review). The later counts gather in memory and are written when their window closes (every ``window_s``) and
when the service stops. A failed write keeps the counts for the next flush, so nothing is lost while the audit table
is briefly unavailable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from shared.audit import AuditLog
from shared.auth import Principal

log = logging.getLogger(__name__)


class FrameAuditCoalescer:
    """Counts image reads per (user, action, study, series) and writes one audit record per window: frames
    (``wado.frames``), rendered images (``wado.rendered``) and thumbnails (``wado.thumbnail``), the reads a viewer
    makes by the hundred."""
    def __init__(self, audit: AuditLog, window_s: float) -> None:
        self.audit = audit
        self.window_s = window_s
        self._counts: dict[tuple[Principal, str, str, str], int] = defaultdict(int)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.flushed_records = 0
        #: (user, action, series) with a record written in this window, and first writes under way
        self._written: set[tuple[Principal, str, str, str]] = set()
        self._first: dict[tuple[Principal, str, str, str], asyncio.Future[None]] = {}

    async def note(self, principal: Principal, study: str, series: str, frames: int,
                   action: str = "wado.frames") -> None:
        """Record ``frames`` reads of ``action`` by ``principal`` in a series: the first in this window is written
        now (raises if the audit log cannot be written, and then nothing may be served), the rest are counted."""
        key = (principal, action, study, series)
        if key in self._written:
            self._counts[key] += frames
            return
        first = self._first.get(key)
        if first is None:  # concurrent first reads (a viewer asks for many frames at once) share one write
            first = asyncio.ensure_future(self.audit.record(principal, action, {"study_uid": study,
                                                                                "series_uid": series}, count=frames))
            self._first[key] = first
            try:
                await asyncio.shield(first)
            finally:
                if self._first.get(key) is first:
                    del self._first[key]
            self._written.add(key)
            self.flushed_records += 1
            return
        await asyncio.shield(first)
        self._counts[key] += frames

    def start(self) -> None:
        """Start the periodic flush."""
        self._task = asyncio.create_task(self._loop(), name="frame-audit-flush")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.window_s)
            try:
                await self.flush()
            except Exception:
                log.exception("frame audit flush failed; counts kept for the next window")

    async def flush(self) -> int:
        """Write one record per (user, action, series) with its count; returns the number of records written."""
        async with self._lock:
            pending, self._counts = self._counts, defaultdict(int)
            self._written = set()  # a new window: the next read of each series is written before it is served
            written = 0
            for (principal, action, study, series), n in list(pending.items()):
                try:
                    await self.audit.record(principal, action, {"study_uid": study, "series_uid": series}, count=n)
                    written += 1
                    del pending[(principal, action, study, series)]
                except Exception:
                    for k, v in pending.items():  # keep what was not written
                        self._counts[k] += v
                    raise
            self.flushed_records += written
            return written

    async def close(self) -> None:
        """Stop the periodic flush and write what is pending."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self.flush()
