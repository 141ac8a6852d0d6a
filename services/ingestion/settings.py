"""Settings of the ingestion service (environment variables ``RADLOOP_<FIELD>``)."""

from __future__ import annotations

from pydantic import model_validator

from shared.settings import Settings


class IngestionSettings(Settings):
    """Ingestion-specific settings on top of the shared ones."""

    #: Largest accepted DICOM object (one instance), in bytes.
    max_instance_bytes: int = 512 << 20
    #: Largest STOW-RS request body, in bytes (413 above it).
    max_request_bytes: int = 2 << 30
    #: Largest inflated dataset for the Deflated transfer syntax.
    max_inflated_bytes: int = 256 << 20
    #: Largest declared decoded pixel size of one instance.
    max_pixel_bytes: int = 1 << 30
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
    dimse_ae_title: str = "RADLOOP"
    dimse_host: str = "127.0.0.1"
    #: Calling AE titles allowed to associate; ["*"] allows any (refused outside environment=local).
    dimse_allowed_calling_aes: list[str] = ["*"]
    #: How long an SCP store may take before 0xA700 is answered (seconds).
    dimse_store_timeout_s: float = 120.0

    @model_validator(mode="after")
    def _refuse_wildcards(self) -> IngestionSettings:
        if self.environment != "local":
            if "*" in self.dimse_allowed_calling_aes:
                raise ValueError(f"environment={self.environment!r} refuses a wildcard DIMSE calling-AE allow-list: set "
                                 "RADLOOP_DIMSE_ALLOWED_CALLING_AES to a JSON list of AE titles")
            if self.deid_key == "radloop-local-deid-key":
                raise ValueError(f"environment={self.environment!r} refuses the development de-identification key: set "
                                 "RADLOOP_DEID_KEY to a secret")
        if self.ingest_pool not in ("process", "thread"):
            raise ValueError(f"ingest_pool {self.ingest_pool!r} must be 'process' or 'thread'")
        return self


def ingestion_settings(base: Settings | None = None) -> IngestionSettings:
    """Ingestion settings from the environment, with the shared fields of ``base`` (e.g. the port) applied."""
    if isinstance(base, IngestionSettings):
        return base
    s = IngestionSettings()
    if base is None:
        return s
    return s.model_copy(update={k: getattr(base, k) for k in Settings.model_fields})
