"""``GET /streaming/stats``: cache, prefetch and storage-read counters (no PHI)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from services.streaming_gateway.api.deps import GatewayDep
from shared.auth import ReadUser

router = APIRouter(tags=["stats"])


@router.get("/streaming/stats", summary="Frame cache, prefetch and S3-read counters.")
async def streaming_stats(gw: GatewayDep, _: ReadUser) -> dict[str, Any]:
    out = gw.frames.stats()
    out["index"] = dict(gw.index.stats)
    out["decoded_cache"] = {"bytes": gw.decoded.bytes, "budget_bytes": gw.decoded.budget, "frames": len(gw.decoded),
                            "hits": gw.decoded.hits, "misses": gw.decoded.misses}
    out["rendered_cache"] = {"bytes": gw.rendered.bytes, "budget_bytes": gw.rendered.budget,
                             "images": len(gw.rendered), "hits": gw.rendered.hits, "misses": gw.rendered.misses}
    out["series_cache_bytes"] = gw.index.series_cache.bytes
    out["frame_audit_records"] = gw.frame_audit.flushed_records
    return out
