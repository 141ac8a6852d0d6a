"""Coalesced audit of frame reads: one record per (user, series) per window, with the number of frames read.

Viewers fetch hundreds of frames a second; one audit record per frame would be costly and drown the useful
records. Counts gather in memory and are written when their window closes (every ``window_s``) and when the
service stops. A failed write keeps the counts for the next flush, so nothing is lost while the audit table is
briefly unavailable.
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

    def add(self, principal: Principal, study: str, series: str, frames: int, action: str = "wado.frames") -> None:
        """Count ``frames`` reads of ``action`` by ``principal`` in a series."""
        self._counts[(principal, action, study, series)] += frames

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
