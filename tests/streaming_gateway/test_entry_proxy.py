"""Through the local entry proxy (GET /dicomweb and /viewer route to the gateway, paths unchanged)."""

from __future__ import annotations

import asyncio

import httpx

from radloop.local.proxy import create_proxy
from tests.streaming_gateway.conftest import Corpus, auth
from tests.streaming_gateway.store import GatewayProcess


def test_dicomweb_and_viewer_through_the_entry_proxy(corpus: Corpus, gateway: GatewayProcess) -> None:
    async def go() -> None:
        proxy = create_proxy({"streaming_gateway": gateway.port})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=proxy), base_url="http://entry.test") as c:
            r = await c.get("/dicomweb/studies", params={"PatientID": "PID-A"}, headers=auth(corpus))
            assert r.status_code == 200
            (study,) = r.json()
            # RetrieveURL names the entry point the client used (X-Forwarded-Host), not the gateway's own port.
            assert study["00081190"]["Value"] == [f"http://entry.test/dicomweb/studies/{corpus.ct_study}"]
            frame = (f"/dicomweb/studies/{corpus.ct_study}/series/{corpus.ct_series}/instances/"
                     f"{corpus.ct_sops[0]}/frames/1")
            r = await c.get(frame, headers={**auth(corpus), "Accept": "image/jphc", "Range": "bytes=0-63999"})
            assert r.status_code == 206 and len(r.content) == 64000 and r.headers["content-range"].startswith("bytes 0-")
            r = await c.get("/viewer/", follow_redirects=True)
            assert r.status_code == 200 and "radloop viewer" in r.text
            assert (await c.get("/dicomweb/studies")).status_code == 401
            # a garbled (non-ASCII) token reaches the service and is refused there, not a 500 in the proxy
            r = await c.get("/dicomweb/studies", headers={"Authorization": "Bearer \u2570\u2500".encode()})
            assert r.status_code == 401, r.text

    asyncio.run(go())
