"""The live-performance check is debounced: a stream of reads runs at most one check per version per interval, and
the last read is always covered by a check that starts after it."""

from __future__ import annotations

import asyncio
import time

from services.verification.service import Verification
from services.verification.settings import VerificationSettings
from shared.aws import AwsClients


async def test_a_stream_of_reads_runs_one_check_per_interval_and_covers_the_last_read() -> None:
    settings = VerificationSettings(verification_check_interval_s=0.2)
    v = Verification(AwsClients(settings), settings, publisher=None)  # type: ignore[arg-type]
    started: list[tuple[int, float]] = []

    async def check(model_version: int) -> list[str]:  # stands in for the scan of the case table
        started.append((model_version, time.monotonic()))
        await asyncio.sleep(0.03)
        return []

    v.check_degradation = check  # type: ignore[method-assign]
    t0 = time.monotonic()
    for _ in range(50):  # a read every 20 ms for a second, for version 3; one read of version 4
        v.schedule_check(3)
        await asyncio.sleep(0.02)
    last_read = time.monotonic()
    v.schedule_check(4)
    for _ in range(100):
        if all(t.done() for t in v._checks.values()):
            break
        await asyncio.sleep(0.05)
    await v.stop()

    of3 = [t for version, t in started if version == 3]
    elapsed = last_read - t0
    # back to back, 50 reads would have run 50 checks; debounced, about one per 0.2 s interval (plus the first)
    assert 2 <= len(of3) <= elapsed / 0.2 + 2, (len(of3), elapsed)
    assert all(b - a >= 0.2 for a, b in zip(of3, of3[1:], strict=False))
    assert of3[-1] >= last_read - 0.05  # the last check started after (or with) the last read: nothing left unchecked
    assert [version for version, _ in started].count(4) == 1  # versions are checked independently
