"""Settings of the triage service (environment variables ``RADLOOP_TRIAGE_*``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

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
    #: Re-scoring passes of at least this many unread images run as one batch transform job over the originals
    #: (``triage_transform_executor``) instead of image by image in the tasks; 0 never does.
    triage_transform_min: int = Field(1000, ge=0)
    #: ``local``: ``python -m training.serve transform`` as a child process (the embedded endpoint); ``sagemaker``:
    #: a SageMaker Batch Transform job with the training image's ``serve`` entry point.
    triage_transform_executor: Literal["local", "sagemaker"] = "local"
    #: SageMaker: the inference image (the training image, which serves with ``training/serve.py``).
    triage_transform_image_uri: str = ""
    #: SageMaker: the role the transform job's model runs as (reads the originals and the model, writes results).
    triage_transform_role_arn: str = ""
    #: SageMaker: the transform instance type.
    triage_transform_instance_type: str = "ml.g5.xlarge"
    #: SageMaker: how many requests one transform instance takes at a time.
    triage_transform_concurrency: int = Field(4, ge=1, le=64)
    #: A job running longer than this is stopped, and its images are re-scored image by image.
    triage_transform_timeout_s: float = Field(7200.0, gt=0)
    #: How often the driver polls the job (and renews its lease).
    triage_transform_poll_s: float = Field(15.0, gt=0)
    #: The driver's lease on a champion's job: another task takes the job over when it passes (more than two polls).
    triage_transform_lease_s: float = Field(120.0, gt=0)
    #: Local: the interpreter of the transform process (empty: this one).
    triage_transform_python: str = ""

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

    @property
    def work_dir(self) -> Path:
        """Where local transform jobs write their logs."""
        return self.var_dir / "triage"

    @model_validator(mode="after")
    def _transform_settings(self) -> TriageSettings:
        if self.triage_transform_lease_s <= 2 * self.triage_transform_poll_s:
            raise ValueError(f"RADLOOP_TRIAGE_TRANSFORM_LEASE_S ({self.triage_transform_lease_s:g}) must exceed two "
                             f"polls (RADLOOP_TRIAGE_TRANSFORM_POLL_S={self.triage_transform_poll_s:g}), or a live "
                             "driver loses its job to another task")
        if self.triage_transform_executor == "sagemaker" and self.triage_transform_min > 0:
            missing = [n for n, v in (("RADLOOP_TRIAGE_TRANSFORM_IMAGE_URI", self.triage_transform_image_uri),
                                      ("RADLOOP_TRIAGE_TRANSFORM_ROLE_ARN", self.triage_transform_role_arn)) if not v]
            if missing:
                raise ValueError(f"RADLOOP_TRIAGE_TRANSFORM_EXECUTOR=sagemaker needs {' and '.join(missing)} "
                                 "(or RADLOOP_TRIAGE_TRANSFORM_MIN=0 to re-score in the tasks only)")
        return self
