"""Settings of the streaming gateway (environment variables ``RADLOOP_<FIELD>``)."""

from __future__ import annotations

from pathlib import Path

from shared.settings import Settings

_REPO_ROOT = Path(__file__).resolve().parents[2]


class GatewaySettings(Settings):
    """Frame cache, prefetch, QIDO limits, audit coalescing and where the built viewer lives."""

    #: Byte budget of the in-memory LRU cache of HTJ2K frame codestreams.
    frame_cache_bytes: int = 512 * 1024 * 1024
    #: Byte budget of the LRU cache of decoded pixels (frames asked for as application/octet-stream).
    decoded_cache_bytes: int = 256 * 1024 * 1024
    #: Read the rest of a series into the cache when its first frame is requested.
    prefetch_enabled: bool = True
    #: Concurrent S3 reads of one series prefetch.
    prefetch_concurrency: int = 8
    #: A prefetch never fills more than this share of the frame cache (so it cannot evict what is being viewed).
    prefetch_budget_share: float = 0.5
    #: Byte budget of the per-series index cache (instance items with their DICOM JSON).
    series_cache_bytes: int = 128 * 1024 * 1024
    #: Seconds an instance index item is reused for rendered images and transcoding before it is re-read.
    instance_cache_ttl_s: float = 30.0
    #: Most results one QIDO-RS response holds when the request gives no smaller limit.
    qido_max_results: int = 1000
    #: Frames are immutable: clients and caches may keep them this long.
    frame_max_age_s: int = 31_536_000
    #: Frame reads are audited per (user, series) once per window, with a count.
    audit_coalesce_s: float = 60.0
    #: Threads for decoding, rendering and transcoding (never on the event loop).
    decode_threads: int = 2
    #: Concurrent S3 reads while streaming a multipart study or series.
    retrieve_concurrency: int = 4
    #: The built web viewer, mounted at /viewer when the folder exists.
    viewer_dist: Path = _REPO_ROOT / "viewer" / "dist"
