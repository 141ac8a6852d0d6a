"""Settings of the ingestion service (environment variables ``RADLOOP_<FIELD>``)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import model_validator

from shared.forwarded import ForwardingSettings
from shared.image_store.settings import ImageStoreSettings


class IngestionSettings(ForwardingSettings, ImageStoreSettings):
    """Ingestion-specific settings on top of the shared ones; the trusted proxies and public base URL that STOW-RS
    RetrieveURLs are built with come from :class:`~shared.forwarded.ForwardingSettings`, the image store (where
    instances are stored) from :class:`~shared.image_store.settings.ImageStoreSettings`."""

    #: Largest accepted DICOM object (one instance), in bytes.
    max_instance_bytes: int = 512 << 20
    #: Largest STOW-RS request body, in bytes (413 above it).
    max_request_bytes: int = 2 << 30
    #: Largest inflated dataset for the Deflated transfer syntax.
    max_inflated_bytes: int = 256 << 20
    #: Largest declared decoded pixel size of one instance.
    max_pixel_bytes: int = 1 << 30
    #: Most frames one instance may declare (0xA700 "too-many-frames" above it). Each frame is one encode and one S3
    #: PUT, so tiny frames (1x1) would otherwise turn a small file into hundreds of thousands of them. 20,000 covers
    #: long cine/XA runs and tomosynthesis; raise it for whole-slide images with more tiles.
    max_frames_per_instance: int = 20_000
    #: Most parts (instances) in one STOW-RS request (413 above it): every part is a task, a worker round trip and
    #: an event, and a 10 MB body of empty parts would be a million of them. Senders split larger studies.
    max_stow_parts: int = 10_000
    #: Parts of one STOW-RS request processed at once; reading the body pauses while this many are in flight
    #: (0: twice the CPU workers).
    stow_max_inflight_parts: int = 0
    #: How long a sender waits for another upload of the same SOP instance to finish before it is told to retry
    #: (STOW 503 + Retry-After, SQS redelivery of an S3-drop import, DIMSE 0xA700).
    claim_wait_s: float = 60.0
    #: Events the outbox's in-memory publisher queue holds; beyond it, events stay only in the outbox table (durable)
    #: and the sweeper publishes them, so an EventBridge outage does not grow memory without bound.
    outbox_queue_max: int = 10_000
    #: Worker processes for parsing, decoding and encoding (0: one per core).
    ingest_workers: int = 0
    #: "process" (default) or "thread" (for debugging; pydicom parsing holds the GIL).
    ingest_pool: str = "process"
    #: Replace an instance whose SOP Instance UID is already stored with other content (else 0x0111 / 409).
    allow_overwrite: bool = False
    #: De-identify every instance (PS3.15 Basic Profile) before it is stored.
    deidentify: bool = False
    #: De-identify only instances from these calling AE titles (DIMSE).
    deidentify_calling_aes: list[str] = []
    #: Private tags (8 hex digits, e.g. "00291010") kept by de-identification; every other private tag is removed.
    deid_private_allowlist: list[str] = []
    #: Secret for deterministic UID remapping and pseudonyms during de-identification.
    deid_key: str = "radloop-local-deid-key"

    # --- DIMSE -------------------------------------------------------------------------------------------------
    #: C-STORE SCP port (0: no SCP).
    dimse_port: int = 0
    #: The SCP's own AE title: an association calling another title is refused.
    dimse_ae_title: str = "RADLOOP"
    #: The address the SCP listens on (the ECS task sets 0.0.0.0).
    dimse_host: str = "127.0.0.1"
    #: Calling AE titles allowed to associate; ["*"] allows any (refused outside environment=local).
    dimse_allowed_calling_aes: list[str] = ["*"]
    #: How long an SCP store may take before 0xA700 is answered (seconds).
    dimse_store_timeout_s: float = 120.0
    #: Associations served at once; one more is rejected (A-ASSOCIATE-RJ transient, local limit exceeded), and TCP
    #: connections beyond twice this are closed before any TLS handshake or thread. Each association may hold up to
    #: ``max_instance_bytes`` in memory, so this bounds what DIMSE can take of a task.
    dimse_max_associations: int = 8
    #: Largest PDU the SCP accepts (announced as its maximum length; also the largest A-ASSOCIATE-RQ it reads, at least
    #: 64 KiB). A longer PDU is never read: the association is aborted (A-ABORT). Larger PDUs cost less CPU per byte.
    dimse_max_pdu_bytes: int = 1 << 20
    #: Data-set bytes all associations together may hold in memory while instances arrive and are stored; an instance
    #: that would go over it is discarded as it arrives and answered 0xA700 ("retry later"), so many large senders at
    #: once cannot exhaust the task. Keep it at least ``max_instance_bytes``.
    dimse_max_buffered_bytes: int = 1 << 30
    #: Source addresses each calling AE title may associate from: {"PACS1": ["10.1.2.3", "10.1.5.0/24"]}. An AE title
    #: listed here is rejected from any other address (A-ASSOCIATE-RJ, calling AE title not recognised); every key
    #: must also be in ``dimse_allowed_calling_aes`` (unless that is ["*"]). AE titles not listed are not pinned.
    dimse_calling_ae_addresses: dict[str, list[str]] = {}
    #: DICOM TLS on the DIMSE port: the server certificate chain and its key (PEM). Both or neither; with them, the
    #: port speaks TLS only (TLS 1.2 or later).
    dimse_tls_cert_file: Path | None = None
    #: The private key (PEM) of ``dimse_tls_cert_file``.
    dimse_tls_key_file: Path | None = None
    #: CA certificates (PEM) that client certificates must chain to.
    dimse_tls_ca_file: Path | None = None
    #: Require a client certificate signed by ``dimse_tls_ca_file`` (mutual TLS, the DICOM "authenticated" profile).
    #: False accepts TLS clients without a certificate (a presented one must still verify when a CA file is set).
    dimse_tls_require_client_cert: bool = True

    @model_validator(mode="after")
    def _check_dimse(self) -> IngestionSettings:
        if self.dimse_max_associations < 1:
            raise ValueError("dimse_max_associations must be at least 1")
        if self.dimse_max_pdu_bytes < 4096:
            raise ValueError("dimse_max_pdu_bytes must be at least 4096 (0, pynetdicom's 'unlimited', is refused)")
        if self.dimse_max_buffered_bytes < 1:
            raise ValueError("dimse_max_buffered_bytes must be at least 1")
        for ae, sources in self.dimse_calling_ae_addresses.items():
            if "*" not in self.dimse_allowed_calling_aes and ae not in self.dimse_allowed_calling_aes:
                raise ValueError(f"dimse_calling_ae_addresses pins {ae!r}, which dimse_allowed_calling_aes does not "
                                 "allow")
            if not sources:
                raise ValueError(f"dimse_calling_ae_addresses[{ae!r}] is empty; list its addresses or remove it")
            for src in sources:
                try:
                    ipaddress.ip_network(src, strict=False)
                except ValueError:
                    raise ValueError(f"dimse_calling_ae_addresses[{ae!r}]: {src!r} is not an IP address or CIDR "
                                     "range") from None
        if (self.dimse_tls_cert_file is None) != (self.dimse_tls_key_file is None):
            raise ValueError("DICOM TLS needs both dimse_tls_cert_file and dimse_tls_key_file")
        if self.dimse_tls_cert_file is not None and self.dimse_tls_require_client_cert and not self.dimse_tls_ca_file:
            raise ValueError("dimse_tls_require_client_cert needs dimse_tls_ca_file (the CA of the client certificates)")
        return self

    @model_validator(mode="after")
    def _refuse_wildcards(self) -> IngestionSettings:
        if self.environment != "local":
            if "*" in self.dimse_allowed_calling_aes:
                raise ValueError(f"environment={self.environment!r} refuses a wildcard DIMSE calling-AE allow-list: set "
                                 "RADLOOP_DIMSE_ALLOWED_CALLING_AES to a JSON list of AE titles")
            if self.deid_key == "radloop-local-deid-key":
                raise ValueError(f"environment={self.environment!r} refuses the development de-identification key: set "
                                 "RADLOOP_DEID_KEY to a secret")
        if min(self.max_frames_per_instance, self.max_stow_parts, self.outbox_queue_max) < 1:
            raise ValueError("max_frames_per_instance, max_stow_parts and outbox_queue_max must be at least 1")
        if self.ingest_pool not in ("process", "thread"):
            raise ValueError(f"ingest_pool {self.ingest_pool!r} must be 'process' or 'thread'")
        return self

