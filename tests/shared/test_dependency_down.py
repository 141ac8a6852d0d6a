"""Answers when a dependency is down or a request body is not JSON the API can echo (found by a review, session 21).

Real service processes on their own embedded endpoint, which the test then kills (SIGKILL, not restarted):

- the read APIs answer 503 with ``Retry-After`` and a sentence, not 500 "internal error", and the connection stays
  usable (the next request on it is answered, where an unhandled error closed it);
- a JSON body holding NaN or Infinity gets a 422 naming the field (FastAPI's own answer echoed the value and could
  not be serialised: 500), on every service with a JSON body.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from radloop.local.embedded_aws import EmbeddedAws, free_port, start_embedded_aws
from radloop.local.platform import LocalPlatform
from shared.auth import mint_token
from shared.settings import Settings
from tests.conftest import unique_prefix

pytestmark = pytest.mark.integration

SERVICES = ("streaming_gateway", "verification", "registry")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPlatform, EmbeddedAws]]:
    tmp = tmp_path_factory.mktemp("dep-down")
    emb = start_embedded_aws(free_port(), log_path=tmp / "moto.log")
    settings = Settings(aws_endpoint_url=emb.endpoint, prefix=unique_prefix("down"), var_dir=tmp / "var",
                        aws_max_attempts=2, aws_connect_timeout_s=1.0)
    ports = {name: free_port() for name in (*SERVICES, "entry")}
    env = {"RADLOOP_LOG_LEVEL": "WARNING", "RADLOOP_AWS_MAX_ATTEMPTS": "2", "RADLOOP_QIDO_DEADLINE_S": "3"}
    plat = LocalPlatform(settings=settings, ports=ports, services=SERVICES, extra_env=env)
    try:
        plat.start()
        plat.wait_healthy(timeout_s=180)
        yield plat, emb
    finally:
        plat.stop()
        emb.stop()


def test_a_json_body_with_nan_is_refused_with_the_field_named(platform: tuple[LocalPlatform, EmbeddedAws]) -> None:
    plat, _ = platform
    h = {"Authorization": f"Bearer {mint_token(plat.settings, 'admin')}", "Content-Type": "application/json"}
    url = plat.url("verification") + "/verification/cases/1.2.3/reads"
    for raw in (b'{"label": "normal", "confidence": NaN}', b'{"label": "normal", "confidence": Infinity}'):
        r = httpx.post(url, content=raw, headers=h)
        assert r.status_code == 422, (r.status_code, r.text)
        detail = r.json()["detail"]
        assert any("confidence" in e["loc"] for e in detail) and all("input" not in e for e in detail), detail
    r = httpx.post(plat.url("registry") + "/registry/models/1/approve", content=b'{"reason": NaN}', headers=h)
    assert r.status_code == 422 and r.json()["detail"][0]["msg"], (r.status_code, r.text)


def test_reads_answer_503_while_the_endpoint_is_down(platform: tuple[LocalPlatform, EmbeddedAws], tmp_path: Path) -> None:
    plat, emb = platform
    h = {"Authorization": f"Bearer {mint_token(plat.settings, 'admin')}"}
    reads = [plat.url("streaming_gateway") + "/dicomweb/studies?PatientID=X",
             plat.url("streaming_gateway") + "/dicomweb/studies?StudyDate=20240101-20240131",  # 8 shards merged
             plat.url("streaming_gateway") + "/dicomweb/studies/1.2.3/series",
             plat.url("verification") + "/verification/worklist",
             plat.url("registry") + "/registry/models"]
    with httpx.Client(timeout=60, headers=h) as c:
        assert [c.get(u).status_code for u in reads] == [200, 200, 200, 200, 200]  # up: answered (no series: an empty list)
        emb.process.send_signal(signal.SIGKILL)
        emb.process.wait(10)
        for u in reads + reads:  # twice: the connection each used is still answered
            r = c.get(u)
            assert r.status_code == 503, (u, r.status_code, r.text)
            assert r.headers["Retry-After"] == "5" and "retry later" in r.json()["detail"]
    for name in SERVICES:
        log = (plat.run_dir / f"{name}.log").read_text(errors="replace")
        assert "unhandled error" not in log, f"{name} logged an unhandled error:\n{log[-2000:]}"
