"""`radloop smoke` against the local platform: ingestion, streaming gateway, registry and the entry proxy, started
as real processes on free ports against the session's moto server."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from radloop.local.platform import LocalPlatform
from radloop.smoke import generate_instance, smoke
from shared.auth import mint_token
from shared.settings import Settings
from tests.conftest import unique_prefix

SMOKE_SERVICES = ("ingestion", "streaming_gateway", "registry")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def platform(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    settings = Settings(aws_endpoint_url=aws_endpoint, prefix=unique_prefix("smoke"),
                        var_dir=tmp_path_factory.mktemp("smoke-var"), aws_max_attempts=2)
    ports = {name: _free_port() for name in (*SMOKE_SERVICES, "entry", "dimse")}
    plat = LocalPlatform(settings=settings, ports=ports, services=SMOKE_SERVICES)
    try:
        plat.start()
        plat.wait_healthy(timeout_s=120)
        yield plat
    finally:
        plat.stop()


def test_generated_instance_is_valid_dicom() -> None:
    import io

    import pydicom

    data, study, series, sop = generate_instance()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (study, series, sop)
    assert ds.pixel_array.shape == (64, 64) and ds.pixel_array.std() > 0


def test_smoke_passes_against_the_local_platform(platform: LocalPlatform) -> None:
    token = mint_token(platform.settings, "admin")
    lines: list[str] = []
    result = smoke(platform.entry_url, token, timeout=60, poll_s=0.5, echo=lines.append)
    assert result.ok, "\n".join(lines)
    assert [s.name for s in result.steps] == [
        "store (STOW-RS)", "find (QIDO-RS)", "retrieve frame (WADO-RS)", "triage score"]
    assert all(s.seconds >= 0 for s in result.steps)
    # A fresh deployment has no approved model: the last step says so instead of waiting for a score.
    assert "no model approved" in result.steps[-1].detail


def test_smoke_stops_at_the_first_failure(platform: LocalPlatform) -> None:
    bad = mint_token(platform.settings, "viewer")  # a viewer may not store
    result = smoke(platform.entry_url, bad, timeout=5)
    assert not result.ok
    assert len(result.steps) == 1 and not result.steps[0].ok
    assert "403" in result.steps[0].detail
    # And against nothing at all: a connection error, reported, not raised.
    dead = smoke(f"http://127.0.0.1:{_free_port()}", bad, timeout=1,
                 client=httpx.Client(timeout=2.0))
    assert not dead.ok and "ConnectError" in dead.steps[0].detail
