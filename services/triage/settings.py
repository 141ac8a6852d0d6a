"""Settings of the triage service (environment variables ``RADLOOP_TRIAGE_*``)."""

from __future__ import annotations

from typing import Literal

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

