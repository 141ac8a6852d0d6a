"""STOW-RS store responses name the origin only a trusted proxy can steer (issue 15 §3, ``X-Forwarded-Host``).

The RetrieveURLs of a store response (the study's and each instance's) tell the sender where to fetch what it stored,
with its bearer token. Ingestion built them from the request's ``Host`` header and ignored the entry proxy's
``X-Forwarded-Host`` (so through the proxy they named ingestion's own port). Now it shares the gateway's rule
(``shared/forwarded.py``): forwarded headers count only from a peer in ``RADLOOP_TRUSTED_PROXIES``.

One real ingestion process (``python -m services.ingestion``) trusts only ``127.0.0.2``. Linux routes all of
127.0.0.0/8 to loopback, so a client bound to 127.0.0.2 is the trusted proxy and a client on 127.0.0.1 is an untrusted
peer, over real TCP. The untrusted client also claims the proxy's address in ``X-Forwarded-For``: uvicorn's own
proxy-header handling would believe that from 127.0.0.1 (its default), which ``__main__`` turns off.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.auth import mint_token
from shared.aws import AwsClients
from shared.bootstrap import bootstrap_topology
from shared.settings import Settings
from tests.ingestion.stow_helpers import fresh, multipart
from tests.support.ingestion_service import RunningService, ingestion_service

PROXY = "127.0.0.2"
FORGED = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https", "X-Forwarded-For": PROXY,
          "Forwarded": f'for={PROXY};host="evil2.example";proto=https'}


@pytest.fixture(scope="module")
def ingestion(aws_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    tmp = tmp_path_factory.mktemp("stow-fwd")
    settings = Settings(aws_endpoint_url=aws_endpoint, prefix=f"fwd-{uuid.uuid4().hex[:10]}", var_dir=tmp / "var",
                        aws_max_attempts=2)

    async def boot() -> None:
        async with AwsClients(settings) as c:
            await bootstrap_topology(c)

    asyncio.run(boot())
    env = {"RADLOOP_TRUSTED_PROXIES": f"{PROXY}/32", "RADLOOP_INGEST_WORKERS": "1"}
    with ingestion_service(settings, tmp, env=env) as svc:
        yield svc


def _urls(body: dict[str, Any]) -> list[str]:
    out = [body["00081190"]["Value"][0]]
    out += [i["00081190"]["Value"][0] for i in body["00081199"]["Value"]]
    return out


def _stow(svc: RunningService, headers: dict[str, str], *, source: str | None = None) -> tuple[list[str], str]:
    ds, data = fresh()
    body, ctype = multipart([data])
    token = mint_token(svc.settings, "pacs")
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(transport=transport, timeout=60) as c:
        r = c.post(f"{svc.url}/dicomweb/studies", content=body,
                   headers={"Content-Type": ctype, "Authorization": f"Bearer {token}", **headers})
    assert r.status_code == 200, r.text
    return _urls(r.json()), str(ds.StudyInstanceUID)


def test_only_a_trusted_proxy_steers_stow_retrieve_urls(ingestion: RunningService) -> None:
    port = ingestion.url.rsplit(":", 1)[1]
    # An untrusted peer: forged forwarded headers (and a forged X-Forwarded-For naming the proxy) are ignored.
    urls, study = _stow(ingestion, FORGED)
    assert urls[0] == f"http://127.0.0.1:{port}/dicomweb/studies/{study}", urls
    assert all(u.startswith(f"http://127.0.0.1:{port}/dicomweb/studies/{study}/series/") for u in urls[1:]), urls
    assert not any("evil" in u for u in urls), urls
    # The trusted proxy: the value it appended last names the host and scheme (what the client sent comes first).
    urls, study = _stow(ingestion, {"X-Forwarded-Host": "evil.example, pacs.hospital.test:8443",
                                    "X-Forwarded-Proto": "https"}, source=PROXY)
    assert urls[0] == f"https://pacs.hospital.test:8443/dicomweb/studies/{study}", urls
    assert all(u.startswith("https://pacs.hospital.test:8443/dicomweb/") for u in urls), urls
    # Even the trusted proxy cannot put a malformed host (one that ends the URL's authority) into a URL.
    urls, _ = _stow(ingestion, {"X-Forwarded-Host": "evil.example/x?y=", "X-Forwarded-Proto": "javascript"},
                    source=PROXY)
    assert all(u.startswith(f"http://127.0.0.1:{port}/dicomweb/") for u in urls), urls
