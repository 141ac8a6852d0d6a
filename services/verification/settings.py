"""Settings of the verification service (environment variables ``RADLOOP_VERIFICATION_*``)."""

from __future__ import annotations

from typing import Literal

from shared.settings import Settings


class VerificationSettings(Settings):
    """Reading workflow and performance-monitoring knobs."""

    #: ``single``: one read is final. ``double``: two independent reads; disagreement goes to adjudication.
    verification_read_mode: Literal["single", "double"] = "single"
    #: How long a claim keeps other radiologists off a case.
    verification_lease_s: float = 900.0
    #: Rolling window (most recent verified images per model version) for live performance.
    verification_window: int = 500
    #: No degradation is declared on fewer verified images than this.
    verification_min_sample: int = 50
    #: Live AUC of the champion below this (on at least ``verification_min_sample`` images) declares a degradation.
    verification_auc_floor: float = 0.75
    #: Live sensitivity below this declares a degradation, like the AUC floor.
    verification_sensitivity_floor: float = 0.80
    #: Base of the gateway URLs in case views; empty gives paths relative to the entry proxy.
    verification_gateway_base_url: str = ""
    #: Lifetime of presigned heatmap URLs.
    verification_heatmap_url_ttl_s: int = 300
    #: How often unpublished ImageVerified events (outbox) are retried.
    verification_outbox_sweep_s: float = 30.0
    #: at most one live-performance check (a scan of the final cases) per model version in this many seconds: reads
    #: arrive faster than a scan, and back-to-back scans starved every other request of the table
    verification_check_interval_s: float = 10.0

