"""Fixtures: a bootstrapped deployment per reading mode with its verification service process, and a capture queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.auth import mint_token
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.support.triage_verification_procs import ServiceProcess, capture_queue, running


@dataclass
class Deployment:
    settings: Settings
    service: ServiceProcess
    capture: str

    def token(self, role: str, subject: str | None = None) -> str:
        return mint_token(self.settings, role, subject=subject)

    def headers(self, role: str = "radiologist", subject: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, subject)}"}


async def _prepare(settings: Settings) -> str:
    async with AwsClients(settings) as c:
        await bootstrap_topology(c)
        return await capture_queue(c, ["ImageVerified", "ModelPerformanceDegraded"])


def _deployment(aws_endpoint: str, tmp: Path, mode: str) -> Iterator[Deployment]:
    s = Settings(aws_endpoint_url=aws_endpoint, prefix=f"v{mode[0]}-{uuid.uuid4().hex[:10]}", var_dir=tmp / "var",
                 aws_max_attempts=2)
    capture = asyncio.run(_prepare(s))
    env = {"RADLOOP_VERIFICATION_READ_MODE": mode, "RADLOOP_VERIFICATION_LEASE_S": "1.5",
           "RADLOOP_VERIFICATION_MIN_SAMPLE": "8", "RADLOOP_VERIFICATION_AUC_FLOOR": "0.75",
           "RADLOOP_VERIFICATION_SENSITIVITY_FLOOR": "0.8", "RADLOOP_VERIFICATION_OUTBOX_SWEEP_S": "2",
           "RADLOOP_VERIFICATION_CHECK_INTERVAL_S": "0.5"}
    with running("verification", s, tmp / "logs", **env) as proc:
        yield Deployment(s, proc, capture)


@pytest.fixture(scope="module")
def single(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _deployment(aws_endpoint, tmp_path_factory.mktemp("vsingle"), "single")


@pytest.fixture(scope="module")
def double(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    yield from _deployment(aws_endpoint, tmp_path_factory.mktemp("vdouble"), "double")
