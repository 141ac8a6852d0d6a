"""The demo's services read the shipped approval policy, unchanged (issue 18: no lowered floors), as one document, not
as per-number variables the services refuse."""

from __future__ import annotations

from pathlib import Path

import pytest

from radloop.demo.run import Demo, DemoConfig
from shared.approval import (
    DEFAULT_POLICY_FILE,
    POLICY_FILE_ENV,
    REMOVED_VARIABLES,
    ApprovalPolicy,
    load_policy,
    refuse_removed_variables,
)

pytestmark = pytest.mark.unit  # no platform is started: only the environment it would get is built


@pytest.mark.parametrize("quick", [False, True])
def test_the_services_read_the_shipped_policy(tmp_path: Path, quick: bool) -> None:
    cfg = DemoConfig.quick() if quick else DemoConfig()
    demo = Demo(cfg, work_dir=tmp_path)
    try:
        env = demo.platform_env()
    finally:
        demo.api.close()
    assert not set(REMOVED_VARIABLES) & set(env), "the services refuse the per-number variables"
    refuse_removed_variables(env)
    policy = load_policy(env[POLICY_FILE_ENV])
    assert Path(env[POLICY_FILE_ENV]).is_absolute() and Path(env[POLICY_FILE_ENV]).is_relative_to(tmp_path.resolve())
    # every number is the shipped policy's: the demo lowers no floor and no minimum
    assert policy == ApprovalPolicy.load(DEFAULT_POLICY_FILE)
    assert not hasattr(cfg, "auc_floor") and not hasattr(cfg, "sensitivity_floor")


def test_the_quality_target_is_judged_at_the_shipped_threshold() -> None:
    """The final champion's AUC, sensitivity and specificity at its own operating threshold against the demo's
    target; the best point of the locked set's ROC curve is reported beside it, not used to pass."""
    from radloop.demo.figures import quality_target

    cfg = DemoConfig()
    roc = {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.8, 0.95, 1.0]}
    row = {"version": 3, "champion": True, "auc": 0.9, "sensitivity": 0.875, "specificity": 0.69, "roc": roc}
    q = quality_target(cfg, [{"version": 2, "champion": False, "auc": 0.95}, row])
    assert q["version"] == 3 and q["met"] is False and q["reason"] == "below the target: sensitivity"
    assert q["best_specificity_at_target_sensitivity"] == pytest.approx(0.7)
    q = quality_target(cfg, [dict(row, sensitivity=0.91)])
    assert q["met"] is True and q["reason"] == "met"
    q = quality_target(cfg, [dict(row, sensitivity=0.91, specificity=0.5, auc=0.8)])
    assert q["reason"] == "below the target: AUC, specificity"
    assert quality_target(cfg, [dict(row, champion=False)]) == {
        "target": {"auc": 0.85, "sensitivity": 0.9, "specificity": 0.6}, "met": False, "version": None,
        "reason": "no champion"}


#: Variables the demo sets that no service's settings hold: read by the training scripts themselves.
_NOT_SETTINGS = {"RADLOOP_TORCH_THREADS"}


@pytest.mark.parametrize("double", [False, True])
def test_every_variable_the_demo_sets_is_one_a_service_reads(tmp_path: Path, double: bool) -> None:
    """The services ignore unknown variables (pydantic-settings, ``extra="ignore"``), so a misspelt name fails
    silently: `radloop demo --double-read` set RADLOOP_READ_MODE, which no service reads, and every case was final
    after its first read (the second readers got 409 "case is final")."""
    from services.ingestion.settings import IngestionSettings
    from services.interop.settings import InteropSettings
    from services.pipeline_orchestrator.settings import OrchestratorSettings
    from services.registry.settings import RegistrySettings
    from services.streaming_gateway.settings import GatewaySettings
    from services.triage.settings import TriageSettings
    from services.verification.settings import VerificationSettings

    classes = (IngestionSettings, InteropSettings, OrchestratorSettings, RegistrySettings, GatewaySettings,
               TriageSettings, VerificationSettings)
    read = {f"RADLOOP_{name.upper()}" for cls in classes for name in cls.model_fields}
    demo = Demo(DemoConfig(double_read=double), work_dir=tmp_path)
    try:
        env = demo.platform_env()
    finally:
        demo.api.close()
    unknown = sorted(k for k in env if k.startswith("RADLOOP_") and k not in read | _NOT_SETTINGS)
    assert not unknown, f"no service reads {unknown}"
    mode = VerificationSettings(**{k.removeprefix("RADLOOP_").lower(): v for k, v in env.items()
                                   if k == "RADLOOP_VERIFICATION_READ_MODE"})
    assert mode.verification_read_mode == ("double" if double else "single")


def test_waves_too_small_to_train_after_each_round_are_refused_before_anything_starts() -> None:
    """``--waves`` splits the cohort; a wave smaller than the labels that start a run would train mid-round (or never),
    so the demo refuses it with the numbers instead of running a loop that does not do what it says."""
    from typer.testing import CliRunner

    from radloop.cli import app

    r = CliRunner().invoke(app, ["demo", "--waves", "4"], env={"COLUMNS": "200"})
    assert r.exit_code == 2
    assert "135 radiographs per wave" in r.output and "at least 800 radiographs" in r.output
