"""Settings of the triage service (environment variables ``RADLOOP_TRIAGE_*``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.image_store.settings import ImageStoreSettings


class TriageSettings(ImageStoreSettings):
    """Scoring knobs. Defaults suit one CPU task; every field is an env var (``RADLOOP_<FIELD>``). Frames are read from
    the image store of :class:`~shared.image_store.settings.ImageStoreSettings`."""

    #: How long the micro-batcher waits for more instances after the first one arrives.
    triage_batch_window_ms: float = 8.0
    #: The largest forward pass.
    triage_max_batch: int = 16
    #: ``auto`` measures fp32 against bf16 autocast when a model loads and keeps bf16 only if it is faster and agrees.
    triage_precision: Literal["auto", "fp32", "bf16"] = "auto"
    #: torch intra-op threads (0: torch's default).
    triage_torch_threads: int = 0
    #: In-flight messages; higher than the batch size so that batches can fill.
    triage_concurrency: int = 32
    #: What the model is validated for: anything else is ``not_applicable``, never scored silently.
    triage_modalities: tuple[str, ...] = ("CR", "DX")
    #: Body parts (BodyPartExamined) the model is validated for; others are ``not_applicable``.
    triage_body_parts: tuple[str, ...] = ("CHEST",)
    #: Grad-CAM heatmaps for ``positives`` (probability >= the operating threshold), ``all`` or ``none``.
    triage_heatmaps: Literal["positives", "all", "none"] = "positives"
    #: Grad-CAM uses the deepest feature map with at least this many pixels per side (finer maps localise better).
    triage_cam_min_size: int = 7
    #: Largest bf16-vs-fp32 probability difference accepted when ``triage_precision=auto``.
    triage_bf16_tolerance: float = 0.02
    #: How often a task reads the champion pointer, to install a model approved while another task took the event.
    triage_champion_check_s: float = 15.0
    #: Re-scoring on a new champion: unread scored images per second (newest first), so that the worklist's new order
    #: arrives at once for recent images without starving the scoring of new arrivals.
    triage_rescore_per_s: float = 20.0
    #: The most unread images one re-scoring pass takes (0 turns re-scoring off); older ones keep their score.
    triage_rescore_max: int = 5000
    #: Drift (shared.drift): images per (site, modality) window compared with the champion's training reference.
    triage_drift_window: int = Field(500, ge=10, le=20_000)
    #: Drift: no comparison before a window holds this many images.
    triage_drift_min_images: int = Field(200, ge=10)
    #: Drift: a window is compared every this many new images.
    triage_drift_check_every: int = Field(50, ge=1)
    #: Drift: a population stability index at or above this is drift (0.25 is the usual "act on it" level).
    triage_drift_psi_alert: float = Field(0.25, gt=0)
    #: Drift: one ``DriftDetected`` per (site, modality, feature) per this many seconds, per task.
    triage_drift_alert_cooldown_s: float = Field(3600.0, ge=0)
    #: Drift: the most (site, modality) windows kept; the least recently seen one is dropped beyond it.
    triage_drift_max_windows: int = Field(200, ge=1)
