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
