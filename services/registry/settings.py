"""Settings of the registry (env ``RADLOOP_<FIELD>``): which approval policy document to apply, card intervals."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.approval import DEFAULT_POLICY_FILE
from shared.settings import Settings


class RegistrySettings(Settings):
    """The approval policy is data (:mod:`shared.approval`): the packaged document, or the one a deployment names in
    ``RADLOOP_APPROVAL_POLICY_FILE``. Its thresholds are not settings: the document is their only source."""

    #: The approval policy document (:mod:`shared.approval`), the same one the pipeline orchestrator reads.
    approval_policy_file: Path = DEFAULT_POLICY_FILE
    #: Bootstrap resamples for model-card confidence intervals.
    card_bootstrap_resamples: int = Field(1000, ge=100, le=20000)
