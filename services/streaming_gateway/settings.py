"""Settings of the streaming gateway (environment variables ``RADLOOP_<FIELD>``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from services.streaming_gateway.domain.forwarded import Network, parse_networks
from shared.settings import Settings

_REPO_ROOT = Path(__file__).resolve().parents[2]


class GatewaySettings(Settings):
    """Frame cache, prefetch, QIDO and WADO limits, trusted proxies, audit coalescing and where the viewer lives."""

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
    #: Largest QIDO ``offset`` (400 above): the matches before it are walked one by one on every page.
    qido_max_offset: int = Field(10_000, ge=0)
    #: Index items (studies, series, instances) one search may examine before it answers 413 "narrow the search".
    #: 50,000 covers a search without keys over a large archive's first pages; a selective key (PatientID,
    #: StudyInstanceUID, a StudyDate range) uses an index and examines a handful.
    qido_max_examined: int = Field(50_000, ge=1)
    #: Wall-clock seconds one search may take before it answers 413 (far below the entry proxy's 300 s timeout).
    qido_deadline_s: float = Field(10.0, gt=0)
    #: Distinct frames one WADO-RS frames request may name (repeated numbers are dropped first); 400 above.
    wado_max_frames: int = Field(1000, ge=1)
    #: Bytes one frames response may hold (413 above, before anything is read twice or sent): 1 GiB is about 2,000
    #: decoded 512×512 CT frames, far more than a viewer asks for at once.
    wado_max_response_bytes: int = Field(1024 * 1024 * 1024, ge=1)
    #: Frames responses up to this size are assembled in memory (one write: fastest for the usual single frame);
    #: larger ones stream part by part with ``retrieve_concurrency`` parts in flight.
    wado_buffer_bytes: int = Field(8 * 1024 * 1024, ge=0)
    #: Peers (IPs or CIDRs, comma-separated) whose X-Forwarded-Host/-Proto and Forwarded headers are believed when
    #: RetrieveURLs are built: the local entry proxy by default. Name only proxies that set those headers
    #: themselves; an AWS ALB sets X-Forwarded-Proto but passes a client's X-Forwarded-Host through, so behind an
    #: ALB leave this alone and set ``public_base_url``.
    trusted_proxies: str = "127.0.0.1,::1"
    #: The origin clients use (``https://pacs.example.org``), for RetrieveURLs of requests that do not come
    #: through a trusted proxy. Empty: the request's own Host header (and the connection's scheme, http).
    public_base_url: str = ""
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

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, v: str) -> str:
        parse_networks(v)  # a typo refuses to start instead of silently trusting nobody (or everybody)
        return v

    @field_validator("public_base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        if not v:
            return v
        u = urlsplit(v)
        if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment or "@" in u.netloc:
            raise ValueError(f"RADLOOP_PUBLIC_BASE_URL {v!r} must be http(s)://host[:port][/path]")
        return v.rstrip("/")

    @cached_property
    def trusted_proxy_networks(self) -> tuple[Network, ...]:
        """:attr:`trusted_proxies` parsed once."""
        return parse_networks(self.trusted_proxies)
