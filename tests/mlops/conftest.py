"""Fixtures of the MLOps tests: a bootstrapped deployment per module, service processes, the event tap."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from radloop.local.embedded_aws import EmbeddedAws
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.conftest import unique_prefix


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
