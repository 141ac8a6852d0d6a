"""`radloop smoke` against the local platform: ingestion, streaming gateway, triage, verification, registry and the
entry proxy, started as real processes on free ports against the session's moto server, with an approved model.

The platform is given a champion before it starts (a small trained ResNet, see ``tests/support/triage_data.py``,
written through :mod:`shared.champion`, the one module that spells the pointer), so the smoke's last step has to get a
real triage score: triage scores the stored image and verification shows the probability on its worklist.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import httpx
import pytest

from radloop.local.embedded_aws import free_port
from radloop.local.platform import LocalPlatform
from radloop.smoke import generate_instance, smoke
from shared.auth import mint_token
from shared.aws import AwsClients
from shared.champion import ChampionPointer, replace_champion
from shared.settings import Settings
from tests.conftest import bootstrap_sync, unique_prefix
from tests.support.triage_data import trained_model_tar

SMOKE_SERVICES = ("ingestion", "streaming_gateway", "triage", "verification", "registry")
CHAMPION_VERSION = 1
# The test model's threshold is irrelevant to the smoke (it reports the probability); 0.5 is the artefact's own.
CHAMPION_THRESHOLD = 0.5


async def _approve_champion(settings: Settings, artefact: bytes) -> None:
    """Upload the artefact to the ml bucket and point the champion at it, as the registry does on approval."""
    async with AwsClients(settings) as clients:
        bucket = settings.topology.bucket("ml")
        key = "models/smoke-v1/output/model.tar.gz"
        await (await clients.s3()).put_object(Bucket=bucket, Key=key, Body=artefact)
        pointer = ChampionPointer(version=CHAMPION_VERSION, model_artifact_uri=f"s3://{bucket}/{key}",
                                  threshold=CHAMPION_THRESHOLD, updated_at="2026-01-01T00:00:00Z")
        await replace_champion(await clients.dynamodb(), settings.topology.table("state"), pointer,
                               previous_version=None)


@pytest.fixture(scope="module")
def platform(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPlatform]:
    settings = Settings(aws_endpoint_url=aws_endpoint, prefix=unique_prefix("smoke"),
                        var_dir=tmp_path_factory.mktemp("smoke-var"), aws_max_attempts=2)
    artefact, _metrics = trained_model_tar()  # its accuracy is the triage tests' concern; any valid model scores
    bootstrap_sync(settings)  # the champion needs the ml bucket and the state table before triage starts
    asyncio.run(_approve_champion(settings, artefact))
    ports = {name: free_port() for name in (*SMOKE_SERVICES, "entry", "dimse")}
    plat = LocalPlatform(settings=settings, ports=ports, services=SMOKE_SERVICES)
    try:
        plat.start()
        plat.wait_healthy(timeout_s=180)
        yield plat
    finally:
        plat.stop()


def test_generated_instance_is_valid_dicom() -> None:
    import pydicom

    data, study, series, sop = generate_instance()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (study, series, sop)
    assert ds.pixel_array.shape == (64, 64) and ds.pixel_array.std() > 0


def test_smoke_gets_a_triage_score_from_the_local_platform(platform: LocalPlatform) -> None:
    token = mint_token(platform.settings, "admin")
    lines: list[str] = []
    result = smoke(platform.entry_url, token, timeout=120, poll_s=0.5, echo=lines.append)
    assert result.ok, "\n".join(lines)
    assert [s.name for s in result.steps] == [
        "store (STOW-RS)", "find (QIDO-RS)", "retrieve frame (WADO-RS)", "triage score"]
    # Each step took measurable time over HTTP (a step that was skipped or short-circuited would not).
    assert all(s.seconds > 0 for s in result.steps), result.steps
    # The last step saw triage's probability for the stored image, from the approved model.
    detail = result.steps[-1].detail
    assert detail.startswith("score ") and detail.endswith(f"from model version {CHAMPION_VERSION}"), detail
    probability = float(detail.split()[1])
    assert 0.0 <= probability <= 1.0, detail
    # And the worklist agrees: the case of the smoke's image carries that probability from that model version.
    r = httpx.get(f"{platform.entry_url}/verification/worklist", params={"limit": 200},
                  headers={"Authorization": f"Bearer {token}"}, timeout=30)
    r.raise_for_status()
    cases = [c for c in r.json()["items"] if c["sop_uid"] == result.sop]
    assert len(cases) == 1, r.json()
    assert cases[0]["ai"]["probability"] == pytest.approx(probability)
    assert cases[0]["ai"]["model_version"] == CHAMPION_VERSION


def test_smoke_stops_at_the_first_failure(platform: LocalPlatform) -> None:
    bad = mint_token(platform.settings, "viewer")  # a viewer may not store
    result = smoke(platform.entry_url, bad, timeout=5)
    assert not result.ok
    assert len(result.steps) == 1 and not result.steps[0].ok
    assert "403" in result.steps[0].detail
    # And against nothing at all: a connection error, reported, not raised.
    dead = smoke(f"http://127.0.0.1:{free_port()}", bad, timeout=1,
                 client=httpx.Client(timeout=2.0))
    assert not dead.ok and "ConnectError" in dead.steps[0].detail
