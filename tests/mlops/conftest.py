"""Fixtures of the MLOps tests: a bootstrapped deployment per module, service processes, the event tap."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from radloop.local.embedded_aws import EmbeddedAws
from shared.approval import POLICY_FILE_ENV, ApprovalPolicy
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.conftest import unique_prefix

ROOT = Path(__file__).resolve().parents[2]


async def _bootstrap(settings: Settings) -> None:
    async with AwsClients(settings) as c:
        await bootstrap_topology(c)


@pytest.fixture(scope="module")
def mdeployment(moto: EmbeddedAws, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A deployment (own prefix, bootstrapped) shared by the tests of one module."""
    var = tmp_path_factory.mktemp("var")
    s = Settings(aws_endpoint_url=moto.endpoint, prefix=unique_prefix("ml"), var_dir=Path(var), aws_max_attempts=2)
    asyncio.run(_bootstrap(s))
    return s


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("logs")
    yield d


@pytest.fixture(scope="session")
def loop_prefix() -> str:
    """The deployment prefix of the loop tests (the pipeline definition names that deployment's ml bucket)."""
    return unique_prefix("loop")


#: The loop tests' approval policy: the one document both the orchestrator (the pipeline's gate) and the registry
#: read. Floors of 0: one epoch on 17 images is noise, and the worse follow-up (trained on inverted labels) must pass
#: the pipeline's gate to be registered and then stay pending on the margin over the champion. The floors themselves
#: are covered by test_registry.py and test_policies.py.
LOOP_POLICY = ApprovalPolicy(name="loop-test", auc_floor=0.0, auc_margin=0.02, sensitivity_floor=0.0)


@pytest.fixture(scope="session")
def loop_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:data:`LOOP_POLICY` as a document (what ``RADLOOP_APPROVAL_POLICY_FILE`` names for the loop's services)."""
    return LOOP_POLICY.write(tmp_path_factory.mktemp("policy") / "approval_policy.json")


@pytest.fixture(scope="session")
def pipeline_definition(tmp_path_factory: pytest.TempPathFactory, loop_prefix: str, loop_policy: Path) -> Path:
    """The real pipeline definition (``python -m training.pipeline definition``) for ``loop_prefix`` and the loop's
    approval policy, generated once.

    Generating it imports the SageMaker SDK (a minute on a busy machine), so every orchestrator in the session gets
    it through ``RADLOOP_PIPELINE_DEFINITION`` instead of generating its own.
    """
    out = tmp_path_factory.mktemp("pipeline") / "definition.json"
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env["PYTHONPATH"] = str(ROOT)
    env["RADLOOP_PREFIX"] = loop_prefix
    env[POLICY_FILE_ENV] = str(loop_policy)
    proc = subprocess.run([sys.executable, "-m", "training.pipeline", "definition", "--out", str(out)], env=env,
                          cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.exists(), f"definition failed: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
    return out
