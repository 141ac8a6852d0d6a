"""Settings of the pipeline orchestrator (env ``RADLOOP_<FIELD>``): trigger policy, execution backend, parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from shared.approval import DEFAULT_POLICY_FILE
from shared.settings import Settings


class OrchestratorSettings(Settings):
    """The retraining policy and how pipeline executions are run and tracked."""

    # --- trigger policy ---------------------------------------------------------------------------------------------
    #: A snapshot is taken when at least this many final labels are new since the last snapshot ...
    trigger_min_new_labels: int = Field(50, ge=1)
    #: ... and at least this many of them in every class.
    trigger_min_per_class: int = Field(10, ge=0)
    #: Scheduled retraining every this many seconds (0 = no schedule). It still needs a changed manifest.
    trigger_schedule_s: float = Field(0.0, ge=0)
    #: No automatic run starts within this many seconds of the previous start (manual triggers are exempt).
    trigger_cooldown_s: float = Field(3600.0, ge=0)
    #: Whether ``ModelPerformanceDegraded`` triggers a run (still subject to the cooldown and single-flight).
    trigger_on_degraded: bool = True
    #: Whether ``DriftDetected`` (triage: a site's inputs or the scores moved away from the training data) triggers a
    #: run. Off by default: drift alone does not mean the model is worse, and a retrain on unverified drift learns
    #: nothing new; turn it on where new labels follow drift quickly.
    trigger_on_drift: bool = False

    # --- execution --------------------------------------------------------------------------------------------------
    #: ``local``: the docker-free executor as a subprocess; ``sagemaker``: StartPipelineExecution.
    executor: Literal["local", "sagemaker"] = "local"
    #: Pipeline definition JSON; empty = generated once with ``python -m training.pipeline definition``.
    pipeline_definition: Path | None = None
    #: SageMaker pipeline name (empty = ``{prefix}-training``, the name training.pipeline upserts).
    pipeline_name: str = ""
    #: Role ARN SageMaker assumes for the pipeline (AWS only).
    pipeline_role_arn: str = "arn:aws:iam::123456789012:role/radloop-pipeline"
    #: How often running executions are polled (status file locally, DescribePipelineExecution in AWS).
    poll_interval_s: float = Field(2.0, gt=0)
    #: Python interpreter for the local executor subprocess (empty = this interpreter).
    executor_python: str = ""

    # --- pipeline parameters (names fixed by the pipeline contract) -------------------------------------------------
    #: Training epochs of each run (pipeline parameter ``Epochs``).
    train_epochs: int = Field(5, ge=1)
    #: Side in pixels the images are resized to for training (pipeline parameter ``ImageSize``).
    train_image_size: int = Field(224, ge=16)
    #: The model architecture trained (pipeline parameter ``Arch``; one of training.model.ARCHS).
    train_arch: str = "resnet18"
    #: Training batch size (pipeline parameter ``BatchSize``).
    train_batch_size: int = Field(32, ge=1)
    #: The approval policy document (:mod:`shared.approval`): the only source of ``AucFloor`` and ``AucMargin``.
    #: The registry reads the same document (``RADLOOP_APPROVAL_POLICY_FILE`` for both).
    approval_policy_file: Path = DEFAULT_POLICY_FILE
    #: Whether the pipeline's own condition also compares with the champion (``ChampionAuc`` = champion's AUC).
    #: Off by default: the pipeline gates on the absolute floor only and the registry's approval policy makes the
    #: champion/challenger decision, so a worse challenger is still recorded (pending, never deployed) for people.
    gate_on_champion: bool = False

    @property
    def resolved_pipeline_name(self) -> str:
        return self.pipeline_name or f"{self.prefix}-training"

    @property
    def work_dir(self) -> Path:
        """Where local executions keep their parameters, status files and logs."""
        return self.var_dir / "pipeline_orchestrator"
