"""The gateway's heap after start-up, in a real gateway process: frozen out of the cyclic collector's reach.

Without ``gc.freeze`` every full collection walked the ~170,000 objects alive after start-up (modules, the SDKs'
service models, FastAPI's routes) and held the event loop for 40-120 ms, most of them freeing nothing: the frames'
p99 at c=16 in ``bench/dicomweb.py`` (docs/performance.md).
"""

from __future__ import annotations

import json

from tests.streaming_gateway.store import GatewayProcess


def test_the_startup_heap_is_frozen(gateway: GatewayProcess) -> None:
    started = [json.loads(line) for line in gateway.log_path.read_text().splitlines()
               if line.startswith("{") and '"service started"' in line]
    assert started, "no 'service started' line in the gateway's log"
    # Most of what the process holds once it serves: its modules alone are tens of thousands of objects.
    assert started[-1]["gc_frozen_objects"] > 50_000
