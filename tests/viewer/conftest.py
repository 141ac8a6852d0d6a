"""Fixtures of the viewer tests: the built viewer, a 300-slice CT phantom stored as ingestion stores it, the real
gateway process serving it, and headless Debian Chromium driven by Playwright (no browser download)."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from shared.auth import mint_token
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.conftest import unique_prefix
from tests.viewer.series_store import REPO, GatewayProcess, prepared_phantom, start_gateway, store_instances

VIEWER = REPO / "viewer"

N_SLICES = 300
T = TypeVar("T")


def ensure_viewer_built() -> Path:
    """viewer/dist, built with the locked dependencies when it is missing (make setup normally builds it)."""
    dist = VIEWER / "dist"
    if not all((dist / page).exists() for page in ("index.html", "worklist/index.html")):  # viewer, workstation
        if not (VIEWER / "node_modules").exists():
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=VIEWER, check=True, timeout=600)
        subprocess.run(["npm", "run", "build"], cwd=VIEWER, check=True, timeout=600)
    return dist


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion in its own thread (safe whatever loop the calling thread runs)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=600)


@dataclass
class CtSeries:
    study: str
    series: str
    sops: list[str]  # in display order (head first)


@pytest.fixture(scope="session")
def viewer_dist() -> Path:
    return ensure_viewer_built()


@pytest.fixture(scope="session")
def gateway_settings(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    s = Settings(aws_endpoint_url=aws_endpoint, prefix=unique_prefix("vw"),
                 var_dir=tmp_path_factory.mktemp("viewer-var"), aws_max_attempts=2)

    async def boot() -> None:
        async with AwsClients(s) as c:
            await bootstrap_topology(c)

    run_async(boot)
    return s


@pytest.fixture(scope="session")
def ct_series(gateway_settings: Settings) -> CtSeries:
    """The 300-slice CT phantom, stored through ingestion's prepare step into the deployment."""
    prepared = prepared_phantom(N_SLICES)
    run_async(lambda: store_instances(gateway_settings, prepared))
    return CtSeries(study=prepared[0].study_uid, series=prepared[0].series_uid, sops=[p.sop_uid for p in prepared])


@pytest.fixture(scope="session")
def dx_series(gateway_settings: Settings) -> CtSeries:
    """One radiograph (DX), stored the same way: the kind of image the AI triage panel is for."""
    from tests.viewer.phantom import make_radiograph, to_bytes
    from tests.viewer.series_store import prepare_all

    prepared = prepare_all([to_bytes(make_radiograph())])
    run_async(lambda: store_instances(gateway_settings, prepared))
    return CtSeries(study=prepared[0].study_uid, series=prepared[0].series_uid, sops=[prepared[0].sop_uid])


@pytest.fixture(scope="session")
def gateway(gateway_settings: Settings, ct_series: CtSeries, dx_series: CtSeries, viewer_dist: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = start_gateway(gateway_settings, tmp_path_factory.mktemp("gw") / "gateway.log", viewer_dist=viewer_dist)
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="session")
def viewer_token(gateway_settings: Settings) -> str:
    return mint_token(gateway_settings, "viewer")
