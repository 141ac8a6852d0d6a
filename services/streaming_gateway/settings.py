"""Settings of the streaming gateway (environment variables ``RADLOOP_<FIELD>``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.forwarded import ForwardingSettings
from shared.image_store.settings import ImageStoreSettings

_REPO_ROOT = Path(__file__).resolve().parents[2]


class GatewaySettings(ForwardingSettings, ImageStoreSettings):
    """Frame cache, prefetch, QIDO and WADO limits, audit coalescing and where the viewer lives; the trusted proxies and
    public base URL of RetrieveURLs come from :class:`~shared.forwarded.ForwardingSettings`, and the image store that
    frames and metadata are read from comes from :class:`~shared.image_store.settings.ImageStoreSettings`."""

    #: Byte budget of the in-memory LRU cache of HTJ2K frame codestreams.
    frame_cache_bytes: int = 512 * 1024 * 1024
    #: Byte budget of the LRU cache of decoded pixels (frames asked for as application/octet-stream, and the pixels
    #: rendered images are windowed from): one decode per frame and resolution.
    decoded_cache_bytes: int = 256 * 1024 * 1024
    #: Byte budget of the LRU cache of rendered images and thumbnails (JPEG/PNG), by codestream and rendering
    #: parameters: a study browser asks for the same thumbnails again on every open.
    rendered_cache_bytes: int = 64 * 1024 * 1024
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
    #: Frames are immutable: clients and caches may keep them this long.
    frame_max_age_s: int = 31_536_000
    #: Image reads (frames, rendered, thumbnails) are audited per (user, series) and window: the first read's record
    #: is written before it is served, the later reads' count when the window closes.
    audit_coalesce_s: float = 60.0
    #: Threads for decoding, rendering and transcoding (never on the event loop).
    decode_threads: int = 2
    #: Concurrent S3 reads while streaming a multipart study or series.
    retrieve_concurrency: int = 4
    #: The built web viewer, mounted at /viewer when the folder exists.
    viewer_dist: Path = _REPO_ROOT / "viewer" / "dist"
    #: The OHIF build (``make ohif``), mounted at /ohif (503 there while it is missing).
    ohif_dist: Path = _REPO_ROOT / "ohif" / "dist"
    #: Origins allowed to read the DICOMweb API cross-origin (an OHIF served elsewhere), as a JSON list of exact
    #: origins (``["https://ohif.hospital.example"]``); empty: no CORS headers at all. ``*`` is refused.
    cors_allow_origins: list[str] = []
    #: The workstation's OpenID Connect issuer (Authorization Code with PKCE in the browser); empty: the APIs' own
    #: ``auth_issuer`` when tokens come from an identity provider (``auth_jwks_url`` set). Announced at
    #: /viewer/auth/config.
    viewer_oidc_issuer: str = ""
    #: The workstation's public OpenID Connect client id (a PKCE client has no secret); empty: no OIDC sign-in.
    viewer_oidc_client_id: str = ""
    #: The scopes the workstation asks the identity provider for.
    viewer_oidc_scope: str = "openid profile"
