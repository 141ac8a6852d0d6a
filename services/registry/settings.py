"""Settings of the registry (env ``RADLOOP_<FIELD>``): where the approval policy comes from, and overrides."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import Settings

DEFAULT_POLICY_FILE = Path(__file__).with_name("approval_policy.json")


class RegistrySettings(Settings):
    """The approval policy is data: a JSON file (the packaged default, or ``RADLOOP_APPROVAL_POLICY_FILE``), whose
    thresholds the three ``RADLOOP_APPROVAL_*`` variables may override one by one."""

    approval_policy_file: Path = DEFAULT_POLICY_FILE
    approval_auc_margin: float | None = Field(None, ge=0, le=1)
    approval_auc_floor: float | None = Field(None, ge=0, le=1)
    approval_sensitivity_floor: float | None = Field(None, ge=0, le=1)
    #: Bootstrap resamples for model-card confidence intervals.
    card_bootstrap_resamples: int = Field(1000, ge=100, le=20000)
