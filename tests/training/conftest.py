"""Fixtures for the training tests: one pipeline definition per session (the SDK is slow to import and build), a
bootstrapped deployment whose prefix the definition was built for, and tiny synthetic data published to it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.conftest import unique_prefix

REPO = Path(__file__).resolve().parents[2]
SUBNETS = ("subnet-0a1b2c3d", "subnet-4e5f6a7b")
SECURITY_GROUPS = ("sg-0123456789abcdef0",)
KMS_KEY = "alias/radloop-test-ml"


def env_for(prefix: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, RADLOOP_PREFIX=prefix, PYTHONPATH=str(REPO), RADLOOP_TORCH_THREADS="1")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def pipeline_prefix() -> str:
    return unique_prefix("tr")


@pytest.fixture(scope="session")
def definition_file(pipeline_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`python -m training.pipeline definition` run as the orchestrator runs it (offline: moto in-process)."""
    out = tmp_path_factory.mktemp("definition") / "definition.json"
    env = env_for(pipeline_prefix)
    env.pop("AWS_ENDPOINT_URL", None)
    cmd = [sys.executable, "-m", "training.pipeline", "definition", "--out", str(out), "--kms-key-id", KMS_KEY]
    for s in SUBNETS:
        cmd += ["--subnet", s]
    for g in SECURITY_GROUPS:
        cmd += ["--security-group", g]
    r = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def definition(definition_file: Path) -> dict[str, Any]:
    return json.loads(definition_file.read_text())


@pytest.fixture(scope="session")
def pipeline_deployment(aws_endpoint: str, pipeline_prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = Settings(aws_endpoint_url=aws_endpoint, prefix=pipeline_prefix, var_dir=tmp_path_factory.mktemp("var"),
                 aws_max_attempts=2)

    async def boot() -> None:
        async with AwsClients(s) as c:
            await bootstrap_topology(c)

    asyncio.run(boot())
    return s


@pytest.fixture(scope="session")
def boto(pipeline_deployment: Settings) -> Callable[[str], Any]:
    import boto3

    def make(service: str) -> Any:
        return boto3.client(service, endpoint_url=pipeline_deployment.aws_endpoint_url, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    return make


@pytest.fixture(scope="session")
def published_manifest(pipeline_deployment: Settings, boto: Callable[[str], Any]) -> tuple[str, str, str]:
    """48 tiny synthetic radiographs stored like ingestion stores them; the training manifest (train and val
    patients), its sha256, and the locked evaluation set's version-1 prefix (the held-out patients), laid out as the
    orchestrator stores them (``LockedSetUri``)."""
    from services.pipeline_orchestrator.adapters.datasets import locked_key, locked_prefix
    from services.pipeline_orchestrator.domain.locked_set import describe
    from shared import datasets, storage
    from training.synthetic import publish_cohort

    topo = pipeline_deployment.topology
    s3, ml = boto("s3"), topo.bucket("ml")
    uri, _ = publish_cohort(s3, images_bucket=topo.bucket("images"), ml_bucket=ml, n=48, seed=21, size=48,
                            prevalence=0.5, difficulty=0.0)
    records = datasets.parse(s3.get_object(Bucket=ml, Key=uri.split("/", 3)[3])["Body"].read())
    training = datasets.serialize(r for r in records if r.split != "test")
    locked = describe(datasets.serialize(r for r in records if r.split == "test"), 1)
    assert locked.positives and locked.negatives, "the fixture's held-out patients need both classes"
    sha = datasets.sha256(training)
    s3.put_object(Bucket=ml, Key=storage.dataset_manifest_key(sha), Body=training)
    s3.put_object(Bucket=ml, Key=locked_key(1), Body=locked.data)
    s3.put_object(Bucket=ml, Key=locked_key(1, "version.json"), Body=json.dumps(locked.summary()).encode())
    return f"s3://{ml}/{storage.dataset_manifest_key(sha)}", sha, f"s3://{ml}/{locked_prefix(1)}"
